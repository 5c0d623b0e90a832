"""A turntable of a mesh rendered by our own renderer (``render/``): views from several yaw angles.

Each view turns the mesh about the vertical axis through its bounding-box centre and looks at it
orthographically, lit by one white directional light from the upper front (SH, ``sh_directional``),
grey albedo, on a white background; the scale is the same in every view (the mesh's largest extent fills
90 % of a view at yaw 0).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from morphable.geometry.camera import ScaledOrthographic
from morphable.render.renderer import Renderer
from morphable.render.shading import sh_directional


def turntable_views(vertices: Tensor, triangles: Tensor, *, yaws_degrees=(-60, -30, 0, 30, 60), size: int = 192,
                    colors: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render ``vertices`` ``(V, 3)`` (mm) with ``triangles`` ``(F, 3)`` at each yaw (degrees, +: turning the
    face towards image right).

    Returns:
        images ``(N, size, size, 3)`` uint8 (sRGB-ish: gamma 2.2) and coverage ``(N, size, size)`` bool.
    """
    vertices = torch.as_tensor(vertices).double()
    triangles = torch.as_tensor(triangles).long()
    used = vertices[torch.unique(triangles)]
    lo, hi = used.min(0).values, used.max(0).values
    centre = (lo + hi) / 2
    scale = 0.9 * size / float((hi - lo)[:2].max().clamp_min(1e-9))
    N = len(yaws_degrees)
    rotation = torch.zeros(N, 3, dtype=torch.float64)
    rotation[:, 1] = torch.tensor([math.radians(y) for y in yaws_degrees], dtype=torch.float64)
    from morphable.geometry.rotation import axis_angle_to_matrix

    R = axis_angle_to_matrix(rotation)  # (N, 3, 3)
    # the bounding-box centre lands at the view's centre pixel
    c = (R @ centre)[:, :2]
    translation = torch.stack([(size - 1) / 2 - scale * c[:, 0], (size - 1) / 2 + scale * c[:, 1]], -1)
    camera = ScaledOrthographic(torch.full((N,), scale, dtype=torch.float64), rotation, translation)
    colors = torch.full_like(vertices, 0.7) if colors is None else torch.as_tensor(colors).double()
    sh = sh_directional(torch.tensor([[0.3, 0.4, 1.0]], dtype=torch.float64).expand(N, 3),
                        torch.full((N, 3), 2.0, dtype=torch.float64), ambient=0.35)
    with torch.no_grad():
        out = Renderer(triangles, (size, size), soft_silhouette=False)(
            vertices[None].expand(N, -1, -1), camera, colors=colors[None].expand(N, -1, -1), sh=sh)
    covered = out.triangle_id >= 0
    image = torch.where(covered[..., None], out.image.clamp(0, 1) ** (1 / 2.2), torch.ones_like(out.image))
    return (image * 255).round().to(torch.uint8).numpy(), covered.numpy()


def turntable(vertices: Tensor, triangles: Tensor, **kwargs) -> np.ndarray:
    """The :func:`turntable_views` side by side: ``(size, N · size, 3)`` uint8."""
    images, _ = turntable_views(vertices, triangles, **kwargs)
    return np.concatenate(list(images), axis=1)
