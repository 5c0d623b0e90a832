"""A run's logs: ``log.jsonl`` (always), image grids under ``images/``, and TensorBoard when installed.

``log.jsonl`` holds one JSON object per line, appended and flushed as it is written:

* training rows ``{"step", "lr", "loss", <other loss terms>, "grad_norm", "time", "steps_per_s",
  "samples_per_s"}`` (``time`` is Unix seconds);
* validation rows ``{"step", "validation": true, <metrics>}``;
* events ``{"step", "event": "<kind>", "message": "..."}`` (``nonfinite``, ``resume``, ``checkpoint_fallback``).

Non-finite numbers are written as ``null`` (strict JSON). A run killed mid-write can leave a torn last
line; :func:`read_log` ignores it, and a resumed run cuts the file back to its checkpoint's step
(:func:`truncate_log`), so every row appears once.

TensorBoard: a ``SummaryWriter`` in ``<run>/tensorboard`` is used when ``torch.utils.tensorboard`` imports
(it needs the optional ``tensorboard`` package); otherwise it is skipped silently.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from torch import Tensor

from morphable.errors import InputError
from morphable.io.atomic import atomic_write
from morphable.io.image import write_image


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _summary_writer(log_dir: Path, purge_step: int | None):
    """A TensorBoard ``SummaryWriter``, or ``None`` when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class RunLog:
    """Appends rows to ``<run_dir>/log.jsonl``, writes image grids, mirrors scalars to TensorBoard.

    Args:
        run_dir: the run folder (must exist).
        tensorboard: use TensorBoard when it is installed.
        purge_step: on resume, the first step that will be logged again (TensorBoard drops its older
            events from this step on).
    """

    def __init__(self, run_dir: str | PathLike, *, tensorboard: bool = True, purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "log.jsonl"
        self._file = open(self.path, "a", encoding="utf-8", newline="\n")
        self.writer = _summary_writer(self.run_dir / "tensorboard", purge_step) if tensorboard else None

    def _write(self, row: dict) -> None:
        self._file.write(json.dumps({k: _finite_or_none(v) for k, v in row.items()}) + "\n")
        self._file.flush()

    def scalars(self, step: int, values: Mapping[str, float], *, validation: bool = False) -> None:
        """One row of ``values`` at ``step`` (a validation row when ``validation``)."""
        row: dict[str, Any] = {"step": step}
        if validation:
            row["validation"] = True
        row.update(values)
        self._write(row)
        if self.writer is not None:
            prefix = "val" if validation else "train"
            for k, v in values.items():
                if isinstance(v, int | float) and k != "time":
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def event(self, step: int, kind: str, message: str) -> None:
        """An event row (``nonfinite``, ``resume``, ...) with a one-line message."""
        self._write({"step": step, "event": kind, "message": message})
        if self.writer is not None:
            self.writer.add_text(f"event/{kind}", message, step)

    def image(self, step: int, image: Tensor) -> Path:
        """Write ``image`` ``(H, W, 3)`` float in [0, 1] to ``images/step_XXXXXX.png`` (atomically)."""
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image grid must be (H, W, 3), got {tuple(image.shape)}")
        image = image.detach().float().cpu().clamp(0, 1)
        folder = self.run_dir / "images"
        folder.mkdir(exist_ok=True)
        path = folder / f"step_{step:06d}.png"
        write_image(path, image.numpy())
        if self.writer is not None:
            self.writer.add_image("images", image, step, dataformats="HWC")
        return path

    def close(self) -> None:
        self._file.close()
        if self.writer is not None:
            self.writer.close()


def _parse_lines(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of ``path`` and their source lines; a torn (unterminated or unparsable) last line is dropped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    complete = lines[:-1]  # the last piece is "" when the file ends with a newline, else a torn line
    rows, kept = [], []
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(path, f"line {i + 1} is not valid JSON") from None
        if not isinstance(row, dict) or "step" not in row:
            raise InputError(path, f"line {i + 1} is not a log row (no 'step')")
        rows.append(row)
        kept.append(line)
    return rows, kept


def read_log(path: str | PathLike) -> list[dict]:
    """All complete rows of a ``log.jsonl`` (a torn, unterminated last line is ignored).

    Raises:
        InputError: naming the file and line, when a complete line is not a JSON row.
    """
    return _parse_lines(Path(path))[0]


def truncate_log(path: str | PathLike, step: int) -> int:
    """Keep only the rows with ``row["step"] <= step`` (and drop a torn last line), atomically.

    Returns:
        the number of rows removed.
    """
    path = Path(path)
    if not path.exists():
        return 0
    rows, lines = _parse_lines(path)
    keep = [line for row, line in zip(rows, lines) if row["step"] <= step]
    with atomic_write(path, "w") as f:
        f.write("".join(line + "\n" for line in keep))
    return len(rows) - len(keep)


def tile_images(images: Tensor, columns: int | None = None, pad: int = 2, background: float = 1.0) -> Tensor:
    """Lay ``images`` ``(N, H, W, 3)`` out on a grid ``(rows·(H+pad)+pad, columns·(W+pad)+pad, 3)``.

    Images fill rows left to right; ``columns`` defaults to ``ceil(sqrt(N))``; gaps and empty cells take
    the ``background`` value.
    """
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise ValueError(f"tile_images: expected (N, H, W, 3) with N >= 1, got {tuple(images.shape)}")
    n, h, w, _ = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = images.new_full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), background)
    for i in range(n):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid

