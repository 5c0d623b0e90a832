"""Per-vertex error heat maps: colour a mesh by an error (mm) and render it orthographically.

The colour map is a piecewise-linear approximation of matplotlib's *viridis* (perceptually uniform, readable
in grey and by colour-blind readers) from 0 (dark blue) to ``vmax`` (yellow); errors above ``vmax`` clip.
A colour bar with its end values in mm is drawn on the right.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from morphable.render.rasterize import interpolate, rasterize

# viridis sampled at 0, 1/4, 1/2, 3/4, 1
_ANCHORS = np.array([[0.267, 0.005, 0.329], [0.229, 0.322, 0.546], [0.128, 0.567, 0.551],
                     [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]])


def _default_vmax(errors: np.ndarray) -> float:
    finite = errors[np.isfinite(errors)]
    return float(np.percentile(finite, 95)) if len(finite) else 1.0


def error_colors(errors: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Map errors (N,) in [0, vmax] to RGB (N, 3) in [0, 1]; NaN (not measured) is light grey.

    ``vmax`` defaults to the 95th percentile of the finite errors.
    """
    errors = np.asarray(errors, dtype=np.float64)
    vmax = _default_vmax(errors) if vmax is None else vmax
    t = np.clip(np.nan_to_num(errors) / max(vmax, 1e-12), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.minimum(t.astype(np.int64), len(_ANCHORS) - 2)
    frac = (t - lo)[:, None]
    rgb = (1 - frac) * _ANCHORS[lo] + frac * _ANCHORS[lo + 1]
    rgb[np.isnan(errors)] = 0.8
    return rgb


def view_frame(right: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) whose rows are the image axes x (right), y (up), z (towards the viewer) in mesh space.

    Args:
        right: (3,) a direction pointing to the face's left (+x in model space, e.g. right eye → left eye).
        up: (3,) roughly up (e.g. mouth → eyes); made orthogonal to ``right``.
    """
    x = np.asarray(right, np.float64) / np.linalg.norm(right)
    y = np.asarray(up, np.float64) - np.dot(up, x) * x
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)])


def render_heatmap(vertices: np.ndarray, triangles: np.ndarray, errors: np.ndarray, *, vmax: float | None = None,
                   frame: np.ndarray | None = None, size: int = 512) -> np.ndarray:
    """Render a mesh coloured by a per-vertex error, seen along −z of ``frame``.

    Args:
        vertices: (V, 3) mm. triangles: (F, 3) int. errors: (V,) mm (NaN: not measured, drawn grey).
        vmax: error shown as the top colour (default: 95th percentile of ``errors``).
        frame: (3, 3) rows = image right, up, towards-viewer directions (default: model space axes).
        size: image height in pixels (an 80-pixel colour bar is added on the right).

    Returns:
        (size, size + 80, 3) uint8 RGB, white background, Lambert-shaded by the view-facing normals.
    """
    v = np.asarray(vertices, np.float64) @ (np.eye(3) if frame is None else np.asarray(frame)).T
    tri = np.asarray(triangles, dtype=np.int64)
    errors = np.asarray(errors, dtype=np.float64)
    if len(errors) != len(v):
        raise ValueError(f"render_heatmap: {len(v)} vertices but {len(errors)} errors")
    vmax = _default_vmax(errors) if vmax is None else vmax
    used = v[np.unique(tri)]
    lo, hi = used.min(axis=0), used.max(axis=0)
    pixels_per_mm = 0.9 * (size - 1) / max(float((hi - lo)[:2].max()), 1e-12)
    centre = (lo + hi) / 2
    screen = np.stack([(v[:, 0] - centre[0]) * pixels_per_mm + (size - 1) / 2,
                       (centre[1] - v[:, 1]) * pixels_per_mm + (size - 1) / 2,   # image y points down
                       -v[:, 2]], axis=1)                                        # depth: larger = farther
    screen_t = torch.as_tensor(screen)[None]
    tri_t = torch.as_tensor(tri)
    fragments = rasterize(screen_t, tri_t, (size, size))
    colours = interpolate(torch.as_tensor(error_colors(errors, vmax))[None], fragments, tri_t)[0].numpy()
    corners = v[tri]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    facing = np.abs(normal[:, 2]) / np.maximum(np.linalg.norm(normal, axis=1), 1e-300)
    ids = fragments.triangle_id[0].numpy()
    shade = np.where(ids >= 0, 0.35 + 0.65 * facing[np.maximum(ids, 0)], 1.0)[..., None]
    image = np.where(ids[..., None] >= 0, colours * shade, 1.0)
    return np.concatenate([_to_uint8(image), _colour_bar(size, vmax)], axis=1)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def _colour_bar(height: int, vmax: float, width: int = 80) -> np.ndarray:
    bar = np.ones((height, width, 3))
    top, bottom = height // 10, height - height // 10
    ramp = error_colors(np.linspace(vmax, 0.0, bottom - top), vmax)
    bar[top:bottom, 8:24] = ramp[:, None, :]
    canvas = Image.fromarray(_to_uint8(bar))
    draw = ImageDraw.Draw(canvas)
    draw.text((26, top - 6), f"{vmax:.3g} mm", fill=(0, 0, 0))
    draw.text((26, bottom - 6), "0 mm", fill=(0, 0, 0))
    return np.asarray(canvas)
