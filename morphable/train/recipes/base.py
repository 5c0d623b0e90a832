"""The contract between a training method and the generic :class:`~morphable.train.trainer.Trainer`.

A recipe owns everything method-specific: its config class, the trainable module, how a batch is drawn,
the loss terms, validation, an image grid for the logs, and what to export at the end. The trainer owns
the loop: optimiser, schedule, clipping, non-finite steps, checkpoints, resume, logging.

Determinism contract (what makes ``--resume`` bit-identical):

* all randomness in :meth:`Recipe.batch` comes from the ``generator`` argument or the global RNGs
  (Python ``random``, numpy's global RNG, torch's), all of which the trainer checkpoints;
* any other state that changes during training (a private RNG, a data cursor, an EMA) is returned by
  :meth:`Recipe.state_dict` (tensors, numbers, strings and containers of them only: checkpoints load with
  ``weights_only=True``) and restored by :meth:`Recipe.load_state_dict`;
* :meth:`Recipe.validate` and :meth:`Recipe.image_grid` must not consume the global RNGs (draw from a
  private ``torch.Generator`` seeded from the config if they need randomness) or they must be
  called at the same steps in both runs, which they are as long as ``val_every``/``image_every`` match.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


class Recipe:
    """Base class of training methods; subclass, set ``name`` and ``Config``, implement the hooks.

    Args:
        config: an instance of ``Config`` (a frozen dataclass with at least ``optim``, ``schedule`` and
            ``train`` sections).
        run_dir: the run folder (exists); a recipe may write its own files there.
    """

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)

    def model(self) -> nn.Module:
        """The trainable module (the same object on every call). Its parameters that require a gradient
        are optimised; its whole ``state_dict`` goes into checkpoints."""
        raise NotImplementedError

    def batch(self, step: int, generator: torch.Generator) -> Any:
        """The training batch for 1-based ``step``; deterministic given ``generator``'s state (and the
        global RNGs' and this recipe's state)."""
        raise NotImplementedError

    def shard(self, batch: Any, rank: int, world: int) -> Any:
        """This process's part of the global ``batch`` when ``world`` processes train together
        (:mod:`morphable.train.distributed`); by default the ``rank``-th of ``world`` equal contiguous
        slices of every tensor's first dimension. Override it when rows of a tensor are not samples."""
        from morphable.train.distributed import shard_batch

        return shard_batch(batch, rank, world)

    def loss(self, batch: Any, step: int) -> dict[str, Tensor]:
        """Loss terms for ``batch``: ``"loss"`` (0-d tensor, the one minimised) plus any others to log
        (0-d tensors or floats)."""
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        """Samples in ``batch`` (for samples/s): by default the first dimension of the first tensor
        found in it (a tensor, or a mapping / sequence holding tensors), else 1."""
        return _first_dim(batch)

    def validate(self, step: int) -> dict[str, float]:
        """Validation metrics at ``step``; by default none."""
        return {}

    def image_grid(self, batch: Any, step: int) -> Tensor | None:
        """An ``(H, W, 3)`` float image in [0, 1] to log for ``batch`` (see
        :func:`morphable.train.logging.tile_images`); by default none."""
        return None

    def state_dict(self) -> dict:
        """Extra recipe state to checkpoint (weights_only-safe values); by default none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; by default nothing to restore."""

    def finish(self, run_dir: Path) -> None:
        """Called once after the last step (export weights, write a summary); by default nothing."""

    def provenance(self, run_dir: Path, metrics: dict) -> dict[str, str]:
        """What an exported weights file records: the command that trained it (as typed, when run as
        ``morphable``), the resolved config and the final ``metrics``, as JSON strings."""
        import json
        import shlex
        import sys
        from dataclasses import asdict

        command = shlex.join(["morphable", *sys.argv[1:]]) if Path(sys.argv[0]).name == "morphable" \
            else f"morphable train {self.name} -o {run_dir} (from Python; the resolved config is in 'config')"
        return {"command": command, "config": json.dumps(asdict(self.config)), "metrics": json.dumps(metrics)}


@contextmanager
def evaluating(module: nn.Module):
    """``module`` in eval mode (no dropout) inside the block, its previous mode after."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


def frozen_model(name: str) -> tuple[nn.Module, str]:
    """The morphable model ``name`` (a registry name or a model file) with gradients off, and its label for
    exported weights (``"ict"``, or a file's stem: ``/models/bfm2017.h5`` → ``"bfm2017"``)."""
    import os

    import morphable

    model = morphable.load_model(name)
    model.requires_grad_(False)
    return model, (Path(name).stem if os.sep in name else name)


def _first_dim(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, list | tuple) else ()
    for value in values:
        if isinstance(value, Tensor | dict | list | tuple):
            return _first_dim(value)
    return 1
