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
    """Newton step on the free coordinates, zero on the others. ``(B, P, P), (B, P), (B, P) -> (B, P)``.

    The free block of ``H`` with the identity on the held coordinates is positive definite when ``H`` is,
    so one Cholesky factorisation per problem solves it.
    """
    f = free.to(H.dtype)
    H_ff = H * (f[:, :, None] * f[:, None, :])
    H_ff.diagonal(dim1=1, dim2=2).add_(1 - f)
    return -torch.cholesky_solve((g * f)[..., None], torch.linalg.cholesky(H_ff))[..., 0]


_STEPS = tuple(0.5**k for k in range(12))  # backtracking step lengths, tried all at once


def box_qp(H: Tensor, c: Tensor, lower: Tensor, upper: Tensor, max_iter: int = 30, x0: Tensor | None = None) -> Tensor:
    """Solve ``min ½ xᵀHx − cᵀx`` s.t. ``lower ≤ x ≤ upper`` for a batch of small dense problems.

    Projected Newton method (Bertsekas, "Projected Newton methods for optimization problems with simple
    constraints", SIAM J. Control Optim. 1982): coordinates at a bound whose gradient points outwards
    are held; the others take a Newton step; the step is projected onto the box and shortened
    (``1, ½, ¼, …``, all evaluated at once for the whole batch) to the lowest objective, so the objective
    never increases. For strictly convex ``H`` it identifies the active set in a few steps;
    ``tests/fitting/test_expression.py`` checks it against ``scipy.optimize.lsq_linear``. Started at the
    previous solution of a slowly changing problem (``x0``, e.g. the current weights inside a Gauss–Newton
    loop), the first step already holds the previous active set, so it usually stops after one or two steps.

    Args:
        H: ``(B, P, P)`` symmetric positive definite.
        c: ``(B, P)``.
        lower, upper: ``(P,)`` or ``(B, P)`` bounds (``±inf`` allowed).
        max_iter: Newton steps at most.
        x0: ``(B, P)`` starting point (projected onto the box); default the unconstrained minimiser, projected.
    Returns:
        ``x (B, P)``.
    """
    lower, upper = lower.expand_as(c), upper.expand_as(c)
    x = torch.linalg.solve(H, c[..., None])[..., 0] if x0 is None else x0
    x = torch.maximum(torch.minimum(x, upper), lower)
    steps = c.new_tensor(_STEPS)[None, :, None]  # (1, S, 1)
    act = torch.arange(c.shape[0], device=c.device)  # problems still iterating
    H_a, c_a, lo, hi, x_a = H, c, lower, upper, x
    newton = held_prev = None  # per active problem: was the last step an unclipped Newton step, and what it held

    def objective(z: Tensor) -> Tensor:  # (B, S, P) -> (B, S)
        return 0.5 * ((z @ H_a) * z).sum(-1) - (z * c_a[:, None]).sum(-1)

    for _ in range(max_iter):
        g = (H_a @ x_a[..., None])[..., 0] - c_a
        held = ((x_a <= lo) & (g > 0)) | ((x_a >= hi) & (g < 0))
        # KKT point: the free coordinates are optimal (solved exactly by the last, unclipped step) and the
        # held ones push outwards; such problems stop, the others take a step
        if newton is not None:
            go = ~(newton & ~(held_prev & ~held).any(1))
            if not bool(go.all()):
                act, H_a, c_a, lo, hi, x_a, g, held = (v[go] for v in (act, H_a, c_a, lo, hi, x_a, g, held))
                if not act.numel():
                    break
        d = _masked_solve(H_a, g, ~held)
        go = (d.abs() > 1e-12 * (1 + x_a.abs())).any(1)  # a zero step: KKT point
        if not bool(go.all()):
            act, H_a, c_a, lo, hi, x_a, d, held = (v[go] for v in (act, H_a, c_a, lo, hi, x_a, d, held))
            if not act.numel():
                break
        cand = x_a[:, None] + steps * d[:, None]  # (B, S, P)
        cand = torch.maximum(torch.minimum(cand, hi[:, None]), lo[:, None])
        f = objective(cand)
        best = f.argmin(1)
        x_new = cand[torch.arange(act.numel(), device=c.device), best]
        better = f.gather(1, best[:, None])[:, 0] < objective(x_a[:, None])[:, 0]
        newton = better & (best == 0) & (cand[:, 0] == x_a + d).all(1)
        x_a = torch.where(better[:, None], x_new, x_a)
        x[act] = x_a
        if not bool(better.all()):  # no decrease: converged to rounding
            act, H_a, c_a, lo, hi, x_a, newton, held = (v[better] for v in (act, H_a, c_a, lo, hi, x_a, newton, held))
            if not act.numel():
                break
        held_prev = held
    return x
