"""Bilateral symmetry loss (3DMM-STN, Bas et al. 2017, Sec. 4.2): the asymmetry of a face texture sampled
into a *symmetric* UV space, measured over the pixels visible on both sides.

In a symmetric flattening (``geometry/uv.py``) a point and its mirror sit at ``(u, v)`` and ``(1 − u, v)``,
so the mirror image of a UV texture is its left-right flip. The same loss serves albedo symmetry in
photometric fitting (per-vertex values with a mirror index instead of a flip).
"""
from __future__ import annotations

import torch
from torch import Tensor


def symmetry_loss(texture: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared difference between a UV texture and its mirror, over pixels visible in both.

    Args:
        texture: ``(B, H, W, C)`` texture in a symmetric UV layout (u along W).
        mask: optional ``(B, H, W)`` visibility in [0, 1]; a pixel counts with weight ``m(u,v)·m(1−u,v)``.
    Returns:
        scalar (texture units²).
    """
    if texture.dim() != 4:
        raise ValueError(f"symmetry_loss: expected texture (B, H, W, C), got {tuple(texture.shape)}")
    flipped = texture.flip(2)
    w = torch.ones_like(texture[..., 0]) if mask is None else mask.to(texture.dtype) * mask.to(texture.dtype).flip(2)
    d = ((texture - flipped) ** 2).sum(-1)
    return (w * d).sum() / (w.sum() * texture.shape[-1]).clamp_min(1e-12)


def vertex_symmetry_loss(values: Tensor, mirror: Tensor, weights: Tensor | None = None) -> Tensor:
    """The same for per-vertex values (e.g. albedo): mean ``‖x_i − x_mirror(i)‖²`` over paired vertices.

    Args:
        values: ``(B, V, C)``.
        mirror: ``(V,)`` int64 mirror index of each vertex (−1 = unpaired).
        weights: optional ``(B, V)`` or ``(V,)`` weights.
    Returns:
        scalar.
    """
    paired = mirror >= 0
    idx = torch.nonzero(paired).squeeze(-1)
    d = ((values[:, idx] - values[:, mirror[idx]]) ** 2).sum(-1)
    w = torch.ones_like(d)
    if weights is not None:
        w = w * weights.to(values.dtype).expand(values.shape[:2])[:, idx]
    return (w * d).sum() / (w.sum() * values.shape[-1]).clamp_min(1e-12)
