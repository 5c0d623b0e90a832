"""Landmark loss: distance between observed and predicted 2D points.

3DMM-STN (Bas et al. 2017) uses the Euclidean distance; Zhang et al.'s inverse rendering (E_lan) and
RingNet's projection loss use the (squared) L2 / L1 distance. All are here, with optional per-point weights
and NaN targets meaning "not observed".
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def landmark_loss(pred: Tensor, target: Tensor, weights: Tensor | None = None, *, squared: bool = False) -> Tensor:
    """Mean (weighted) distance between predicted and observed landmarks.

    Args:
        pred: ``(B, L, 2)`` predicted points (px).
        target: ``(B, L, 2)`` observed points (px); rows with NaN are ignored.
        weights: optional ``(L,)`` or ``(B, L)`` non-negative per-point weights.
        squared: use ‖·‖² (E_lan of Zhang et al.) instead of ‖·‖ (3DMM-STN).
    Returns:
        scalar: ``Σ w·d / Σ w`` over observed points (px or px²).
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"landmark_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, L, D)")
    seen = torch.isfinite(target).all(-1)
    diff = pred - torch.nan_to_num(target)
    sq = (diff * diff).sum(-1)
    # the sqrt's gradient is infinite at 0: a tiny offset keeps it finite when a point is matched exactly
    d = sq if squared else (sq + 1e-12).sqrt()
    w = seen.to(pred.dtype)
    if weights is not None:
        w = w * weights.to(pred.dtype).expand_as(w)
    return (w * d).sum() / w.sum().clamp_min(1e-12)


class LandmarkLoss(nn.Module):
    """Holds the per-point weights and the distance kind; see :func:`landmark_loss`."""

    def __init__(self, weights: Tensor | None = None, squared: bool = False):
        super().__init__()
        self.register_buffer("weights", weights)
        self.squared = squared

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return landmark_loss(pred, target, self.weights, squared=self.squared)
