"""Closed-form regularised shape (and expression) fit to landmarks under a known affine camera.

Aldrian & Smith, "Inverse Rendering of Faces with a 3D Morphable Model", PAMI 2013, Sec. 3 (eos's
``fit_shape_to_landmarks_linear``): with the camera fixed, projected model points are linear in the
coefficients, ``p_i = s F Π R (m_i + B_i x) + t`` (``F = diag(1, −1)`` flips y into the image, ``Π`` drops
z), so the MAP estimate under a Gaussian landmark noise and the N(0, I) prior of standardised
coefficients is a linear least-squares problem:

    min_x  Σ_i w_i ‖(y_i − b_i)/s − A_i x‖² / σ²  +  Σ_k λ_k (x_k − μ_k)²,   A_i = F Π R B_i  (2×P),
                                                                     b_i = s F Π R m_i + t.

(``μ = 0`` is the model's prior; a regressor's prediction can centre it instead.) Residuals are divided by the scale ``s`` (px/mm), so ``σ`` is the landmark noise in **millimetres on
the face** and the result does not depend on the image resolution (eos uses a fixed σ² = 3 px²).
Blendshape weights add box constraints (solved by :func:`~morphable.fitting.expression.box_qp`).
The Hessian ``H = Σ w AᵀA/σ² + diag(λ)`` is the posterior precision (Gaussian, unconstrained).
"""
from __future__ import annotations

import torch
from torch import Tensor

from morphable.fitting.expression import box_qp


