"""Per-vertex visibility: front-facing and not self-occluded (z-buffer test)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from morphable.render.rasterize import barycentric_at, rasterize_ids


@torch.no_grad()
def vertex_visibility(screen: Tensor, triangles: Tensor, image_size: tuple[int, int], *,
                      tolerance_mm: float = 1.0, perspective: bool = False, near: float = 1.0) -> Tensor:
    """Which vertices a camera sees.

    A vertex is visible when (1) it is front-facing: the signed screen areas of its triangles sum to a
    front-facing orientation (counter-clockwise in model space; see ``rasterize.py``), (2) it projects
    inside the image, and (3) the visible surface there is not nearer than the vertex by more than
    ``tolerance_mm`` (mm, the depth unit): the triangle the z-buffer (back faces culled) keeps at the
    vertex's nearest pixel, its plane evaluated at the vertex's exact projection.

    Args:
        screen: ``(B, V, 3)`` ``(u px, v px, depth mm)``.
        triangles: ``(F, 3)`` int64.
        image_size: ``(H, W)`` of the z-buffer (the image the vertices project into).
        tolerance_mm: depth slack; about the depth change across one pixel of a grazing surface.
    Returns:
        ``(B, V)`` bool.
    """
    ids = rasterize_ids(screen, triangles, image_size, cull_backfaces=True, perspective=perspective, near=near)
    return visibility_from_ids(screen, triangles, ids, tolerance_mm=tolerance_mm, perspective=perspective)


@torch.no_grad()
def visibility_from_ids(screen: Tensor, triangles: Tensor, triangle_id: Tensor, *, tolerance_mm: float = 1.0,
                        perspective: bool = False) -> Tensor:
    """:func:`vertex_visibility` given an already rasterised triangle-id image ``(B, H, W)``."""
    B, H, W = triangle_id.shape
    V = screen.shape[1]
    x, y, d = screen[..., 0][:, triangles], screen[..., 1][:, triangles], screen[..., 2][:, triangles]
    area2 = (x[..., 2] - x[..., 1]) * (y[..., 0] - y[..., 1]) - (y[..., 2] - y[..., 1]) * (x[..., 0] - x[..., 1])
    if perspective:
        area2 = area2 * torch.where(d < 0, -1.0, 1.0).prod(-1)
    orient = screen.new_zeros(B, V)
    for corner in range(3):
        orient.index_add_(1, triangles[:, corner], area2)
    front = orient < 0

    px = torch.round(screen[..., 0].nan_to_num(-1.0)).clamp(-1, W).to(torch.int64)
    py = torch.round(screen[..., 1].nan_to_num(-1.0)).clamp(-1, H).to(torch.int64)
    inside = (px >= 0) & (px < W) & (py >= 0) & (py < H) & torch.isfinite(screen).all(-1)
    flat = (py.clamp(0, H - 1) * W + px.clamp(0, W - 1))
    tri = triangle_id.reshape(B, -1).gather(1, flat)  # (B, V) triangle seen at each vertex's pixel
    z = torch.full_like(screen[..., 2], math.inf)
    b_idx, v_idx = (inside & (tri >= 0)).nonzero(as_tuple=True)
    if b_idx.numel():
        _, depth = barycentric_at(screen, triangles, b_idx, tri[b_idx, v_idx], screen[b_idx, v_idx, :2], perspective)
        z[b_idx, v_idx] = depth
    unoccluded = screen[..., 2] <= z + tolerance_mm
    return front & inside & unoccluded
