"""Named parameter layouts: which slice of a network's flat output vector is which quantity.

Regressors output one vector per image; a :class:`ParamLayout` names its parts (``identity``, ``albedo``,
``pose``...) with their sizes, so code says ``layout.split(y)["identity"]`` instead of ``y[:, :100]``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ParamLayout:
    """An ordered list of named blocks ``((name, size), ...)`` laid end to end in a vector.

    Example: ``ParamLayout((("identity", 100), ("albedo", 27)))`` has ``size == 127`` and
    ``slice("albedo") == slice(100, 127)``.
    """

    blocks: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        names = [n for n, _ in self.blocks]
        if len(set(names)) != len(names):
            raise ValueError(f"ParamLayout: duplicate block names in {names}")
        if any(int(k) < 0 for _, k in self.blocks):
            raise ValueError(f"ParamLayout: negative block size in {self.blocks}")

    @property
    def size(self) -> int:
        """Total length of the vector."""
        return sum(int(k) for _, k in self.blocks)

    def sizeof(self, name: str) -> int:
        """Length of block ``name``."""
        sl = self.slice(name)
        return sl.stop - sl.start

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.blocks)

    def slice(self, name: str) -> slice:
        """Where block ``name`` lives in the vector."""
        start = 0
        for n, k in self.blocks:
            if n == name:
                return slice(start, start + int(k))
            start += int(k)
        raise KeyError(f"ParamLayout: no block {name!r} (blocks: {', '.join(self.names)})")

    def split(self, vector: Tensor) -> dict[str, Tensor]:
        """``(..., size)`` → ``{name: (..., size_name)}`` views."""
        if vector.shape[-1] != self.size:
            raise ValueError(f"ParamLayout: expected last dimension {self.size}, got {tuple(vector.shape)}")
        return {n: vector[..., self.slice(n)] for n in self.names}

    def join(self, parts: dict[str, Tensor]) -> Tensor:
        """Inverse of :meth:`split`: concatenate the named blocks in layout order."""
        import torch

        missing = [n for n in self.names if n not in parts]
        if missing:
            raise KeyError(f"ParamLayout: missing blocks {missing}")
        return torch.cat([parts[n] for n in self.names], dim=-1)
