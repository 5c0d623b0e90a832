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
    return -torch.cholesky_solve((g * f)[..., None], torch.linalg.cholesky_ex(H_ff)[0])[..., 0]


_STEPS = tuple(0.5**k for k in range(12))  # backtracking step lengths, tried all at once


def box_qp(H: Tensor, c: Tensor, lower: Tensor, upper: Tensor, max_iter: int = 30, x0: Tensor | None = None) -> Tensor:
    """Solve ``min ½ xᵀHx − cᵀx`` s.t. ``lower ≤ x ≤ upper`` for a batch of small dense problems.

    Primal–dual active set method (Hintermüller, Ito & Kunisch, "The primal-dual active set strategy as a
    semismooth Newton method", SIAM J. Optim. 2002): with the gradient ``g = Hx − c``, a coordinate is
    held at its lower (upper) bound when the diagonal Newton point ``x − g / H_ii`` lies below (above) it;
    the others are solved for exactly with the held ones fixed (one Cholesky factorisation); repeat until
    the held sets no longer change, which is then the KKT point. Each problem stops on its own. Started
    at the solution of a slowly changing problem (``x0``, e.g. the current weights inside a Gauss–Newton
    loop) it usually needs one or two solves. Problems whose sets have not settled within ``max_iter``
    steps (the method can cycle on problems far from diagonal dominance) are finished by the monotone
    projected Newton method (:func:`projected_newton`). ``tests/fitting/test_expression.py`` checks
    both against ``scipy.optimize.lsq_linear``.

    Args:
        H: ``(B, P, P)`` symmetric positive definite.
        c: ``(B, P)``.
        lower, upper: ``(P,)`` or ``(B, P)`` bounds (``±inf`` allowed).
        max_iter: active-set steps at most.
        x0: ``(B, P)`` starting point; default the unconstrained minimiser.
    Returns:
        ``x (B, P)``.
    """
    lower, upper = lower.expand_as(c), upper.expand_as(c)
    x = torch.linalg.solve(H, c[..., None])[..., 0] if x0 is None else x0.clone()
    act = torch.arange(c.shape[0], device=c.device)  # problems still iterating
    H_a, c_a, lo, hi, x_a = H, c, lower, upper, x
    diag = H.diagonal(dim1=1, dim2=2)
    at_lo = at_hi = None
    for _ in range(max_iter):
        newton = x_a - ((H_a @ x_a[..., None])[..., 0] - c_a) / diag
        new_lo, new_hi = newton < lo, newton > hi
        if at_lo is not None:
            go = (new_lo != at_lo).any(1) | (new_hi != at_hi).any(1)  # settled sets: KKT point
            if not bool(go.all()):
                act, H_a, c_a, lo, hi, diag, new_lo, new_hi = (v[go] for v in (act, H_a, c_a, lo, hi, diag, new_lo, new_hi))
                if not act.numel():
                    return x
        at_lo, at_hi = new_lo, new_hi
        fixed = torch.where(at_lo, lo, torch.where(at_hi, hi, torch.zeros_like(lo)))
        free = ~(at_lo | at_hi)
        x_a = fixed + _masked_solve(H_a, (H_a @ fixed[..., None])[..., 0] - c_a, free)
        x[act] = x_a
    x[act] = projected_newton(H[act], c[act], lower[act], upper[act], x_a)  # sets still changing
    return x


def projected_newton(H: Tensor, c: Tensor, lower: Tensor, upper: Tensor, x0: Tensor, max_iter: int = 30) -> Tensor:
    """:func:`box_qp` by the projected Newton method, monotone in the objective (``x0`` is projected first).

    Bertsekas, "Projected Newton methods for optimization problems with simple constraints", SIAM J.
    Control Optim. 1982: coordinates at a bound whose gradient points outwards are held; the others take
    a Newton step; the step is projected onto the box and shortened (``1, ½, ¼, …``, all evaluated at
    once for the whole batch) to the lowest objective, so the objective never increases.
    """
    lower, upper = lower.expand_as(c), upper.expand_as(c)
    x = torch.maximum(torch.minimum(x0, upper), lower)
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
