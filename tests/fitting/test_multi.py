"""Multi-photo fitting: one identity from several posed, noisy views of the same face."""
import torch

from morphable.fitting.landmarks import fit_landmarks
from morphable.fitting.multi import fit_landmarks_multi
from tests.fitting._synthetic import angle_error_deg, camera, face_model, random_instances

D = torch.float64


def views(noise, seed=0, N=4):
    model = face_model()
    alpha, beta, ypr = random_instances(model, N, seed)
    alpha = alpha[:1].expand(N, -1)  # one person, N poses and expressions
    cam = camera(ypr)
    g = torch.Generator().manual_seed(seed + 1)
    lm = cam.project(model.landmarks(model(alpha, beta).vertices)) + noise * torch.randn(N, 68, 2, generator=g, dtype=D)
    return model, lm, alpha, beta, cam


def test_noise_free_recovery():
    model, lm, alpha, beta, cam = views(0.0)
    fit = fit_landmarks_multi(model, lm, contour=False, sigma_mm=0.01, iterations=20)
    torch.testing.assert_close(fit.identity, alpha, atol=0.05, rtol=0)
    torch.testing.assert_close(fit.expression, beta, atol=0.01, rtol=0)
    assert angle_error_deg(fit.camera.rotation_matrix, cam.rotation_matrix).max() < 0.01
    assert fit.rms_px.max() < 0.01


def test_shared_identity_beats_single_photo_fits():
    model, lm, alpha, beta, cam = views(1.0, seed=3)
    multi = fit_landmarks_multi(model, lm, contour=False)
    single = fit_landmarks(model, lm, contour=False)
    assert (multi.identity == multi.identity[:1]).all()  # identical rows
    err_multi = (multi.identity[0] - alpha[0]).norm()
    err_single = (single.identity - alpha).norm(dim=1)
    assert err_multi < err_single.mean()
    # four photos constrain the identity more than one: smaller posterior covariance
    assert torch.linalg.det(multi.identity_covariance[0]) < torch.linalg.det(single.identity_covariance).min()
    torch.testing.assert_close(multi.identity_covariance[0], multi.identity_covariance[-1])
    assert multi.rms_px.max() < 2.0
    assert angle_error_deg(multi.camera.rotation_matrix, cam.rotation_matrix).max() < 2.0


def test_contour_and_outputs():
    model, lm, *_ = views(0.5, seed=5, N=3)
    fit = fit_landmarks_multi(model, lm)
    assert fit.vertices.shape == (3, model.n_vertices, 3)
    assert fit.landmarks_fitted.shape == (3, 68, 2) and torch.isfinite(fit.landmarks_fitted).all()
    assert fit.vertex_uncertainty.shape == (3, model.n_vertices)
