"""Photometric consistency between a rendering and a photo (Zhang et al.'s E_con; Deep3DFaceRecon's and
Genova's pixel losses), over the pixels where the face is rendered and visible, with a robust per-pixel
norm, and an optional skin mask from colour statistics so that hair, glasses or beards weigh less.

``E_con = Σ_p m_p ρ(‖C_S(p) − C_I(p)‖) / Σ_p m_p`` with ``ρ`` one of

* ``"l2"``: ``r²`` (the seed's squared error);
* ``"l21"``: ``r`` (the per-pixel L2 norm, not squared: robust to outliers, as in Deep3DFaceRecon);
* ``"huber"``: ``r²/2`` for ``r ≤ δ``, ``δ(r − δ/2)`` beyond.
"""
from __future__ import annotations

import torch
from torch import Tensor


def photometric_loss(rendered: Tensor, target: Tensor, mask: Tensor, *, kind: str = "l21", delta: float = 0.1) -> Tensor:
    """Masked robust colour difference.

    Args:
        rendered, target: ``(B, H, W, C)`` colours (linear [0, 1]).
        mask: ``(B, H, W)`` pixel weights in [0, 1] (rendered face ∩ visible ∩ skin).
        kind: ``"l2"``, ``"l21"`` or ``"huber"`` (see module docstring).
        delta: Huber threshold (colour units).
    Returns:
        scalar.
    """
    if rendered.shape != target.shape or rendered.shape[:3] != mask.shape:
        raise ValueError(f"photometric_loss: rendered {tuple(rendered.shape)}, target {tuple(target.shape)} and "
                         f"mask {tuple(mask.shape)} do not match")
    sq = ((rendered - target) ** 2).sum(-1)
    if kind == "l2":
        rho = sq
    elif kind == "l21":
        rho = (sq + 1e-10).sqrt()  # offset: finite gradient where the rendering matches exactly
    elif kind == "huber":
        r = (sq + 1e-10).sqrt()
        rho = torch.where(r <= delta, 0.5 * sq, delta * (r - 0.5 * delta))
    else:
        raise ValueError(f"photometric_loss: unknown kind {kind!r} (expected 'l2', 'l21' or 'huber')")
    m = mask.to(rendered.dtype)
    return (m * rho).sum() / m.sum().clamp_min(1e-12)


def _chroma(rgb: Tensor) -> Tensor:
    """Normalised chromaticity ``(r, g) / (r + g + b)``: unchanged when a pixel is darker or brighter
    (shading scales all three channels alike). ``(..., 3) -> (..., 2)``."""
    return rgb[..., :2] / rgb.sum(-1, keepdim=True).clamp_min(1e-6)


def skin_mask(image: Tensor, region: Tensor, *, max_mahalanobis: float = 3.0) -> Tensor:
    """Soft skin probability from colour statistics of a face region.

    A Gaussian is fitted to the chromaticity of the pixels in ``region`` (e.g. the rendered face of the
    initial fit) — first to the half of them nearest the median colour, then twice to the pixels within
    ``max_mahalanobis`` of it (so hair, beard or glasses in the region do not widen it); each pixel's weight is ``exp(−d²/2)``, 0 beyond the threshold,
    where d is its Mahalanobis distance. Chromaticity ignores shading, so shadows stay skin.

    Args:
        image: ``(B, H, W, 3)`` photo in [0, 1].
        region: ``(B, H, W)`` bool pixels assumed mostly skin.
    Returns:
        ``(B, H, W)`` weights in [0, 1].
    """
    c = _chroma(image)
    out = torch.zeros(image.shape[:3], dtype=image.dtype, device=image.device)
    limit = max_mahalanobis**2
    for b in range(image.shape[0]):
        if region[b].sum() < 10:
            out[b] = region[b].to(image.dtype)
            continue
        pixels = c[b].reshape(-1, 2)
        x = pixels.index_select(0, region[b].reshape(-1).nonzero().squeeze(1))  # the region's chromaticities
        dist = (x - x.median(0).values).norm(dim=-1)  # robust start: the half nearest the median colour
        inliers = x[dist <= dist.median()]
        for _ in range(3):  # fit, then refit twice on the inliers (scored on the region's pixels only)
            mu = inliers.mean(0)
            inv = torch.linalg.inv(torch.cov((inliers - mu).T) + 1e-8 * torch.eye(2, dtype=x.dtype, device=x.device))
            d = x - mu
            keep = (d @ inv * d).sum(-1) <= limit
            if keep.sum() < 10:
                break
            inliers = x[keep]
        d = pixels - mu  # the last fit's weights over the whole image
        m2 = (d @ inv * d).sum(-1).view(c.shape[1:3])
        out[b] = torch.where(m2 <= limit, torch.exp(-0.5 * m2), torch.zeros_like(m2))
    return out
