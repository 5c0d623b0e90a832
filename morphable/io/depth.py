"""Reading depth images (RGB-D sensors' depth maps) as millimetres.

A depth image is ``(H, W)`` float32 in mm along the camera's viewing axis, NaN where the sensor has no
reading. Stored forms:

* 16-bit (or 32-bit integer) single-channel PNG / TIFF, the form Kinect, RealSense and Azure Kinect tools
  and the TUM / NYU RGB-D datasets write: each value × ``unit_mm`` (1 for millimetre maps, e.g. 0.2 for TUM's
  5000 units per metre), 0 = no reading;
* ``.npy``: a 2-D float or integer array × ``unit_mm``; 0, negative and non-finite values = no reading
  (:func:`~morphable.io.safe_npz.read_npy`: no pickle, the header's size checked before reading).
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from morphable.errors import InputError
from morphable.io.safe_npz import read_npy

DEPTH_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


def read_depth(path: str | PathLike, unit_mm: float = 1.0) -> np.ndarray:
    """Read a depth image. Returns ``(H, W)`` float32 mm, NaN at holes.

    Args:
        path: a 16-bit PNG / TIFF or a ``.npy`` file (module docstring).
        unit_mm: millimetres per stored unit.
    Raises:
        InputError: missing or unreadable file, an 8-bit or colour image (not a depth map), not 2-D, or no
            reading at all (naming the file).
        ValueError: ``unit_mm`` not positive.
    """
    if not unit_mm > 0:
        raise ValueError(f"read_depth: unit_mm must be positive, got {unit_mm}")
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such depth file")
    suffix = path.suffix.lower()
    if suffix not in DEPTH_SUFFIXES:
        raise InputError(path, f"unknown depth format {suffix!r} (expected one of {', '.join(DEPTH_SUFFIXES)})")
    try:
        if suffix == ".npy":
            raw = read_npy(path, error=InputError)  # the header's size checked against the file's, no pickle
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                    raise InputError(path, f"a depth map must be a 16- or 32-bit single-channel image, not mode "
                                           f"{im.mode!r} (an 8-bit or colour image holds no depth)")
                raw = np.asarray(im)
    except InputError:
        raise
    except Exception as e:  # a decoder may raise anything on hostile bytes
        raise InputError(path, f"cannot read depth ({type(e).__name__}: {e})") from None
    if raw.ndim != 2 or raw.size == 0 or raw.dtype.kind not in "fiu":
        raise InputError(path, f"a depth map must be a 2-D numeric array, got shape {raw.shape} dtype {raw.dtype}")
    depth = raw.astype(np.float64) * unit_mm
    depth[~np.isfinite(depth) | (depth <= 0)] = np.nan
    if np.isnan(depth).all():
        raise InputError(path, "the depth map has no reading (every pixel is 0 or invalid)")
    return depth.astype(np.float32)
