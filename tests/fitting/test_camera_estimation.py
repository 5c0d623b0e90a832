"""Scaled-orthographic camera estimation: exact recovery, weights, and the Gauss–Newton refinement
against scipy's least_squares on the same objective."""
import numpy as np
import torch
from scipy.optimize import least_squares

from morphable.fitting.camera_estimation import (estimate_scaled_orthographic, project_scaled_orthographic,
                                                 refine_scaled_orthographic, to_camera)
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from tests.fitting._synthetic import angle_error_deg, camera

D = torch.float64


def scene(B=4, N=30, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, N, 3, generator=g, dtype=D) * torch.tensor([60.0, 80.0, 40.0], dtype=D)
    ypr = (torch.rand(B, 3, generator=g, dtype=D) * 2 - 1) * torch.tensor([60.0, 30.0, 30.0], dtype=D)
    cam = camera(ypr, scale=1.7, translation=(300.0, 200.0))
    x = cam.project(X) + noise * torch.randn(B, N, 2, generator=g, dtype=D)
    return X, x, cam


def test_linear_estimate_is_exact_without_noise():
    X, x, cam = scene()
    s, R, t = estimate_scaled_orthographic(X, x)
    torch.testing.assert_close(s, cam.scale)
    torch.testing.assert_close(R, cam.rotation_matrix)
    torch.testing.assert_close(t, cam.translation)
    torch.testing.assert_close(project_scaled_orthographic(X, s, R, t), x)
    torch.testing.assert_close(to_camera(s, R, t).project(X), x)


def test_zero_weight_points_are_ignored():
    X, x, cam = scene(N=12)
    w = torch.ones(X.shape[:2], dtype=D)
    w[:, :4] = 0
    x = x.clone()
    x[:, :4] = 1e4  # garbage where the weight is zero
    s, R, t = estimate_scaled_orthographic(X, x, w)
    torch.testing.assert_close(R, cam.rotation_matrix)
    s, R, t = refine_scaled_orthographic(X, x, w, s, R * 1.0, t, steps=2)
    torch.testing.assert_close(R, cam.rotation_matrix)
    torch.testing.assert_close(s, cam.scale)


def test_refinement_matches_scipy_least_squares():
    X, x, cam = scene(B=3, N=25, seed=1, noise=2.0)
    w = torch.ones(X.shape[:2], dtype=D)
    s0, R0, t0 = estimate_scaled_orthographic(X, x, w)
    s, R, t = refine_scaled_orthographic(X, x, w, s0, R0, t0, steps=6)
    for b in range(3):
        def residual(p):
            Rb = axis_angle_to_matrix(torch.tensor(p[:3]))[None]
            proj = project_scaled_orthographic(X[b:b + 1], torch.tensor([np.exp(p[3])]), Rb, torch.tensor(p[None, 4:]))
            return (proj - x[b:b + 1]).flatten().numpy()

        p0 = np.concatenate([matrix_to_axis_angle(R0[b]).numpy(), [np.log(s0[b].item())], t0[b].numpy()])
        ref = least_squares(residual, p0, xtol=1e-14, ftol=1e-14, gtol=1e-14)
        ours = np.concatenate([matrix_to_axis_angle(R[b]).numpy(), [np.log(s[b].item())], t[b].numpy()])
        np.testing.assert_allclose(ours, ref.x, atol=1e-7)
        # and it improves on the linear (algebraic) estimate
        assert (residual(ours) ** 2).sum() < (residual(p0) ** 2).sum()


def test_noisy_pose_close_to_truth():
    X, x, cam = scene(B=8, N=60, seed=2, noise=0.5)
    w = torch.ones(X.shape[:2], dtype=D)
    s, R, t = refine_scaled_orthographic(X, x, w, *estimate_scaled_orthographic(X, x, w))
    assert angle_error_deg(R, cam.rotation_matrix).max() < 0.5
    torch.testing.assert_close(s, cam.scale, rtol=1e-2, atol=0)


def test_batch_equals_single():
    X, x, _ = scene(B=3, seed=3, noise=1.0)
    w = torch.ones(X.shape[:2], dtype=D)
    batch = refine_scaled_orthographic(X, x, w, *estimate_scaled_orthographic(X, x, w))
    for b in range(3):
        one = refine_scaled_orthographic(X[b:b + 1], x[b:b + 1], w[b:b + 1],
                                         *estimate_scaled_orthographic(X[b:b + 1], x[b:b + 1], w[b:b + 1]))
        for a, o in zip(batch, one):
            torch.testing.assert_close(a[b:b + 1], o)
