"""Consistency losses between several images of one person.

* Siamese multi-view fitting loss (3DMM-STN, Bas et al. 2017): flattened textures of the same face seen in
  different poses must agree wherever both are visible.
"""
from __future__ import annotations

from torch import Tensor


def multiview_texture_loss(textures: Tensor, masks: Tensor) -> Tensor:
    """Mean squared difference between every pair of flattened textures over their common visible pixels.

    Args:
        textures: ``(N, H, W, C)`` flattened textures of one person (N ≥ 2 photos).
        masks: ``(N, H, W)`` visibility in [0, 1].
    Returns:
        scalar: ``Σ_{i<j} Σ_p m_i m_j ‖T_i − T_j‖² / Σ_{i<j} Σ_p m_i m_j C``.
    """
    if textures.dim() != 4 or masks.shape != textures.shape[:3] or textures.shape[0] < 2:
        raise ValueError(f"multiview_texture_loss: expected (N>=2, H, W, C) textures and (N, H, W) masks, got "
                         f"{tuple(textures.shape)} and {tuple(masks.shape)}")
    m = masks.to(textures.dtype)
    num = textures.new_zeros(())
    den = textures.new_zeros(())
    for i in range(len(textures)):
        for j in range(i + 1, len(textures)):
            w = m[i] * m[j]
            num = num + (w * ((textures[i] - textures[j]) ** 2).sum(-1)).sum()
            den = den + w.sum() * textures.shape[-1]
    return num / den.clamp_min(1e-12)
