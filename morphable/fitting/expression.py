"""Expression coefficients: unconstrained for PCA models, bounded least squares for blendshapes.

Blendshape weights (SFM's six expressions, ICT's ARKit set) are meaningful in ``[0, 1]``; eos fits them
with non-negative least squares (Lawson & Hanson). Here every linear landmark fit is written as a
quadratic program ``min_x ½ xᵀ H x − cᵀ x`` subject to ``lower ≤ x ≤ upper`` (``±inf`` for unbounded
coordinates such as identity coefficients), solved for a whole batch at once by :func:`box_qp`.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _masked_solve(H: Tensor, g: Tensor, free: Tensor) -> Tensor:
    """Newton step on the free coordinates, zero on the others. ``(B, P, P), (B, P), (B, P) -> (B, P)``."""
    f = free.to(H.dtype)
    H_ff = H * (f[:, :, None] * f[:, None, :]) + torch.diag_embed(1 - f)
    return -torch.linalg.solve(H_ff, (g * f)[..., None])[..., 0]


_STEPS = tuple(0.5**k for k in range(12))  # backtracking step lengths, tried all at once


def box_qp(H: Tensor, c: Tensor, lower: Tensor, upper: Tensor, max_iter: int = 30) -> Tensor:
    """Solve ``min ½ xᵀHx − cᵀx`` s.t. ``lower ≤ x ≤ upper`` for a batch of small dense problems.

    Projected Newton method (Bertsekas, "Projected Newton methods for optimization problems with simple
    constraints", SIAM J. Control Optim. 1982): coordinates at a bound whose gradient points outwards
    are held; the others take a Newton step; the step is projected onto the box and shortened
    (``1, ½, ¼, …``, all evaluated at once for the whole batch) to the lowest objective, so the objective
    never increases. For strictly convex ``H`` it identifies the active set in a few steps;
    ``tests/fitting/test_expression.py`` checks it against ``scipy.optimize.lsq_linear``.

    Args:
        H: ``(B, P, P)`` symmetric positive definite.
        c: ``(B, P)``.
        lower, upper: ``(P,)`` or ``(B, P)`` bounds (``±inf`` allowed).
        max_iter: Newton steps at most.
    Returns:
        ``x (B, P)``.
    """
    lower, upper = lower.expand_as(c), upper.expand_as(c)
    x = torch.linalg.solve(H, c[..., None])[..., 0]
    x = torch.maximum(torch.minimum(x, upper), lower)
    steps = c.new_tensor(_STEPS)[None, :, None]  # (1, S, 1)

    def objective(z: Tensor) -> Tensor:  # (B, S, P) -> (B, S)
        return 0.5 * ((z @ H) * z).sum(-1) - (z * c[:, None]).sum(-1)

    for _ in range(max_iter):
        g = (H @ x[..., None])[..., 0] - c
        held = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
        d = _masked_solve(H, g, ~held)
        if bool((d.abs() <= 1e-12 * (1 + x.abs())).all()):
            break  # KKT point: the free coordinates are optimal and the held ones push outwards
        cand = x[:, None] + steps * d[:, None]  # (B, S, P)
        cand = torch.maximum(torch.minimum(cand, upper[:, None]), lower[:, None])
        f = objective(cand)
        best = f.argmin(1)
        x_new = cand[torch.arange(c.shape[0], device=c.device), best]
        better = f.gather(1, best[:, None])[:, 0] < objective(x[:, None])[:, 0]
        x_new = torch.where(better[:, None], x_new, x)
        if torch.equal(x_new, x):
            break
        x = x_new
    return x
