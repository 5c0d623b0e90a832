"""Non-linear refinement of a landmark fit with a pinhole (:class:`Perspective`) camera.

The linear fit assumes a scaled orthographic camera, which is exact only for faces far from the lens;
close-up photos show perspective (the nose looks bigger, the ears recede). This step starts from a
:class:`~morphable.fitting.landmarks.LandmarkFit` — its correspondences (jawline included), coefficients
and pose, with the face placed at the distance where the orthographic scale matches,
``d = f / s`` — and minimises the same MAP objective with perspective projection by Levenberg–Marquardt
(analytic Jacobians, batched; blendshape weights projected back onto [0, 1] after each step):

    Σ_i w_i ‖(y_i − π(R X_i(x) + t)) / s‖² / σ²  +  Σ_k λ_k x_k²

with ``s`` the orthographic scale of the initial fit (so σ stays in millimetres on the face).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from morphable.fitting.contour import CONTOUR_IDS
from morphable.fitting.landmarks import SIGMA_MM, LandmarkFit, _Problem, _State, check_landmarks, fit_terms
from morphable.geometry.camera import Perspective
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from morphable.models.base import MorphableModel


@dataclass(frozen=True)
class PerspectiveFit:
    """Result of :func:`refine_perspective`.

    Attributes:
        identity: ``(B, K)``; expression: ``(B, Ke)`` (as in :class:`LandmarkFit`).
        camera: :class:`Perspective` with batch ``B`` (focal and principal point in pixels, mm translation).
        vertices: ``(B, V, 3)`` mm, model space.
        landmarks_fitted: ``(B, 68, 2)`` px (nan where the model defines no point).
        rms_px: ``(B,)`` reprojection RMS over the used landmarks.
    """

    identity: Tensor
    expression: Tensor
    camera: Perspective
    vertices: Tensor
    landmarks_fitted: Tensor
    rms_px: Tensor


def perspective_residuals(R: Tensor, t: Tensor, log_focal: Tensor, coeffs: Tensor, mean: Tensor, basis: Tensor,
                          focal0: Tensor, pp: Tensor, landmarks: Tensor, weights: Tensor, scale: Tensor,
                          sigma_mm: float, prior_sqrt: Tensor,
                          prior_mean: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Residuals of the objective and their Jacobian (analytic), batched.

    Parameters of the step: ``(ω (3), t (3), log f (1), x (P))`` with ``R ← exp([ω]_×) R``. With
    ``X_c = R X + t`` and depth ``d = −X_c,z``: ``∂u/∂X_c = f (1/d, 0, X_c,x/d²)``,
    ``∂v/∂X_c = −f (0, 1/d, X_c,y/d²)``, ``∂X_c/∂ω = −[R X]_×``, ``∂X_c/∂t = I``, ``∂X_c/∂x = R B``,
    ``∂(u, v)/∂log f = (u − c_x, v − c_y)``.

    Args:
        R ``(B, 3, 3)``, t ``(B, 3)`` mm, log_focal ``(B,)`` (focal = focal0 · exp), coeffs ``(B, P)``,
        mean ``(B, N, 3)``, basis ``(B, N, 3, P)``, pp ``(B, 2)``, landmarks ``(B, N, 2)``,
        weights ``(B, N)``, scale ``(B,)`` px/mm normalisation, prior_sqrt ``(P,)``, prior_mean ``(B, P)``
        the prior's centre (default 0).
    Returns:
        residuals ``(B, 2N + P)``, Jacobian ``(B, 2N + P, 7 + P)``, projections ``(B, N, 2)``.
    """
    f = focal0 * torch.exp(log_focal)
    X = mean + (basis @ coeffs[:, None, :, None])[..., 0]
    RX = X @ R.transpose(1, 2)
    Xc = RX + t[:, None]
    d = -Xc[..., 2]
    fd = f[:, None] / d
    proj = torch.stack([fd * Xc[..., 0], -fd * Xc[..., 1]], -1) + pp[:, None]
    zero = torch.zeros_like(d)
    dP = torch.stack([fd, zero, fd * Xc[..., 0] / d, zero, -fd, -fd * Xc[..., 1] / d], -1).reshape(*d.shape, 2, 3)
    x, y, z = RX.unbind(-1)
    minus_skew = torch.stack([zero, z, -y, -z, zero, x, y, -x, zero], -1).reshape(*d.shape, 3, 3)  # −[RX]_×
    eye = torch.eye(3, dtype=X.dtype, device=X.device).expand(*d.shape, 3, 3)
    RB = R[:, None] @ basis  # (B, N, 3, P)
    J_pt = dP @ torch.cat([minus_skew, eye, RB.expand(*d.shape, 3, -1)], -1)  # (B, N, 2, 6 + P)
    J_f = (proj - pp[:, None])[..., None]
    J_pt = torch.cat([J_pt[..., :6], J_f, J_pt[..., 6:]], -1)  # (B, N, 2, 7 + P)
    k = (weights.sqrt() / (scale[:, None] * sigma_mm))[..., None]  # (B, N, 1)
    r_data = ((landmarks - proj) * k).flatten(1)
    J_data = -(J_pt * k[..., None]).flatten(1, 2)
    B, P = coeffs.shape
    J_prior = torch.cat([coeffs.new_zeros(P, 7), torch.diag(prior_sqrt)], 1).expand(B, -1, -1)
    r_prior = prior_sqrt * (coeffs if prior_mean is None else coeffs - prior_mean)
    return torch.cat([r_data, r_prior], 1), torch.cat([J_data, J_prior], 1), proj


