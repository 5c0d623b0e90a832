"""Genova et al. 2018's parameter and loopback losses (Sec. 3.3.1 and 3.3.4).

Parameter loss, on synthetic faces with known shape ``s`` and texture ``t`` coefficients:

    L_param = λ_s ‖ŝ − s‖² + λ_t ‖t̂ − t‖²       (mean over the batch; paper: λ_s = 0.4, λ_t = 0.002
                                               for the 199 + 199 standardised BFM 2017 coefficients)

Loopback loss, on real photos: render the decoder's prediction ``p`` at a random pose and light, encode
the rendering and decode it again to ``p'``; then ``L_loop = L_param(p', p)`` with gradients along both
paths (through ``p'`` and through ``p``), weight λ_loop = 0.07.

The weights are per *sum* over coefficients; for a model with ``K`` identity and ``A`` albedo
coefficients we keep the paper's weight per coefficient of squared error at the paper's sizes by
scaling with 199/K and 199/A (:func:`rescaled_weights`), since our coefficients are standardised as
BFM 2017's are.
"""
from __future__ import annotations

from torch import Tensor

PAPER_LAMBDA_S, PAPER_LAMBDA_T, PAPER_DIMS = 0.4, 0.002, 199


def rescaled_weights(n_identity: int, n_albedo: int) -> tuple[float, float]:
    """``(λ_s, λ_t)`` for ``K`` identity and ``A`` albedo coefficients: the paper's, times 199/K and 199/A,
    so a given mean squared error per coefficient costs what it costs in the paper."""
    return (PAPER_LAMBDA_S * PAPER_DIMS / max(n_identity, 1), PAPER_LAMBDA_T * PAPER_DIMS / max(n_albedo, 1))


def parameter_loss(shape_pred: Tensor, shape_true: Tensor, albedo_pred: Tensor | None = None,
                   albedo_true: Tensor | None = None, *, lambda_s: float = PAPER_LAMBDA_S,
                   lambda_t: float = PAPER_LAMBDA_T) -> Tensor:
    """``L_param``: ``(B, K)`` shape and optional ``(B, A)`` albedo coefficients → scalar (batch mean)."""
    if shape_pred.shape != shape_true.shape or shape_pred.dim() != 2:
        raise ValueError(f"parameter_loss: shapes {tuple(shape_pred.shape)} and {tuple(shape_true.shape)} must match (B, K)")
    loss = lambda_s * ((shape_pred - shape_true) ** 2).sum(1).mean()
    if albedo_pred is not None and albedo_true is not None:
        loss = loss + lambda_t * ((albedo_pred - albedo_true) ** 2).sum(1).mean()
    return loss
