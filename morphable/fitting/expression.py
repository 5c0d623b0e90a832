"""Expression coefficients: unconstrained for PCA models, bounded least squares for blendshapes.

Blendshape weights (SFM's six expressions, ICT's ARKit set) are meaningful in ``[0, 1]``; eos fits them
with non-negative least squares (Lawson & Hanson). Here every linear landmark fit is written as a
quadratic program ``min_x ½ xᵀ H x − cᵀ x`` subject to ``lower ≤ x ≤ upper`` (``±inf`` for unbounded
coordinates such as identity coefficients), solved for a whole batch at once by :func:`box_qp`.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _masked_solve(H: Tensor, c: Tensor, x: Tensor, free: Tensor) -> Tensor:
    """Minimise over the free coordinates with the others held at ``x``. ``(B, P, P), (B, P)x3 -> (B, P)``."""
    f = free.to(H.dtype)
    fixed = x * (1 - f)
    H_ff = H * (f[:, :, None] * f[:, None, :]) + torch.diag_embed(1 - f)
    rhs = (c - (H @ fixed[..., None])[..., 0]) * f + fixed
    return torch.linalg.solve(H_ff, rhs[..., None])[..., 0]


def box_qp(H: Tensor, c: Tensor, lower: Tensor, upper: Tensor, max_iter: int | None = None) -> Tensor:
    """Solve ``min ½ xᵀHx − cᵀx`` s.t. ``lower ≤ x ≤ upper`` for a batch of small dense problems.

    Primal active-set method: start from the clamped unconstrained minimiser; at each step a coordinate
    is held at a bound when its gradient pushes it outwards (KKT), the free coordinates are solved
    exactly, and the result is clamped. For strictly convex ``H`` it stops when the active set repeats
    (typically 2–4 steps); ``tests/fitting/test_expression.py`` checks it against
    ``scipy.optimize.lsq_linear``.

    Args:
        H: ``(B, P, P)`` symmetric positive definite.
        c: ``(B, P)``.
        lower, upper: ``(P,)`` or ``(B, P)`` bounds (``±inf`` allowed).
        max_iter: active-set steps, default ``P + 2``.
    Returns:
        ``x (B, P)``.
    """
    lower, upper = lower.expand_as(c), upper.expand_as(c)
    x = torch.linalg.solve(H, c[..., None])[..., 0]
    if not (torch.isfinite(lower).any() or torch.isfinite(upper).any()):
        return x
    x = torch.maximum(torch.minimum(x, upper), lower)
    free_prev = None
    for _ in range(max_iter if max_iter is not None else c.shape[-1] + 2):
        g = (H @ x[..., None])[..., 0] - c
        at_low = (x <= lower) & (g > 0)
        at_high = (x >= upper) & (g < 0)
        free = ~(at_low | at_high)
        if free_prev is not None and torch.equal(free, free_prev):
            break
        x = _masked_solve(H, c, x, free)
        x = torch.maximum(torch.minimum(x, upper), lower)
        free_prev = free
    return x
