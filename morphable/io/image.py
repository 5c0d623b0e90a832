"""Reading and writing photos as ``uint8`` RGB arrays.

Images are ``(H, W, 3)`` ``uint8`` arrays, row 0 at the top (image space of ``DESIGN.md``: x right,
y down). Pixels are returned as stored: EXIF orientation is *not* applied, so landmark files annotated
on the stored pixels (iBUG, 300W, AFLW2000) stay aligned. Grey, palette, CMYK and 16-bit images are
converted to 8-bit RGB; alpha is dropped on read.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from morphable.errors import InputError
from morphable.io.atomic import atomic_write


def read_image(path: str | PathLike) -> np.ndarray:
    """Read a photo. Returns ``(H, W, 3)`` ``uint8`` RGB.

    Raises:
        InputError: the file is missing, not an image, truncated or corrupt (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such image file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: PIL is lazy, and truncation shows only here
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                grey = np.asarray(im, dtype=np.float64) / 257.0  # 16-bit grey: 65535 -> 255
                rgb = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
            else:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # a decoder may raise anything on hostile bytes (OSError, SyntaxError, ...)
        raise InputError(path, f"cannot read image ({type(e).__name__}: {e})") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InputError(path, f"image has no pixels (shape {rgb.shape})")
    return np.ascontiguousarray(rgb)


def _to_uint8(array: Any) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1|3|4)`` uint8, or float in [0, 1] (clipped, rounded) -> uint8."""
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"write_image: expected (H, W, 3|4) or (H, W), got {a.shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"write_image: expected uint8 or float values, got dtype {a.dtype}")
    if a.dtype.kind in "iub":
        if a.min() < 0 or a.max() > 255:
            raise ValueError("write_image: integer pixels must lie in [0, 255]")
        return a.astype(np.uint8)
    if not np.all(np.isfinite(a)):
        raise ValueError("write_image: float image has non-finite values")
    return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image(path: str | PathLike, array: Any) -> None:
    """Write an image atomically; the format follows the suffix (``.png``, ``.jpg``, ...).

    Args:
        path: destination file.
        array: ``(H, W, 3|4)`` (or grey ``(H, W)``) ``uint8``, or float in [0, 1] (clipped and rounded
            to 8 bits). A numpy array or a torch tensor.
    Raises:
        InputError: unknown suffix, or the format cannot store this image (e.g. alpha in JPEG).
    """
    path = Path(path)
    pixels = _to_uint8(array)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise InputError(path, f"unknown image format {path.suffix!r}")
    image = Image.fromarray(pixels)
    with atomic_write(path, "wb") as f:
        try:
            image.save(f, format=fmt)
        except (OSError, ValueError, KeyError) as e:
            raise InputError(path, f"cannot write as {fmt}: {e}") from None