def refine_perspective(model: MorphableModel, fit: LandmarkFit, landmarks: Tensor, image_size: tuple[int, int], *,
                       focal: float | Tensor | None = None, optimise_focal: bool = False, iterations: int = 10,
                       lambda_identity: float = 1.0, lambda_expression: float = 1.0,
                       sigma_mm: float = SIGMA_MM, identity_prior_mean: Tensor | None = None) -> PerspectiveFit:
    """Refine a scaled-orthographic landmark fit with a perspective camera.

    Args:
        model: the model ``fit`` was made with.
        fit: :func:`~morphable.fitting.landmarks.fit_landmarks` result (its correspondences are kept).
        landmarks: ``(B, 68, 2)`` the same landmarks (px, nan = missing).
        image_size: ``(H, W)`` pixels; the principal point is the image centre ``((W−1)/2, (H−1)/2)``.
        focal: focal length in pixels, scalar or ``(B,)``; default ``max(H, W)`` (≈ 53° field of view).
        optimise_focal: also fit the focal length (weakly determined by 68 landmarks; off by default).
        iterations: Levenberg–Marquardt steps.
        lambda_identity, lambda_expression, sigma_mm, identity_prior_mean: as in :func:`fit_landmarks` (pass
            the same values as to the fit being refined, or the refinement pulls toward another prior).
    Returns:
        :class:`PerspectiveFit`.
    """
    check_landmarks(landmarks)
    out_dtype = landmarks.dtype if landmarks.is_floating_point() else torch.float32
    f64, dev = torch.float64, model.mean.device
    B = landmarks.shape[0]
    H_img, W_img = image_size
    terms = fit_terms(model)
    use_contour = fit.contour_fitted
    problem = _Problem(terms, landmarks.to(dev), contour=use_contour, identity_components=None,
                       expression=model.n_expression > 0, lambda_identity=lambda_identity,
                       lambda_expression=lambda_expression, sigma_mm=sigma_mm,
                       identity_prior_mean=identity_prior_mean)
    state = _State(coeffs=torch.cat([fit.identity, fit.expression], 1).to(dev, f64), scale=fit.camera.scale.to(f64),
                   R=fit.camera.rotation_matrix.to(f64), t=fit.camera.translation.to(f64))
    if use_contour:
        ids = fit.landmark_ids[:, list(CONTOUR_IDS)].to(dev)
        fallback = terms.contour.region[terms.contour.right[0]]
        state.contour_ids = torch.where(ids >= 0, ids, fallback)
    mean, basis = problem.points(state)
    w = problem.weights(state)

    f0 = torch.as_tensor(float(max(H_img, W_img)) if focal is None else focal, dtype=f64, device=dev).expand(B).clone()
    pp = torch.tensor([(W_img - 1) / 2, (H_img - 1) / 2], dtype=f64, device=dev).expand(B, 2)
    s = state.scale
    d = f0 / s  # distance at which the perspective scale of the model origin equals the orthographic one
    R = state.R
    t = torch.stack([(state.t[:, 0] - pp[:, 0]) / s, -(state.t[:, 1] - pp[:, 1]) / s, -d], 1)
    log_f = torch.zeros(B, dtype=f64, device=dev)
    coeffs = state.coeffs
    prior_sqrt = problem.prior.sqrt()
    active = torch.ones(7 + coeffs.shape[1], dtype=f64, device=dev)
    if not optimise_focal:
        active[6] = 0

    def evaluate(R, t, log_f, coeffs):
        return perspective_residuals(R, t, log_f, coeffs, mean, basis, f0, pp, problem.y, w, s, sigma_mm, prior_sqrt,
                                     problem.prior_mean)

    r, J, proj = evaluate(R, t, log_f, coeffs)
    cost = r.square().sum(-1)
    mu = torch.full((B,), 1e-3, dtype=f64, device=dev)
    eye = torch.eye(active.numel(), dtype=f64, device=dev)
    for _ in range(iterations):
        J = J * active  # frozen parameters get zero columns ...
        JtJ = J.transpose(1, 2) @ J + torch.diag(1 - active)  # ... and an identity row, so their step is 0
        g = (J.transpose(1, 2) @ r[..., None])[..., 0]
        damp = mu[:, None, None] * torch.diagonal(JtJ, dim1=1, dim2=2)[:, :, None] * eye
        step = -torch.linalg.solve(JtJ + damp, g)
        R_c = axis_angle_to_matrix(step[:, :3]) @ R
        t_c, log_f_c = t + step[:, 3:6], log_f + step[:, 6]
        coeffs_c = torch.maximum(torch.minimum(coeffs + step[:, 7:], problem.upper), problem.lower)
        r_c, J_c, proj_c = evaluate(R_c, t_c, log_f_c, coeffs_c)
        cost_c = r_c.square().sum(-1)
        ok = cost_c < cost
        R = torch.where(ok[:, None, None], R_c, R)
        t, log_f = torch.where(ok[:, None], t_c, t), torch.where(ok, log_f_c, log_f)
        coeffs = torch.where(ok[:, None], coeffs_c, coeffs)
        r, J, proj = torch.where(ok[:, None], r_c, r), torch.where(ok[:, None, None], J_c, J), torch.where(ok[:, None, None], proj_c, proj)
        cost = torch.where(ok, cost_c, cost)
        mu = torch.where(ok, mu * 0.3, mu * 10)

    K = model.n_identity
    focal_out = f0 * torch.exp(log_f)
    camera = Perspective(focal_out.to(out_dtype), pp.to(out_dtype), matrix_to_axis_angle(R).to(out_dtype), t.to(out_dtype))
    used = problem.fixed | problem.contour_rows
    fitted = torch.where(used[None, :, None], proj, proj.new_tensor(float("nan")))
    rms = (((proj - problem.y) ** 2).sum(-1) * w).sum(1).div(w.sum(1)).sqrt()
    identity, expression = coeffs[:, :K], coeffs[:, K:]
    vertices = model(identity=identity.to(model.mean.dtype),
                     expression=expression.to(model.mean.dtype) if model.n_expression else None).vertices.to(out_dtype)
    return PerspectiveFit(identity=identity.to(out_dtype), expression=expression.to(out_dtype), camera=camera,
                          vertices=vertices, landmarks_fitted=fitted.to(out_dtype), rms_px=rms.to(out_dtype))
