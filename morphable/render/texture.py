"""Bilinear sampling between images and UV maps (the 3DMM-STN sampler, Bas et al. 2017).

* :func:`sample_image`: bilinear lookup of an image at sub-pixel points, differentiable in both the
  image values and the point positions (the spatial-transformer sampler).
* :func:`image_to_uv`: unwrap a photo into the model's UV map: each texel's surface point is projected
  into the image (via the mesh in screen space) and the image sampled there; texels on triangles with a
  self-occluded or back-facing vertex are masked out.
* :func:`uv_to_image`: the inverse direction, a UV map sampled at a rendered UV-coordinate image.

Pixel convention (``DESIGN.md``): pixel centres at integer coordinates, ``(x, y)`` = (column, row).
UV maps (one convention for the whole package, that of OBJ/glTF viewers): ``u`` right, ``v`` up, the
tile [0, 1]² covers the texture's outer edges, so texel (row i, column j) of an ``S × S`` map has its
centre at ``u = (j + ½)/S``, ``v = 1 − (i + ½)/S`` (:func:`uv_to_pixels`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import Tensor


def sample_image(image: Tensor, points: Tensor) -> Tensor:
    """Bilinear sampling. ``image`` ``(B, H, W, C)``, ``points`` ``(B, N, 2)`` px ``(x, y)`` -> ``(B, N, C)``.

    Points outside the image read 0 beyond half a pixel past the border (zero padding).
    """
    if image.dim() != 4:
        raise ValueError(f"sample_image: expected image (B, H, W, C), got {tuple(image.shape)}")
    if points.dim() != 3 or points.shape[-1] != 2 or points.shape[0] != image.shape[0]:
        raise ValueError(f"sample_image: expected points (B={image.shape[0]}, N, 2), got {tuple(points.shape)}")
    B, H, W, C = image.shape
    # align_corners=True: −1 and +1 are the centres of the first and last pixels
    gx = points[..., 0] * (2.0 / max(W - 1, 1)) - 1.0
    gy = points[..., 1] * (2.0 / max(H - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)[:, :, None, :].to(image.dtype)  # (B, N, 1, 2)
    out = nnf.grid_sample(image.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=True)  # (B, C, N, 1)
    return out[..., 0].permute(0, 2, 1)


def uv_to_pixels(uv: Tensor, size: int) -> Tensor:
    """UV coordinates ``(..., 2)`` in [0, 1]² -> texel coordinates ``(x, y)`` of a ``size × size`` map
    (texel centres at integers: ``x = u·S − ½``, ``y = (1 − v)·S − ½``)."""
    return torch.stack([uv[..., 0] * size - 0.5, (1.0 - uv[..., 1]) * size - 0.5], dim=-1)


@dataclass(frozen=True)
class UVLayout:
    """Which triangle (and where in it) each texel of a ``size × size`` UV map lies on.

    Built once per model by rasterising the UV layout (:meth:`build`).

    Attributes:
        size: texels per side.
        triangle_id: ``(size, size)`` int64, −1 for texels outside the layout.
        barycentric: ``(size, size, 3)``.
    """

    size: int
    triangle_id: Tensor
    barycentric: Tensor

    @staticmethod
    def build(uv: Tensor, uv_triangles: Tensor, size: int) -> "UVLayout":
        from morphable.render.rasterize import rasterize

        pts = uv_to_pixels(uv.to(torch.float64), size)
        screen = torch.cat([pts, torch.zeros_like(pts[:, :1])], dim=-1)[None]
        frag = rasterize(screen, uv_triangles, (size, size))
        return UVLayout(size, frag.triangle_id[0], frag.barycentric[0].detach())


def image_to_uv(image: Tensor, screen: Tensor, triangles: Tensor, layout: UVLayout,
                visibility: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Unwrap images into UV maps (differentiable in the image and the screen positions).

    Args:
        image: ``(B, H, W, C)``.
        screen: ``(B, V, 2 or 3)`` projected vertex positions (px).
        triangles: ``(F, 3)`` vertex ids, matched row by row with the layout's UV triangles.
        layout: :class:`UVLayout`.
        visibility: ``(B, V)`` bool per-vertex visibility (:func:`~morphable.render.visibility.vertex_visibility`);
            ``None`` treats every vertex as visible.
    Returns:
        uv_map ``(B, S, S, C)`` (0 where masked) and mask ``(B, S, S)`` bool: texel on the layout, on a
        triangle whose three vertices are visible, and projecting inside the image.
    """
    B, H, W, C = image.shape
    S = layout.size
    tid = layout.triangle_id.reshape(-1)
    texels = (tid >= 0).nonzero(as_tuple=True)[0]
    face = tid[texels]
    bary = layout.barycentric.reshape(-1, 3)[texels].to(screen.dtype)  # (P, 3)
    corners = triangles[face]  # (P, 3)
    xy = screen[..., :2][:, corners]  # (B, P, 3, 2)
    points = (bary[None, :, :, None] * xy).sum(2)  # (B, P, 2)
    values = sample_image(image, points.to(image.dtype))
    ok = (points[..., 0] >= 0) & (points[..., 0] <= W - 1) & (points[..., 1] >= 0) & (points[..., 1] <= H - 1)
    if visibility is not None:
        ok &= visibility[:, corners].all(-1)
    values = values * ok.unsqueeze(-1).to(values.dtype)
    uv_map = image.new_zeros(B, S * S, C).index_put((torch.arange(B)[:, None], texels[None]), values)
    mask = torch.zeros(B, S * S, dtype=torch.bool, device=image.device)
    mask[:, texels] = ok
    return uv_map.view(B, S, S, C), mask.view(B, S, S)


def uv_to_image(uv_map: Tensor, uv_image: Tensor, mask: Tensor | None = None) -> Tensor:
    """Sample UV maps at a per-pixel UV-coordinate image (e.g. ``RenderOutput.uv``).

    Args:
        uv_map: ``(B, S, S, C)``.
        uv_image: ``(B, H, W, 2)`` UV coordinates in [0, 1]².
        mask: ``(B, H, W)`` pixels to fill (e.g. the rendered coverage); others are 0.
    Returns:
        ``(B, H, W, C)``.
    """
    B, H, W, _ = uv_image.shape
    S = uv_map.shape[1]
    out = sample_image(uv_map, uv_to_pixels(uv_image, S).reshape(B, H * W, 2)).view(B, H, W, -1)
    if mask is not None:
        out = out * mask.unsqueeze(-1).to(out.dtype)
    return out
