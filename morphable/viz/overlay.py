"""Fit overlays: the photo with the input landmarks, the fitted model's landmarks and its projected mesh.

Pure numpy + PIL drawing (no renderer needed), used by ``morphable fit`` to write ``overlay.png``.
Coordinates are our image convention: 0-based pixels, x right, y down, pixel centres at integers (PIL
draws with the same convention, so no shift is needed).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

INPUT_COLOR = (40, 230, 60)      # input (detected / given) landmarks: green dots
FITTED_COLOR = (240, 40, 40)     # the model's landmarks projected: red crosses
MESH_COLOR = (80, 170, 255)      # projected mesh: light blue


def front_facing(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Which triangles face the viewer after projection to the image.

    Args:
        points: ``(V, 2)`` projected vertices, pixels (y down).
        triangles: ``(F, 3)`` vertex ids, counter-clockwise seen from outside (OBJ convention) in model
            space (+y up). The image's y-down flip makes a front face clockwise in pixels, i.e. a
            negative signed area.
    Returns:
        ``(F,)`` bool.
    """
    a, b, c = (points[triangles[:, k]] for k in range(3))
    cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return cross < 0


def unique_edges(triangles: np.ndarray) -> np.ndarray:
    """``(F, 3)`` triangles -> ``(E, 2)`` undirected edges, each once (smaller id first)."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def draw_overlay(image: np.ndarray, *, landmarks: np.ndarray | None = None,
                 landmarks_fitted: np.ndarray | None = None, points: np.ndarray | None = None,
                 triangles: np.ndarray | None = None, visible: np.ndarray | None = None,
                 mesh_opacity: float = 0.35, max_points: int = 6000) -> np.ndarray:
    """Draw a fit over its photo.

    Args:
        image: ``(H, W, 3)`` uint8 RGB photo.
        landmarks: ``(68, 2)`` input landmarks, pixels (NaN rows are skipped); green dots.
        landmarks_fitted: ``(68, 2)`` the fitted model's landmarks projected, pixels; red crosses.
        points: ``(V, 2)`` projected mesh vertices, pixels.
        triangles: ``(F, 3)`` mesh triangles; with ``points``, the wireframe of the front-facing
            triangles is drawn. Without triangles, up to ``max_points`` vertices are drawn as dots.
        visible: ``(V,)`` bool, e.g. from a z-buffer test; edges/points touching a hidden vertex are
            skipped.
        mesh_opacity: alpha of the mesh layer in [0, 1].
    Returns:
        ``(H, W, 3)`` uint8, a new array.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_overlay: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    H, W = image.shape[:2]
    unit = max(1, round(min(H, W) / 300))  # line width / marker size grow with the photo
    base = Image.fromarray(image).convert("RGBA")

    if points is not None:
        points = np.asarray(points, dtype=np.float64)
        layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        alpha = int(round(255 * mesh_opacity))
        keep_vertex = np.isfinite(points).all(1) if visible is None else (np.asarray(visible, bool)
                                                                         & np.isfinite(points).all(1))
        if triangles is not None:
            triangles = np.asarray(triangles, dtype=np.int64)
            tri = triangles[front_facing(points, triangles) & keep_vertex[triangles].all(1)]
            for i, j in unique_edges(tri) if len(tri) else []:
                draw.line([tuple(points[i]), tuple(points[j])], fill=MESH_COLOR + (alpha,), width=1)
        else:
            ids = np.flatnonzero(keep_vertex)
            if len(ids) > max_points:
                ids = ids[np.linspace(0, len(ids) - 1, max_points).astype(np.int64)]
            for x, y in points[ids]:
                draw.point((x, y), fill=MESH_COLOR + (alpha,))
        base = Image.alpha_composite(base, layer)

    draw = ImageDraw.Draw(base)
    r = 1.5 * unit + 0.5
    if landmarks is not None:
        for x, y in np.asarray(landmarks, dtype=np.float64):
            if np.isfinite(x) and np.isfinite(y):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=INPUT_COLOR + (255,))
    if landmarks_fitted is not None:
        for x, y in np.asarray(landmarks_fitted, dtype=np.float64):
            if np.isfinite(x) and np.isfinite(y):
                draw.line([(x - r, y - r), (x + r, y + r)], fill=FITTED_COLOR + (255,), width=unit)
                draw.line([(x - r, y + r), (x + r, y - r)], fill=FITTED_COLOR + (255,), width=unit)
    return np.asarray(base.convert("RGB"))
