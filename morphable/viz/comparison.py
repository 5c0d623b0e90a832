"""Pictures of a photometric fit: photo | render | difference side by side, and the energy curve."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def side_by_side(photo: np.ndarray, render: np.ndarray, alpha: np.ndarray, *, gain: float = 4.0) -> np.ndarray:
    """``(H, 3W, 3)`` uint8: the photo, the rendering composited over it, and ``gain ×`` their absolute
    difference on the rendered pixels (black elsewhere).

    Args:
        photo, render: ``(H, W, 3)`` float in [0, 1]; alpha: ``(H, W)`` coverage in [0, 1].
    """
    diff = np.abs(render - photo) * alpha[..., None] * gain
    panels = [photo, render, diff]
    return (np.concatenate([np.clip(p, 0, 1) for p in panels], axis=1) * 255).round().astype(np.uint8)


def energy_curve(values: list[float], *, size: tuple[int, int] = (480, 240), label: str = "energy") -> np.ndarray:
    """A line plot of ``values`` against the step (log-scaled y when all values are positive). ``(H, W, 3)``."""
    W, H = size
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return np.asarray(img)
    log = bool((v > 0).all())
    y = np.log10(v) if log else v
    lo, hi = float(y.min()), float(y.max())
    hi = hi if hi > lo else lo + 1.0
    left, right, top, bottom = 56, W - 10, 10, H - 24
    xs = left + (right - left) * np.arange(len(v)) / max(len(v) - 1, 1)
    ys = bottom - (bottom - top) * (y - lo) / (hi - lo)
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    draw.line(list(zip(xs.tolist(), ys.tolist())), fill=(200, 40, 40), width=2)
    fmt = (lambda t: f"{10 ** t:.3g}") if log else (lambda t: f"{t:.3g}")
    draw.text((4, top), fmt(hi), fill=(0, 0, 0))
    draw.text((4, bottom - 10), fmt(lo), fill=(0, 0, 0))
    draw.text((left, bottom + 6), f"{label} over {len(v)} steps" + (" (log scale)" if log else ""), fill=(0, 0, 0))
    return np.asarray(img)
