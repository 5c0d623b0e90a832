"""Statistical prior on model coefficients.

With standardised bases (every coefficient ~ N(0, 1), ``DESIGN.md``) the negative log-prior is ‖α‖²: the
3DMM-STN statistical prior loss and Zhang et al.'s E_reg = Σ (α_i / σ_i)² once the σ are folded into the
basis. For unstandardised coefficients pass their σ.
"""
from __future__ import annotations

from torch import Tensor


def prior_loss(coeffs: Tensor, std: Tensor | None = None) -> Tensor:
    """``mean_b Σ_k (α_bk / σ_k)²``.

    Args:
        coeffs: ``(B, K)`` coefficients.
        std: optional ``(K,)`` standard deviations; ``None`` for standardised coefficients (σ = 1).
    Returns:
        scalar.
    """
    if coeffs.dim() != 2:
        raise ValueError(f"prior_loss: expected (B, K), got {tuple(coeffs.shape)}")
    z = coeffs if std is None else coeffs / std.to(coeffs.dtype)
    return (z * z).sum(-1).mean()
