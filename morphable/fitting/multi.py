"""Several photos of one person: one identity, a camera and an expression per photo.

The seeds' "siamese multi-view fitting" and eos's multi-image fitting: the identity coefficients are
shared, so every photo constrains the same face, while pose and expression stay per photo. Each
iteration alternates (i) per photo, the jawline correspondences and one Gauss–Newton step in its camera
and expression with the identity held (bounded for blendshapes), and (ii) one Gauss–Newton step of the
shared identity and all cameras together, the cameras eliminated photo by photo (Schur complement).
The identity covariance marginalises every photo's camera and expression (Schur complement of the
summed information).
"""
from __future__ import annotations

import torch
from torch import Tensor

from morphable.fitting.landmarks import (SIGMA_MM, LandmarkFit, _finish, _initial_state, _ordinary, _Problem, _State,
                                        check_landmarks, fit_terms)
from morphable.fitting.shape import posterior_covariance, solve_coefficients
from morphable.geometry.rotation import axis_angle_to_matrix
from morphable.models.base import MorphableModel


def _local_step(problem: _Problem, state: _State) -> None:
    """Camera and expression of each photo, identity held."""
    H, g = problem.system(state)
    K = problem.K
    local = torch.cat([torch.arange(6), torch.arange(6 + K, H.shape[-1])]).to(H.device)
    H_l, g_l = H[:, local][:, :, local], g[:, local]
    inf = g.new_full((6,), float("inf"))
    exp = state.coeffs[:, K:]
    lo = torch.cat([-inf.expand(g.shape[0], -1), problem.lower[K:] - exp], 1)
    hi = torch.cat([inf.expand(g.shape[0], -1), problem.upper[K:] - exp], 1)
    delta = solve_coefficients(H_l, g_l, lo, hi, x0=torch.zeros_like(g_l))  # start at the current weights
    state.R = axis_angle_to_matrix(delta[:, :3]) @ state.R
    state.scale = state.scale * torch.exp(delta[:, 3])
    state.t = state.t + delta[:, 4:6]
    coeffs = state.coeffs.clone()
    coeffs[:, K:] = torch.maximum(torch.minimum(exp + delta[:, 6:], problem.upper[K:]), problem.lower[K:])
    state.coeffs = coeffs


def _shared_identity_step(problem: _Problem, state: _State) -> Tensor:
    """One Gauss–Newton step of the shared identity *and* every photo's camera (expressions held).

    The cameras are eliminated per photo (6×6 Schur complements), the reduced identity system is summed
    over photos and solved, and each camera is back-substituted — exact for the camera–identity
    coupling that makes plain alternation slow. Returns the identity information with every photo's
    camera and expression marginalised, ``(K, K)``.
    """
    H, g = problem.system(state)
    K = problem.K
    cam, ids = slice(0, 6), slice(6, 6 + K)
    prior = torch.diag(problem.prior[:K])
    x = state.coeffs[0, :K]
    H_cc, H_ci, H_ii = H[:, cam, cam], H[:, cam, ids], H[:, ids, ids] - prior  # each photo: data terms only
    g_c, g_i = g[:, cam], g[:, ids] + x @ prior
    sol = torch.linalg.solve(H_cc, torch.cat([H_ci, g_c[..., None]], dim=2))  # H_cc⁻¹ [H_ci, g_c]
    H_red = (H_ii - H_ci.transpose(1, 2) @ sol[..., :-1]).sum(0) + prior
    g_red = (g_i - (H_ci.transpose(1, 2) @ sol[..., -1:])[..., 0]).sum(0) - x @ prior
    delta = torch.linalg.solve(H_red, g_red)  # (K,)
    d_cam = sol[..., -1] - (sol[..., :-1] @ delta)  # (N, 6) back-substitution
    state.R = axis_angle_to_matrix(d_cam[:, :3]) @ state.R
    state.scale = state.scale * torch.exp(d_cam[:, 3])
    state.t = state.t + d_cam[:, 4:6]
    coeffs = state.coeffs.clone()
    coeffs[:, :K] = x + delta
    state.coeffs = coeffs
    local = torch.cat([torch.arange(6), torch.arange(6 + K, H.shape[-1])]).to(H.device)
    H_ll = H[:, local][:, :, local]
    H_il = H[:, ids][:, :, local]
    return (H_ii - H_il @ torch.linalg.solve(H_ll, H_il.transpose(1, 2))).sum(0) + prior


def fit_landmarks_multi(model: MorphableModel, landmarks: Tensor, *, iterations: int = 5, contour: bool = True,
                        identity_components: int | None = None, expression: bool = True,
                        lambda_identity: float = 1.0, lambda_expression: float = 1.0,
                        sigma_mm: float = SIGMA_MM) -> LandmarkFit:
    """Fit one identity to ``N`` photos of the same person.

    Args:
        landmarks: ``(N, 68, 2)`` pixels, one row per photo (nan = missing).
        other arguments: as :func:`~morphable.fitting.landmarks.fit_landmarks`.
    Returns:
        :class:`LandmarkFit` with batch ``N``: ``identity`` has ``N`` identical rows (so that row ``i``
        with camera ``i`` and expression ``i`` gives photo ``i``'s mesh), ``identity_covariance`` is the
        shared posterior covariance repeated.
    """
    check_landmarks(landmarks)
    out_dtype = landmarks.dtype if landmarks.is_floating_point() else torch.float32
    problem = _Problem(fit_terms(model), landmarks.to(model.mean.device), contour=contour,
                       identity_components=identity_components, expression=expression,
                       lambda_identity=lambda_identity, lambda_expression=lambda_expression, sigma_mm=sigma_mm)
    with torch.inference_mode():  # no autograd bookkeeping in the many small steps
        state = _initial_state(problem)
        problem.solve_shape(state)
        coeffs = state.coeffs.clone()
        coeffs[:, :problem.K] = state.coeffs[:, :problem.K].mean(0)
        state.coeffs = coeffs
        info = None
        for _ in range(iterations):
            if problem.use_contour:
                problem.update_contour(state)
            _local_step(problem, state)
            info = _shared_identity_step(problem, state)
        if info is None:
            info = _shared_identity_step(problem, state)
        if problem.use_contour:
            problem.update_contour(state)
        cov = posterior_covariance(info[None], problem.K).expand(landmarks.shape[0], -1, -1)
    return _finish(model, problem, _ordinary(state), cov.clone(), out_dtype)
