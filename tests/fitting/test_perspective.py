"""Perspective refinement: analytic Jacobian vs autograd, exact recovery of a pinhole camera."""
import torch

from morphable.fitting.landmarks import fit_landmarks
from morphable.fitting.perspective import PerspectiveFit, perspective_residuals, refine_perspective
from morphable.geometry.camera import Perspective
from morphable.geometry.rotation import axis_angle_to_matrix
from tests.fitting._synthetic import angle_error_deg, camera, face_model, random_instances

D = torch.float64


def test_jacobian_matches_autograd():
    g = torch.Generator().manual_seed(0)
    B, N, P = 2, 6, 4
    R0 = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=D) * 0.3)
    t0 = torch.tensor([[5.0, -3.0, -400.0], [0.0, 8.0, -600.0]], dtype=D)
    coeffs0 = torch.randn(B, P, generator=g, dtype=D)
    mean = torch.randn(B, N, 3, generator=g, dtype=D) * 50
    basis = torch.randn(B, N, 3, P, generator=g, dtype=D) * 3
    f0, pp = torch.tensor([800.0, 900.0], dtype=D), torch.tensor([[320.0, 240.0], [300.0, 200.0]], dtype=D)
    y = torch.randn(B, N, 2, generator=g, dtype=D) * 30 + 250
    w = torch.rand(B, N, generator=g, dtype=D)
    s, prior_sqrt = torch.tensor([2.0, 1.5], dtype=D), torch.rand(P, generator=g, dtype=D) + 0.5
    log_f0 = torch.tensor([0.1, -0.2], dtype=D)

    prior_mean = torch.randn(B, P, generator=g, dtype=D)

    r, J, proj = perspective_residuals(R0, t0, log_f0, coeffs0, mean, basis, f0, pp, y, w, s, 1.5, prior_sqrt,
                                       prior_mean)
    torch.testing.assert_close(r[:, 2 * N:], prior_sqrt * (coeffs0 - prior_mean))
    cam = Perspective(f0 * torch.exp(log_f0), pp, torch.zeros(B, 3, dtype=D), t0)
    X = mean + (basis @ coeffs0[:, None, :, None])[..., 0]
    torch.testing.assert_close(proj, cam.project(X @ R0.transpose(1, 2)))
    for b in range(B):
        def residual(step):
            Rb = axis_angle_to_matrix(step[:3])[None] @ R0[b:b + 1]
            return perspective_residuals(Rb, t0[b:b + 1] + step[3:6], log_f0[b:b + 1] + step[6],
                                         coeffs0[b:b + 1] + step[7:], mean[b:b + 1], basis[b:b + 1], f0[b:b + 1],
                                         pp[b:b + 1], y[b:b + 1], w[b:b + 1], s[b:b + 1], 1.5, prior_sqrt,
                                         prior_mean[b:b + 1])[0][0]

        J_ref = torch.autograd.functional.jacobian(residual, torch.zeros(7 + P, dtype=D))
        torch.testing.assert_close(J[b], J_ref, rtol=1e-8, atol=1e-10)


def scene(B=3, seed=0, focal=800.0):
    model = face_model()
    alpha, beta, ypr = random_instances(model, B, seed)
    rot = camera(ypr).rotation
    cam = Perspective(torch.full((B,), focal, dtype=D), torch.tensor([[319.5, 239.5]], dtype=D).expand(B, 2), rot,
                      torch.tensor([[10.0, -5.0, -400.0]], dtype=D).expand(B, 3))
    lm = cam.project(model.landmarks(model(alpha, beta).vertices))
    return model, lm, alpha, beta, cam


def test_recovers_a_close_up_pinhole_camera():
    model, lm, alpha, beta, cam = scene()
    fit = fit_landmarks(model, lm, contour=False, sigma_mm=0.01)
    assert fit.rms_px.min() > 0.3  # the orthographic camera cannot explain a face 40 cm from the lens
    ref = refine_perspective(model, fit, lm, (480, 640), focal=800.0, sigma_mm=0.01, iterations=15)
    assert isinstance(ref, PerspectiveFit)
    assert ref.rms_px.max() < 0.01
    assert angle_error_deg(ref.camera.rotation_matrix, cam.rotation_matrix).max() < 0.01
    torch.testing.assert_close(ref.camera.translation, cam.translation, atol=0.05, rtol=0)
    torch.testing.assert_close(ref.expression, beta, atol=0.01, rtol=0)
    torch.testing.assert_close(ref.camera.project(model.landmarks(ref.vertices)), ref.landmarks_fitted)


def test_focal_length_can_be_fitted():
    model, lm, _, _, cam = scene(seed=1)
    fit = fit_landmarks(model, lm, contour=False, sigma_mm=0.01)
    ref = refine_perspective(model, fit, lm, (480, 640), optimise_focal=True, sigma_mm=0.01, iterations=30)
    torch.testing.assert_close(ref.camera.focal, cam.focal, rtol=0.01, atol=0)


def test_default_focal_and_contours_improve_on_the_linear_fit():
    model, lm, *_ = scene(seed=2, focal=700.0)
    lm = lm + 0.3 * torch.randn(lm.shape, generator=torch.Generator().manual_seed(3), dtype=D)
    lm[:, :17] = float("nan")  # the synthetic model's "jawline" rows are random vertices, not an outline
    fit = fit_landmarks(model, lm.float())
    assert fit.contour_fitted
    ref = refine_perspective(model, fit, lm.float(), (480, 640))
    assert ref.landmarks_fitted.dtype == torch.float32
    assert (ref.rms_px < fit.rms_px).all()
    assert torch.isfinite(ref.landmarks_fitted).all()
    assert (fit.landmark_ids[:, :17] == -1).all()


def test_identity_prior_mean_is_the_refinements_prior_centre():
    """With the prior centred at ``mu`` (as the regressor's fit is), a strong prior holds the identity at ``mu``,
    not at 0; a weak one still recovers the true identity, so the data term is unchanged."""
    model, lm, alpha, _, _ = scene(seed=4)
    mu = alpha + 0.5 * torch.randn(alpha.shape, generator=torch.Generator().manual_seed(5), dtype=D)
    fit = fit_landmarks(model, lm, contour=False, identity_prior_mean=mu, lambda_identity=1e8)
    strong = refine_perspective(model, fit, lm, (480, 640), focal=800.0, iterations=15,
                                identity_prior_mean=mu, lambda_identity=1e8)
    torch.testing.assert_close(strong.identity, mu, atol=1e-4, rtol=0)
    zero = refine_perspective(model, fit, lm, (480, 640), focal=800.0, iterations=15, lambda_identity=1e8)
    assert zero.identity.abs().max() < 1e-3 < (mu - alpha).abs().max()
    weak = refine_perspective(model, fit, lm, (480, 640), focal=800.0, sigma_mm=0.01, iterations=30,
                              identity_prior_mean=mu, lambda_identity=1e-6)
    torch.testing.assert_close(weak.identity, alpha, atol=0.02, rtol=0)
