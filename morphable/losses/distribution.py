"""Losses on the distribution of predicted coefficients over a batch.

Genova et al. 2018, Sec. 3.3.3 ("batch distribution loss"): the identity loss alone lets the decoder's
outputs drift from the model's N(0, I) prior, so the first two moments of each batch's coefficients are
pulled to those of a standard normal, per coefficient k over the batch b:

    L_batchdistr = L_μ + L_σ,   L_μ = (1/K) Σ_k μ_k²,   L_σ = (1/K) Σ_k (σ_k − 1)²,
    μ_k = mean_b x_bk,   σ_k = std_b x_bk (unbiased)

(the paper applies it to shape and to texture separately, weight λ_batch = 10; averaging over k keeps
λ independent of the number of coefficients).
"""
from __future__ import annotations

from torch import Tensor


def batch_distribution_loss(coeffs: Tensor) -> Tensor:
    """``(B, K)`` coefficients (B ≥ 2) → scalar ``L_μ + L_σ`` (0 when the batch has zero mean and unit std
    in every coefficient)."""
    if coeffs.dim() != 2 or coeffs.shape[0] < 2:
        raise ValueError(f"batch_distribution_loss: expected (B >= 2, K) coefficients, got {tuple(coeffs.shape)}")
    mu = coeffs.mean(0)
    sigma = coeffs.std(0)
    return (mu * mu).mean() + ((sigma - 1) ** 2).mean()
