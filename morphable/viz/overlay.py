"""Fit overlays: the photo with the input landmarks, the fitted model's landmarks and its projected mesh.

The mesh is drawn either as a wireframe of its front-facing triangles (numpy + PIL; readable for
sparse meshes such as the SFM's) or as a smoothly shaded surface (:func:`shade_mesh`, through the
rasteriser; readable at any density, e.g. ICT's 26 k vertices in a 150-pixel face), blended over the
photo. ``morphable fit`` writes the shaded form to ``overlay.png``.

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


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """``(V, 3)`` unit, area-weighted vertex normals of ``(F, 3)`` counter-clockwise triangles."""
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    face = np.cross(b - a, c - a)  # length = 2 · area: the sum is area-weighted
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, triangles[:, k], face)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def shade_mesh(screen: np.ndarray, view_vertices: np.ndarray, triangles: np.ndarray,
               image_size: tuple[int, int], *, max_side: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Lambert-shade a posed mesh lit from the camera: its picture in the photo's frame.

    Args:
        screen: ``(V, 3)`` ``(u px, v px, depth mm)`` (``camera.project_with_depth``).
        view_vertices: ``(V, 3)`` the vertices in the camera's frame (``camera.transform``), for normals;
            the viewer looks along −z, so the brightness is ``0.25 + 0.75 · max(0, n_z)`` (scaled
            orthographic; a fine approximation for a perspective camera far from the face).
        triangles: ``(F, 3)`` int64, counter-clockwise seen from outside.
        image_size: ``(H, W)`` of the photo.
        max_side: the mesh's bounding box is rasterised with at most this many pixels per side and
            resized to the photo's scale (the shading is smooth, so this loses nothing visible).
    Returns:
        ``shade`` ``(H, W)`` float32 in [0, 1] and ``mask`` ``(H, W)`` bool (pixels the mesh covers).
    """
    import torch

    from morphable.render.rasterize import interpolate, rasterize

    H, W = image_size
    shade, mask = np.zeros((H, W), np.float32), np.zeros((H, W), bool)
    screen = np.asarray(screen, dtype=np.float64)
    finite = screen[np.isfinite(screen).all(1)]
    if not len(finite):
        return shade, mask
    x0, y0 = (np.maximum(np.floor(finite[:, :2].min(0)), 0)).astype(int)
    x1, y1 = np.minimum(np.ceil(finite[:, :2].max(0)), [W - 1, H - 1]).astype(int)
    if x1 < x0 or y1 < y0:
        return shade, mask
    w, h = x1 - x0 + 1, y1 - y0 + 1
    k = min(1.0, max_side / max(w, h))
    size = (max(1, round(h * k)), max(1, round(w * k)))
    cells = (screen - [x0, y0, 0]) * [k, k, 1]
    tris = torch.as_tensor(np.asarray(triangles, dtype=np.int64))
    frags = rasterize(torch.as_tensor(cells)[None], tris, size, cull_backfaces=True)
    normals = torch.as_tensor(vertex_normals(np.asarray(view_vertices, dtype=np.float64), tris.numpy()))
    n = interpolate(normals[None], frags, tris)[0].numpy()
    n_z = n[..., 2] / np.maximum(np.linalg.norm(n, axis=-1), 1e-12)
    small_shade = (0.25 + 0.75 * np.clip(n_z, 0, 1)).astype(np.float32)
    small_mask = frags.triangle_id[0].numpy() >= 0
    # shading at the outline is extended outwards by one cell so the resize does not darken the rim
    from scipy.ndimage import grey_dilation

    padded = np.where(small_mask, small_shade, grey_dilation(np.where(small_mask, small_shade, 0), size=3))
    shade[y0:y1 + 1, x0:x1 + 1] = np.asarray(Image.fromarray(padded.astype(np.float32)).resize((w, h),
                                                                                                Image.BILINEAR))
    # the coverage is resized as a grey image and thresholded: smooth outlines, not upscaled steps
    coverage = Image.fromarray(small_mask.astype(np.float32)).resize((w, h), Image.BILINEAR)
    mask[y0:y1 + 1, x0:x1 + 1] = np.asarray(coverage) >= 0.5
    shade[~mask] = 0
    return shade, mask


def draw_overlay(image: np.ndarray, *, landmarks: np.ndarray | None = None,
                 landmarks_fitted: np.ndarray | None = None, points: np.ndarray | None = None,
                 triangles: np.ndarray | None = None, visible: np.ndarray | None = None,
                 shading: tuple[np.ndarray, np.ndarray] | None = None,
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
        shading: ``(shade (H, W), mask (H, W))`` from :func:`shade_mesh`: a grey shaded surface drawn
            where ``mask`` is set (with or instead of the wireframe).
        mesh_opacity: alpha of the mesh layer in [0, 1].
    Returns:
        ``(H, W, 3)`` uint8, a new array.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"draw_overlay: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    H, W = image.shape[:2]
    # marker size follows the face (the landmarks' extent), so small and large faces both read well
    marks = [np.asarray(p, dtype=np.float64) for p in (landmarks, landmarks_fitted) if p is not None]
    marks = np.concatenate(marks) if marks else np.zeros((0, 2))
    marks = marks[np.isfinite(marks).all(1)]
    extent = float(np.ptp(marks, axis=0).max()) if len(marks) else min(H, W) / 2
    r = float(np.clip(extent / 90, 1.0, 8.0))
    width = max(1, round(r / 3))
    if shading is not None:
        shade, mask = shading
        grey = np.asarray(shade, np.float32)[..., None] * 255.0
        blended = image * (1 - mesh_opacity) + grey * mesh_opacity
        image = np.where(np.asarray(mask, bool)[..., None], np.rint(blended), image).astype(np.uint8)
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
    if landmarks is not None:
        for x, y in np.asarray(landmarks, dtype=np.float64):
            if np.isfinite(x) and np.isfinite(y):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=INPUT_COLOR + (255,))
    if landmarks_fitted is not None:
        for x, y in np.asarray(landmarks_fitted, dtype=np.float64):
            if np.isfinite(x) and np.isfinite(y):
                draw.line([(x - r, y - r), (x + r, y + r)], fill=FITTED_COLOR + (255,), width=width)
                draw.line([(x - r, y + r), (x + r, y - r)], fill=FITTED_COLOR + (255,), width=width)
    return np.asarray(base.convert("RGB"))
