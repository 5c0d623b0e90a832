"""Consistency losses between several images of one person.

* Siamese multi-view fitting loss (3DMM-STN, Bas et al. 2017): flattened textures of the same face seen in
  different poses must agree wherever both are visible.
* Ring shape-consistency loss (RingNet, Sanyal et al. CVPR 2019, Eq. 2): shapes regressed from images of
  one person must be closer to each other, by a margin, than to the shape of another person.
"""
from __future__ import annotations

import torch
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


def ring_loss(shapes: Tensor, margin: float = 0.5) -> Tensor:
    """RingNet's shape-consistency loss over rings of R elements (Sanyal et al. 2019, Eq. 2).

    Elements ``0 … R−2`` of a ring show one person, element ``R−1`` another. For every ordered pair
    ``j ≠ k`` of the same person: ``max(0, ‖β_j − β_k‖² + η − ‖β_j − β_R‖²)``, i.e. a hinge on
    ``‖β_j − β_k‖² + η ≤ ‖β_j − β_R‖²``. The paper sums the terms; we average them over rings and pairs
    so the weight λ_SC does not depend on R or the batch size.

    Args:
        shapes: ``(P, R, K)`` shape coefficients of P rings (R ≥ 3: at least two images of the person).
        margin: η (0.5 in the paper).
    Returns:
        scalar: the mean hinge over the ``P·(R−1)·(R−2)`` ordered pairs.
    """
    if shapes.dim() != 3 or shapes.shape[1] < 3:
        raise ValueError(f"ring_loss: expected shapes (P, R>=3, K), got {tuple(shapes.shape)}")
    same = shapes[:, :-1]  # (P, R-1, K)
    other = shapes[:, -1:]  # (P, 1, K)
    d_same = (same[:, :, None] - same[:, None]).pow(2).sum(-1)  # (P, R-1, R-1): ‖β_j − β_k‖²
    d_other = (same - other).pow(2).sum(-1)  # (P, R-1): ‖β_j − β_R‖²
    hinge = (d_same + margin - d_other[:, :, None]).clamp_min(0)
    n = same.shape[1]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=shapes.device)
    return hinge[:, off_diagonal].mean()
