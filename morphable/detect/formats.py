"""Landmark files: iBUG ``.pts`` (with or without header) and JSON.

Our convention (``DESIGN.md``): image x right, y down, **pixel centres at integer coordinates, origin at
the centre of the top-left pixel** (0-based). The 300-W / iBUG annotations were made in Matlab and are
**1-based**: the centre of the top-left pixel is ``(1, 1)``. So ``.pts`` files are shifted by −1 on read
and +1 on write. JSON files hold our own 0-based coordinates.

``.pts`` layouts accepted (both seen in the 300-W releases)::

    version: 1            |  229.197518 235.632827
    n_points:  68         |  224.450189 259.965206
    {                     |  ...            (AFW as redistributed: 68 bare ``x y`` lines)
    611.284152 272.773913
    ...
    }

JSON layouts accepted: ``[[x, y], ... 68 ...]`` or ``{"landmarks": [[x, y], ...]}``; ``null`` for a
point (or ``[null, null]``) means "missing" and is read as NaN (the fitters skip NaN landmarks); other
non-finite numbers (``NaN``, ``Infinity``, ``1e999`` literals) are errors.

Every malformed file raises :class:`~morphable.errors.InputError` naming the file.
"""
from __future__ import annotations

import json
import math
from os import PathLike
from pathlib import Path

import numpy as np

from morphable.errors import InputError
from morphable.io.atomic import atomic_write

N_POINTS = 68


def read_landmarks(path: str | PathLike, n_points: int = N_POINTS) -> np.ndarray:
    """Read a landmark file (``.pts`` or ``.json``, chosen by suffix; other suffixes are sniffed).

    Args:
        path: the file.
        n_points: how many points the file must hold (68 for iBUG).
    Returns:
        ``(n_points, 2)`` float64, 0-based pixel coordinates (NaN rows for missing points in JSON).
    Raises:
        InputError: unreadable file, bad syntax, wrong number of points, non-finite numbers in ``.pts``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read landmark file ({err.__class__.__name__}: {err})") from None
    suffix = path.suffix.lower()
    if suffix == ".json" or (suffix != ".pts" and text.lstrip()[:1] in ("[", "{")):
        points = _parse_json(path, text)
    else:
        points = _parse_pts(path, text)
    if points.shape != (n_points, 2):
        raise InputError(path, f"expected {n_points} landmarks (x, y), found {points.shape[0]}")
    return points


def _parse_pts(path: Path, text: str) -> np.ndarray:
    """Parse iBUG ``.pts`` text (header optional) and convert 1-based → 0-based."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    declared = None
    if lines and lines[0].lower().startswith("version"):
        header = {}
        body_start = None
        for i, ln in enumerate(lines):
            if ln == "{":
                body_start = i + 1
                break
            key, _, value = ln.partition(":")
            header[key.strip().lower()] = value.strip()
        if body_start is None:
            raise InputError(path, "iBUG .pts header without an opening '{'")
        if "}" not in lines[body_start:]:
            raise InputError(path, "iBUG .pts points without a closing '}'")
        body = lines[body_start:lines.index("}", body_start)]
        try:
            declared = int(header["n_points"])
        except (KeyError, ValueError):
            raise InputError(path, "iBUG .pts header has no valid 'n_points'") from None
    else:
        body = lines
    rows = []
    for number, ln in enumerate(body, 1):
        fields = ln.split()
        try:
            if len(fields) != 2:
                raise ValueError
            rows.append((float(fields[0]), float(fields[1])))
        except ValueError:
            raise InputError(path, f"point line {number} is not 'x y': {ln[:40]!r}") from None
    points = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    if declared is not None and declared != len(points):
        raise InputError(path, f"header says n_points {declared} but the file holds {len(points)} points")
    if not np.isfinite(points).all():
        raise InputError(path, "non-finite coordinates")
    return points - 1.0


def _parse_json(path: Path, text: str) -> np.ndarray:
    """Parse a JSON landmark list (0-based pixels; ``null`` = missing)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, f"invalid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict):
        if "landmarks" not in data:
            raise InputError(path, "JSON object has no 'landmarks' key")
        data = data["landmarks"]
    if not isinstance(data, list):
        raise InputError(path, "expected a JSON list of [x, y] points")
    rows = []
    for i, p in enumerate(data):
        if p is None or (isinstance(p, list) and len(p) == 2 and p[0] is None and p[1] is None):
            rows.append((np.nan, np.nan))
            continue
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                            for c in p)):
            raise InputError(path, f"landmark {i} is not an [x, y] pair of numbers")
        try:
            x, y = float(p[0]), float(p[1])
        except OverflowError:  # an integer beyond float range
            x = y = math.inf
        if not (math.isfinite(x) and math.isfinite(y)):  # NaN/Infinity/1e999 literals: a missing point is null
            raise InputError(path, f"landmark {i} has non-finite coordinates (write null for a missing point)")
        rows.append((x, y))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def write_pts(path: str | PathLike, points: np.ndarray) -> None:
    """Write an iBUG ``.pts`` file with the standard header (1-based coordinates), atomically.

    Args:
        path: destination.
        points: ``(N, 2)`` 0-based pixel coordinates, all finite (``.pts`` cannot say "missing").
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"write_pts: expected points of shape (N, 2), got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("write_pts: .pts files cannot hold missing (NaN) points")
    body = "\n".join(f"{x:.6f} {y:.6f}" for x, y in points + 1.0)
    with atomic_write(path, mode="w") as f:
        f.write(f"version: 1\nn_points: {len(points)}\n{{\n{body}\n}}\n")


def write_landmarks_json(path: str | PathLike, points: np.ndarray) -> None:
    """Write ``{"landmarks": [[x, y], ...]}`` (0-based pixels, ``null`` for NaN points), atomically."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"write_landmarks_json: expected points of shape (N, 2), got {points.shape}")
    rows = [None if not np.isfinite(p).all() else [float(p[0]), float(p[1])] for p in points]
    with atomic_write(path, mode="w") as f:
        json.dump({"landmarks": rows}, f)