def normal_equations(points_mean: Tensor, points_basis: Tensor, landmarks: Tensor, weights: Tensor, scale: Tensor,
                     R: Tensor, t: Tensor, sigma_mm: float, prior_precision: Tensor,
                     prior_mean: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``H (B, P, P)`` and ``c (B, P)`` of the fit above.

    Args:
        points_mean: ``(B, N, 3)`` model points with coefficients zero (mm).
        points_basis: ``(B, N, 3, P)`` or ``(N, 3, P)`` basis rows of the same points.
        landmarks: ``(B, N, 2)`` px (finite; missing rows have weight 0).
        weights: ``(B, N)``.
        scale, R, t: camera ``(B,)``, ``(B, 3, 3)``, ``(B, 2)``.
        sigma_mm: landmark noise σ (mm).
        prior_precision: ``(P,)`` λ_k.
        prior_mean: ``(B, P)`` centre μ of the prior, ``Σ_k λ_k (x_k − μ_k)²`` (default 0: the model's N(0, I)),
            e.g. the identity a regressor predicted.
    """
    FR = R[:, :2] * R.new_tensor([1.0, -1.0])[None, :, None]  # (B, 2, 3) = F Π R
    A = (FR[:, None] @ points_basis).flatten(1, 2)  # (B, 2N, P): A[b, 2n+i] = Σ_j FR[b,i,j] B[n,j,:]
    b = scale[:, None, None] * (points_mean @ FR.transpose(1, 2)) + t[:, None]
    r = ((landmarks - b) / scale[:, None, None]).flatten(1)  # (B, 2N) mm
    wA = A * (weights.repeat_interleave(2, dim=1) / sigma_mm**2)[..., None]
    H = wA.transpose(1, 2) @ A + torch.diag_embed(prior_precision.expand(A.shape[0], -1))
    c = (wA.transpose(1, 2) @ r[..., None])[..., 0]
    if prior_mean is not None:
        c = c + prior_precision * prior_mean
    return H, c


def joint_normal_equations(points_mean: Tensor, points_basis: Tensor, coeffs: Tensor, landmarks: Tensor,
                           weights: Tensor, scale: Tensor, R: Tensor, t: Tensor, sigma_mm: float,
                           prior_precision: Tensor, prior_mean: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Gauss–Newton system for camera *and* coefficients together, ``H δ = g``.

    The same objective as :func:`normal_equations`, linearised at the current ``(R, s, t, x)`` in all
    of them: ``δ = (ω, log-scale, t (px), Δx)`` with ``R ← exp([ω]_×) R``; the camera columns of the
    Jacobian are ``−F Π [R X]_×`` (rotation), ``F Π R X`` (log scale) and ``I/s`` (translation), in mm.
    Alternating camera and shape fits (eos) converges slowly along directions where a rotation and a
    shape change explain the landmarks equally well; the joint step does not.

    Returns:
        ``H (B, 6+P, 6+P)`` (its inverse is the Gaussian posterior covariance of all parameters) and
        ``g (B, 6+P)`` (minus the gradient).
    """
    X = points_mean + (points_basis @ coeffs[:, None, :, None])[..., 0]  # (B, N, 3) model space
    Xv = X @ R.transpose(1, 2)
    x, y, z = Xv.unbind(-1)
    zero, inv_s = torch.zeros_like(x), (1 / scale)[:, None].expand_as(x)
    J_cam = torch.stack([zero, z, -y, x, inv_s, zero, z, zero, -x, -y, zero, inv_s], -1).reshape(*x.shape, 2, 6)
    FR = R[:, :2] * R.new_tensor([1.0, -1.0])[None, :, None]
    J_x = FR[:, None] @ points_basis  # (B, N, 2, P)
    J = torch.cat([J_cam, J_x.expand(x.shape[0], -1, -1, -1)], dim=-1).flatten(1, 2)  # (B, 2N, 6+P)
    proj = torch.stack([x, -y], -1) * scale[:, None, None] + t[:, None]
    r = ((landmarks - proj) / scale[:, None, None]).flatten(1)[..., None]  # (B, 2N, 1) mm
    wJ = J * (weights.repeat_interleave(2, dim=1) / sigma_mm**2)[..., None]
    prior = torch.cat([prior_precision.new_full((6,), 1e-9), prior_precision])
    H = wJ.transpose(1, 2) @ J + torch.diag_embed(prior.expand(J.shape[0], -1))
    g = (wJ.transpose(1, 2) @ r)[..., 0]
    g[:, 6:] -= prior_precision * (coeffs if prior_mean is None else coeffs - prior_mean)
    return H, g


def solve_coefficients(H: Tensor, c: Tensor, lower: Tensor, upper: Tensor, x0: Tensor | None = None) -> Tensor:
    """MAP coefficients ``(B, P)``: ``H⁻¹ c`` when unbounded, else the box-constrained minimiser.

    See :func:`solve_factored` (which also returns the Cholesky factor); ``x0`` warm-starts the bounded part.
    """
    return solve_factored(H, c, lower, upper, x0)[0]


def solve_factored(H: Tensor, c: Tensor, lower: Tensor, upper: Tensor,
                   x0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Minimise ``½ xᵀHx − cᵀx`` s.t. ``lower ≤ x ≤ upper`` with one Cholesky factorisation of ``H``.

    The unbounded coordinates ``a`` (identity, camera) are eliminated exactly: with the bounded ones ``b``
    ordered last, ``H = L Lᵀ``, ``L = [[L_a, 0], [L_ba, L_b]]`` and ``z = L⁻¹ c``, the Schur complement is
    ``H_bb − H_ba H_aa⁻¹ H_ab = L_b L_bᵀ`` and the reduced right-hand side ``L_b z_b``, so
    :func:`~morphable.fitting.expression.box_qp` sees only the expression's size; then
    ``x_a = L_a⁻ᵀ (z_a − L_baᵀ x_b)``.

    Args:
        H: ``(B, P, P)`` symmetric positive definite.
        c: ``(B, P)``.
        lower, upper: ``(P,)`` or ``(B, P)`` bounds (``±inf`` for unbounded coordinates).
        x0: ``(B, P)`` warm start for the bounded coordinates (default: none).
    Returns:
        ``x (B, P)`` and ``L (B, P, P)``, the Cholesky factor of ``H`` with its coordinates reordered
        unbounded first (``H`` itself when the bounded coordinates already come last, as in every fit here).
    """
    bounded = (torch.isfinite(lower) | torch.isfinite(upper)).reshape(-1, c.shape[-1]).any(0)  # (P,)
    n_a = int(bounded.numel() - bounded.sum())
    lo, hi = lower.expand_as(c), upper.expand_as(c)
    if n_a == c.shape[-1] or bool(bounded[n_a:].all()):
        return solve_trailing(H, c, n_a, lo[:, n_a:], hi[:, n_a:], None if x0 is None else x0[:, n_a:])
    order = torch.cat([torch.nonzero(~bounded).squeeze(1), torch.nonzero(bounded).squeeze(1)])  # bounded last
    x, L = solve_trailing(H[:, order][:, :, order], c[:, order], n_a, lo[:, order[n_a:]], hi[:, order[n_a:]],
                          None if x0 is None else x0[:, order[n_a:]])
    return torch.empty_like(x).index_copy_(1, order, x), L


def solve_trailing(H: Tensor, c: Tensor, n_free: int, lower: Tensor, upper: Tensor,
                   x0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`solve_factored` when the first ``n_free`` coordinates are unbounded and the others bounded
    by ``lower``/``upper`` ``(B, P − n_free)`` (warm start ``x0`` of the same shape): returns ``x`` and ``L``."""
    L = torch.linalg.cholesky(H)
    if n_free == c.shape[-1]:
        return torch.cholesky_solve(c[..., None], L)[..., 0], L
    z = torch.linalg.solve_triangular(L, c[..., None], upper=False)
    L_b = L[:, n_free:, n_free:]
    xb = box_qp(L_b @ L_b.transpose(1, 2), (L_b @ z[:, n_free:])[..., 0], lower, upper, x0=x0)
    if not n_free:
        return xb, L
    rhs = z[:, :n_free] - L[:, n_free:, :n_free].transpose(1, 2) @ xb[..., None]
    x_a = torch.linalg.solve_triangular(L[:, :n_free, :n_free].transpose(1, 2), rhs, upper=True)[..., 0]
    return torch.cat([x_a, xb], 1), L


def posterior_covariance(H: Tensor, k: int) -> Tensor:
    """Marginal posterior covariance of the first ``k`` coefficients, ``(H⁻¹)[:k, :k]``. ``(B, P, P) -> (B, k, k)``.

    Exact for the unconstrained Gaussian model at the fitted camera and correspondences (bounds on
    blendshape weights are ignored).
    """
    L = torch.linalg.cholesky(H)
    return torch.cholesky_inverse(L)[:, :k, :k]
