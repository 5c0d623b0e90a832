"""Closed-form shape fit: normal equations vs a brute-force stacked least squares, the joint camera +
shape Jacobian vs autograd, the Schur-reduced bounded solve vs the full box QP, posterior covariance."""
import numpy as np
import torch

from morphable.fitting.expression import box_qp
from morphable.fitting.shape import (joint_normal_equations, normal_equations, posterior_covariance,
                                     solve_coefficients, solve_factored)
from morphable.geometry.rotation import axis_angle_to_matrix

D = torch.float64


def setup(B=2, N=15, P=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(B, N, 3, generator=g, dtype=D) * 50
    basis = torch.randn(N, 3, P, generator=g, dtype=D) * 3
    y = torch.randn(B, N, 2, generator=g, dtype=D) * 40 + 200
    w = (torch.rand(B, N, generator=g, dtype=D) > 0.2).to(D)
    s = torch.rand(B, generator=g, dtype=D) + 1
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=D) * 0.4)
    t = torch.randn(B, 2, generator=g, dtype=D) * 10 + 200
    prior = torch.rand(P, generator=g, dtype=D) + 0.5
    return mean, basis, y, w, s, R, t, prior


def test_normal_equations_match_stacked_least_squares():
    mean, basis, y, w, s, R, t, prior = setup()
    sigma = 1.5
    H, c = normal_equations(mean, basis, y, w, s, R, t, sigma, prior)
    x = torch.linalg.solve(H, c)
    for b in range(2):
        rows, rhs = [], []
        for n in range(mean.shape[1]):
            if w[b, n] == 0:
                continue
            for i, sign in ((0, 1.0), (1, -1.0)):  # u = s(RX)_x + t_x, v = −s(RX)_y + t_y
                a = sign * s[b] * (R[b, i] @ basis[n])  # d pixel / d x
                pred0 = sign * s[b] * (R[b, i] @ mean[b, n]) + t[b, i]
                rows.append((a / s[b] / sigma).numpy())
                rhs.append(((y[b, n, i] - pred0) / s[b] / sigma).item())
        A = np.concatenate([np.array(rows), np.diag(np.sqrt(prior.numpy()))])
        r = np.concatenate([rhs, np.zeros(len(prior))])
        ref = np.linalg.lstsq(A, r, rcond=None)[0]
        np.testing.assert_allclose(x[b].numpy(), ref, atol=1e-9)


def test_joint_system_is_gauss_newton():
    """g is minus the gradient of the objective at δ = 0 and H = JᵀWJ + prior, with J from autograd."""
    mean, basis, y, w, s, R, t, prior = setup(B=1, seed=1)
    sigma = 2.0
    x0 = torch.randn(1, basis.shape[-1], dtype=D)
    H, g = joint_normal_equations(mean, basis, x0, y, w, s, R, t, sigma, prior)

    def residuals(delta):  # stacked weighted residuals (mm/σ) and prior terms of the objective
        Rn = axis_angle_to_matrix(delta[:3])[None] @ R
        sn = s * torch.exp(delta[3])
        tn = t + delta[4:6]
        xn = x0 + delta[6:]
        X = mean + (basis @ xn[:, None, :, None])[..., 0]
        Xv = X @ Rn.transpose(1, 2)
        proj = torch.stack([Xv[..., 0], -Xv[..., 1]], -1) * sn[:, None, None] + tn[:, None]
        r = (y - proj) / sn[:, None, None] * w[..., None].sqrt() / sigma
        return torch.cat([r.flatten(), (prior.sqrt() * xn).flatten()])

    delta0 = torch.zeros(6 + basis.shape[-1], dtype=D)
    J = torch.autograd.functional.jacobian(residuals, delta0)
    r0 = residuals(delta0)
    # the residual Jacobian uses the scale at the current point for the mm conversion (Gauss–Newton)
    J_data = J[:-basis.shape[-1]]
    J_data[:, 3] = J_data[:, 3] + r0[:-basis.shape[-1]]  # d(1/s)/dlog s term is left out of the GN model
    H_ref = J_data.T @ J_data + torch.diag(torch.cat([torch.full((6,), 1e-9, dtype=D), prior]))
    torch.testing.assert_close(H[0], H_ref, rtol=1e-9, atol=1e-9)
    grad = J.T @ r0  # ½‖r‖² gradient
    torch.testing.assert_close(g[0, 6:], -grad[6:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g[0, :3], -grad[:3], rtol=1e-9, atol=1e-9)


def test_schur_reduced_bounded_solve_matches_full_box_qp():
    mean, basis, y, w, s, R, t, prior = setup(B=3, P=9, seed=2)
    H, c = normal_equations(mean, basis, y, w, s, R, t, 1.0, prior)
    inf = float("inf")
    lo = torch.tensor([-inf] * 5 + [0.0] * 4, dtype=D)
    hi = torch.tensor([inf] * 5 + [1.0] * 4, dtype=D)
    torch.testing.assert_close(solve_coefficients(H, c, lo, hi), box_qp(H, c, lo, hi), atol=1e-9, rtol=0)
    free = torch.full((9,), inf, dtype=D)
    torch.testing.assert_close(solve_coefficients(H, c, -free, free), torch.linalg.solve(H, c))


def test_posterior_covariance_is_inverse_block():
    mean, basis, y, w, s, R, t, prior = setup(seed=3)
    H, _ = normal_equations(mean, basis, y, w, s, R, t, 1.0, prior)
    torch.testing.assert_close(posterior_covariance(H, 4), torch.linalg.inv(H)[:, :4, :4])


def test_solve_factored_returns_the_factor_and_handles_any_bounded_order():
    mean, basis, y, w, s, R, t, prior = setup(B=3, P=9, seed=4)
    H, c = normal_equations(mean, basis, y, w, s, R, t, 1.0, prior)
    inf = float("inf")
    lo = torch.tensor([0.0, -inf, -inf, 0.0, -inf, -inf, 0.0, -inf, 0.0], dtype=D)  # bounded coordinates interleaved
    hi = torch.where(torch.isfinite(lo), torch.tensor(0.2, dtype=D), torch.tensor(inf, dtype=D))
    x, L = solve_factored(H, c, lo, hi)
    torch.testing.assert_close(x, box_qp(H, c, lo, hi), atol=1e-9, rtol=0)
    order = torch.tensor([1, 2, 4, 5, 7, 0, 3, 6, 8])  # unbounded first
    torch.testing.assert_close(L @ L.transpose(1, 2), H[:, order][:, :, order])
    assert ((x[:, [0, 3, 6, 8]] == 0) | (x[:, [0, 3, 6, 8]] == 0.2)).any()
