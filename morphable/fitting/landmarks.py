"""Fit a morphable model to 2D landmarks: scaled-orthographic pose, identity, expression, contours.

The eos pipeline (Huber et al., "A Multiresolution 3D Morphable Face Model and Fitting Framework",
VISAPP 2016), batched over faces and solved in float64:

1. pose from the fixed (non-contour) landmarks of the mean face
   (:mod:`~morphable.fitting.camera_estimation`: Gold Standard affine camera, then Gauss–Newton on the
   scaled-orthographic reprojection error) and the closed-form identity/expression fit for that camera (:mod:`~morphable.fitting.shape`);
2. ``iterations`` times: pose-dependent jawline correspondences (:mod:`~morphable.fitting.contour`),
   then one Gauss–Newton step in camera, identity and expression *jointly*
   (:func:`~morphable.fitting.shape.joint_normal_equations`; expression weights bounded for
   blendshapes, :mod:`~morphable.fitting.expression`). eos instead alternates a linear camera fit, a
   shape fit and a blendshape fit, which converges slowly where a rotation and a shape change explain
   the landmarks equally well.

The returned :class:`LandmarkFit` also carries the posterior covariance of the identity coefficients and,
computed on first access, a per-vertex uncertainty map (:mod:`~morphable.fitting.uncertainty`).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from morphable.fitting.camera_estimation import (estimate_scaled_orthographic, project_scaled_orthographic,
                                                 refine_scaled_orthographic, to_camera)
from morphable.fitting.contour import CONTOUR_IDS, ContourTerms, contour_correspondences, contour_terms
from morphable.fitting.shape import joint_normal_equations, normal_equations, posterior_covariance, solve_coefficients
from morphable.geometry.rotation import axis_angle_to_matrix
from morphable.fitting.uncertainty import vertex_std
from morphable.geometry.camera import ScaledOrthographic
from morphable.models.base import N_LANDMARKS, MorphableModel

SIGMA_MM = 2.0
"""Default landmark noise σ in millimetres on the face (≈ 3 px for a 200 px wide face)."""


@dataclass(frozen=True)
class LandmarkFit:
    """Result of :func:`fit_landmarks` (and :func:`~morphable.fitting.multi.fit_landmarks_multi`).

    Attributes:
        identity: ``(B, K)`` standardised identity coefficients (components not fitted are 0).
        expression: ``(B, Ke)`` expression coefficients (PCA) or blendshape weights in [0, 1].
        camera: :class:`ScaledOrthographic` with batch ``B``.
        vertices: ``(B, V, 3)`` fitted mesh, mm, model space, in the landmarks' dtype
            (``camera.project(vertices)`` gives pixels).
        landmarks_fitted: ``(B, 68, 2)`` px, the model's landmarks projected into the image with the final
            correspondences (nan where the model defines no point for that landmark).
        landmark_ids: ``(B, 68)`` int64 model vertex each landmark was fitted to (the first vertex of a
            barycentric landmark), −1 where the landmark was missing or undefined.
        identity_covariance: ``(B, K, K)`` posterior covariance of ``identity`` (Gaussian, at the fitted
            camera; rows/columns of unfitted components are 0).
        rms_px: ``(B,)`` root-mean-square reprojection error over the used landmarks (px).
        contour_fitted: whether the jawline rows of ``landmark_ids`` are pose-dependent contour
            correspondences (else they are the model's fixed landmarks, or unused).
    """

    identity: Tensor
    expression: Tensor
    camera: ScaledOrthographic
    vertices: Tensor
    landmarks_fitted: Tensor
    landmark_ids: Tensor
    identity_covariance: Tensor
    rms_px: Tensor
    contour_fitted: bool
    identity_basis: Tensor = field(repr=False)

    @cached_property
    def vertex_uncertainty(self) -> Tensor:
        """``(B, V)`` mm: posterior RMS displacement of each vertex (computed on first access)."""
        return vertex_std(self.identity_basis, self.identity_covariance).to(self.vertices.dtype)


@dataclass(frozen=True)
class FitTerms:
    """Per-model tables in float64, built once per model/device (see :func:`fit_terms`)."""

    n_identity: int
    n_expression: int
    expression_bounded: bool
    landmark_mask: Tensor  # (68,) bool
    landmark_mean: Tensor  # (68, 3)
    landmark_basis: Tensor  # (68, 3, K + Ke)
    landmark_ids: Tensor  # (68,) first vertex
    contour: ContourTerms | None
    region_mean: Tensor | None  # (R, 3)
    region_basis: Tensor | None  # (R, 3, K + Ke)
    region_position: Tensor | None  # (V,) position of each vertex in the region, −1 outside


_CACHE: "weakref.WeakKeyDictionary[MorphableModel, tuple[tuple, FitTerms]]" = weakref.WeakKeyDictionary()


def _full_basis(model: MorphableModel) -> Tensor:
    parts = [model.identity_basis]
    if model.expression_basis is not None:
        parts.append(model.expression_basis)
    return torch.cat(parts, dim=-1)


def fit_terms(model: MorphableModel) -> FitTerms:
    """The model's landmark and contour tables (cached per model, device and buffer identity)."""
    key = (model.mean.device, model.mean.data_ptr(), model.identity_basis.data_ptr(),
           None if model.expression_basis is None else model.expression_basis.data_ptr(),
           model.landmark_indices.data_ptr(), None if model.contour_right is None else model.contour_right.data_ptr())
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    f64 = torch.float64
    basis = _full_basis(model)
    idx, w = model.landmark_indices, model.landmark_weights.to(f64)
    lm_mean = torch.einsum("lkc,lk->lc", model.mean.to(f64)[idx], w)
    lm_basis = torch.einsum("lkcp,lk->lcp", basis[idx].to(f64), w)
    contour = region_mean = region_basis = region_pos = None
    if model.contour_right is not None and model.contour_left is not None:
        face = model.regions.get("face")
        contour = contour_terms(model.mean, model.triangles, model.contour_right, model.contour_left, face)
        region_mean = model.mean[contour.region].to(f64)
        region_basis = basis[contour.region].to(f64)
        region_pos = torch.full((model.n_vertices,), -1, dtype=torch.int64, device=model.mean.device)
        region_pos[contour.region] = torch.arange(contour.region.numel(), device=model.mean.device)
    terms = FitTerms(n_identity=model.n_identity, n_expression=model.n_expression,
                     expression_bounded=model.expression_kind == "blendshapes", landmark_mask=model.landmark_mask,
                     landmark_mean=lm_mean, landmark_basis=lm_basis, landmark_ids=idx[:, 0], contour=contour,
                     region_mean=region_mean, region_basis=region_basis, region_position=region_pos)
    _CACHE[model] = (key, terms)
    return terms


def point_terms(model: MorphableModel, vertex_ids: Tensor) -> FitTerms:
    """Tables for fitting arbitrary model vertices (no contour): ``vertex_ids (N,)`` int64."""
    f64 = torch.float64
    ids = vertex_ids.to(device=model.mean.device, dtype=torch.int64)
    return FitTerms(n_identity=model.n_identity, n_expression=model.n_expression,
                    expression_bounded=model.expression_kind == "blendshapes",
                    landmark_mask=torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device),
                    landmark_mean=model.mean[ids].to(f64), landmark_basis=_full_basis(model)[ids].to(f64),
                    landmark_ids=ids, contour=None, region_mean=None, region_basis=None, region_position=None)


def check_landmarks(landmarks: Tensor, name: str = "landmarks") -> None:
    """Raise ``ValueError`` unless ``landmarks`` is ``(B, 68, 2)``."""
    if landmarks.dim() != 3 or landmarks.shape[1:] != (N_LANDMARKS, 2):
        raise ValueError(f"{name}: expected shape (B, 68, 2), got {tuple(landmarks.shape)}")


@dataclass
class _State:
    """Working variables of the alternation (float64)."""

    coeffs: Tensor  # (B, P)
    scale: Tensor
    R: Tensor
    t: Tensor
    contour_ids: Tensor | None = None  # (B, 16) model vertex ids


class _Problem:
    """The fixed parts of one fit: targets, weights, selected columns, priors and bounds."""

    def __init__(self, terms: FitTerms, landmarks: Tensor, *, contour: bool, identity_components: int | None,
                 expression: bool, lambda_identity: float, lambda_expression: float, sigma_mm: float,
                 identity_prior_mean: Tensor | None = None):
        f64 = torch.float64
        self.terms = terms
        y = landmarks.to(f64)
        self.valid = torch.isfinite(y).all(-1)  # (B, 68)
        self.y = torch.nan_to_num(y, nan=0.0)
        self.use_contour = contour and terms.contour is not None
        contour_rows = torch.zeros(y.shape[1], dtype=torch.bool, device=y.device)
        if self.use_contour:
            contour_rows[list(CONTOUR_IDS)] = True
        self.contour_rows = contour_rows
        fixed = terms.landmark_mask.to(y.device) & ~contour_rows
        self.fixed = fixed
        self.w_fixed = (self.valid & fixed).to(f64)
        self.w_all = (self.valid & (fixed | contour_rows)).to(f64) if self.use_contour else self.w_fixed
        K = terms.n_identity if identity_components is None else min(int(identity_components), terms.n_identity)
        Ke = terms.n_expression if expression else 0
        self.K, self.Ke = K, Ke
        cols = list(range(K)) + list(range(terms.n_identity, terms.n_identity + Ke))
        self.cols = torch.tensor(cols, dtype=torch.int64, device=y.device)
        self.prior = torch.tensor([lambda_identity] * K + [lambda_expression] * Ke, dtype=f64, device=y.device)
        self.prior_mean = None
        if identity_prior_mean is not None:
            mu = identity_prior_mean.to(device=y.device, dtype=f64)
            if mu.dim() != 2 or mu.shape[0] not in (1, y.shape[0]) or mu.shape[1] != terms.n_identity:
                raise ValueError(f"fit_landmarks: identity_prior_mean must be (B, {terms.n_identity}), "
                                 f"got {tuple(mu.shape)}")
            self.prior_mean = torch.cat([mu[:, :K].expand(y.shape[0], -1), mu.new_zeros(y.shape[0], Ke)], 1)
        inf = float("inf")
        lo_e, hi_e = (0.0, 1.0) if terms.expression_bounded else (-inf, inf)
        self.lower = torch.tensor([-inf] * K + [lo_e] * Ke, dtype=f64, device=y.device)
        self.upper = torch.tensor([inf] * K + [hi_e] * Ke, dtype=f64, device=y.device)
        self.sigma = sigma_mm
        self.lm_mean = terms.landmark_mean.to(y.device)
        self.lm_basis = terms.landmark_basis.to(y.device)[..., self.cols]
        all_cols = K == terms.n_identity and Ke == terms.n_expression
        if self.use_contour:
            self.region_mean = terms.region_mean
            self.region_basis = terms.region_basis if all_cols else terms.region_basis[..., self.cols]
        n_ok = self.w_fixed.sum(1)
        if (n_ok < 4).any():
            bad = int(torch.nonzero(n_ok < 4)[0])
            raise ValueError(f"fit_landmarks: face {bad} has {int(n_ok[bad])} usable landmarks (need at least 4)")

    def points(self, state: _State) -> tuple[Tensor, Tensor]:
        """Mean and basis rows of the 68 correspondences: ``(B, 68, 3)``, ``(B, 68, 3, P)``."""
        B = self.y.shape[0]
        mean = self.lm_mean.expand(B, -1, -1)
        basis = self.lm_basis.expand(B, -1, -1, -1)
        if state.contour_ids is not None:
            pos = self.terms.region_position[state.contour_ids]  # (B, 16)
            rows = list(CONTOUR_IDS)
            mean, basis = mean.clone(), basis.clone()
            mean[:, rows] = self.region_mean[pos]
            basis[:, rows] = self.region_basis[pos]
        return mean, basis

    def update_contour(self, state: _State) -> None:
        P = state.coeffs.shape[1]

        def project(positions: Tensor) -> Tensor:  # current image points of region vertices (B, S, 2)
            rows = self.region_basis[positions].reshape(-1, P)  # (3S, P)
            pts = self.region_mean[positions] + (state.coeffs @ rows.T).reshape(state.coeffs.shape[0], -1, 3)
            return project_scaled_orthographic(pts, state.scale, state.R, state.t)

        state.contour_ids = contour_correspondences(project, state.R, self.y, self.terms.contour)

    def model_points(self, state: _State) -> Tensor:
        mean, basis = self.points(state)
        return mean + (basis @ state.coeffs[:, None, :, None])[..., 0]

    def weights(self, state: _State) -> Tensor:
        return self.w_all if state.contour_ids is not None else self.w_fixed

    def joint_step(self, state: _State) -> Tensor:
        """One Gauss–Newton step in camera and coefficients; returns the system matrix ``(B, 6+P, 6+P)``."""
        mean, basis = self.points(state)
        H, g = joint_normal_equations(mean, basis, state.coeffs, self.y, self.weights(state), state.scale, state.R,
                                      state.t, self.sigma, self.prior, self.prior_mean)
        inf = self.lower.new_full((6,), float("inf"))
        lo = torch.cat([-inf.expand(g.shape[0], -1), self.lower - state.coeffs], 1)
        hi = torch.cat([inf.expand(g.shape[0], -1), self.upper - state.coeffs], 1)
        delta = solve_coefficients(H, g, lo, hi)
        state.R = axis_angle_to_matrix(delta[:, :3]) @ state.R
        state.scale = state.scale * torch.exp(delta[:, 3])
        state.t = state.t + delta[:, 4:6]
        state.coeffs = torch.maximum(torch.minimum(state.coeffs + delta[:, 6:], self.upper), self.lower)
        return H

    def solve_shape(self, state: _State) -> Tensor:
        mean, basis = self.points(state)
        H, c = normal_equations(mean, basis, self.y, self.weights(state), state.scale, state.R, state.t,
                                self.sigma, self.prior, self.prior_mean)
        state.coeffs = solve_coefficients(H, c, self.lower, self.upper)
        return H


def _initial_state(problem: _Problem) -> _State:
    B = problem.y.shape[0]
    X = problem.lm_mean.expand(B, -1, -1)
    s, R, t = estimate_scaled_orthographic(X, problem.y, problem.w_fixed)
    s, R, t = refine_scaled_orthographic(X, problem.y, problem.w_fixed, s, R, t, steps=3)
    return _State(coeffs=problem.y.new_zeros(B, problem.cols.numel()), scale=s, R=R, t=t)


def _finish(model: MorphableModel, problem: _Problem, state: _State, H: Tensor, out_dtype: torch.dtype) -> LandmarkFit:
    """Package the working state as a :class:`LandmarkFit`."""
    B, K, Ke = problem.y.shape[0], problem.K, problem.Ke
    dev = problem.y.device
    identity = problem.y.new_zeros(B, model.n_identity)
    identity[:, :K] = state.coeffs[:, :K]
    expression = problem.y.new_zeros(B, model.n_expression)
    expression[:, :Ke] = state.coeffs[:, K:]
    cov = problem.y.new_zeros(B, model.n_identity, model.n_identity)
    cov[:, :K, :K] = posterior_covariance(H, K)
    X = problem.model_points(state)
    proj = project_scaled_orthographic(X, state.scale, state.R, state.t)
    used = problem.fixed | problem.contour_rows
    fitted = torch.where(used[None, :, None], proj, proj.new_tensor(float("nan")))
    ids = problem.terms.landmark_ids.to(dev).expand(B, -1).clone()
    if state.contour_ids is not None:
        ids[:, list(CONTOUR_IDS)] = state.contour_ids
    w = problem.weights(state)
    ids = torch.where(w > 0, ids, torch.full_like(ids, -1))
    rms = (((proj - problem.y) ** 2).sum(-1) * w).sum(1).div(w.sum(1)).sqrt()
    vertices = model(identity=identity.to(model.mean.dtype),
                     expression=expression.to(model.mean.dtype) if model.n_expression else None).vertices.to(out_dtype)
    cam = to_camera(state.scale.to(out_dtype), state.R.to(out_dtype), state.t.to(out_dtype))
    return LandmarkFit(identity=identity.to(out_dtype), expression=expression.to(out_dtype), camera=cam,
                       vertices=vertices, landmarks_fitted=fitted.to(out_dtype), landmark_ids=ids,
                       identity_covariance=cov.to(out_dtype), rms_px=rms.to(out_dtype),
                       contour_fitted=state.contour_ids is not None, identity_basis=model.identity_basis)


def _fit(model: MorphableModel, terms: FitTerms, points: Tensor, *, iterations: int, contour: bool,
         identity_components: int | None, expression: bool, lambda_identity: float, lambda_expression: float,
         sigma_mm: float, identity_prior_mean: Tensor | None = None) -> LandmarkFit:
    out_dtype = points.dtype if points.is_floating_point() else torch.float32
    problem = _Problem(terms, points.to(model.mean.device), contour=contour,
                       identity_components=identity_components, expression=expression,
                       lambda_identity=lambda_identity, lambda_expression=lambda_expression, sigma_mm=sigma_mm,
                       identity_prior_mean=identity_prior_mean)
    state = _initial_state(problem)
    problem.solve_shape(state)
    H = None
    for _ in range(iterations):
        if problem.use_contour:
            problem.update_contour(state)
        H = problem.joint_step(state)
    if H is None:
        H = problem.solve_shape(state)
    else:
        H = H[:, 6:, 6:] - H[:, 6:, :6] @ torch.linalg.solve(H[:, :6, :6], H[:, :6, 6:])  # marginalise the camera
    if problem.use_contour:
        problem.update_contour(state)
    return _finish(model, problem, state, H, out_dtype)


def fit_landmarks(model: MorphableModel, landmarks: Tensor, *, iterations: int = 5, contour: bool = True,
                  identity_components: int | None = None, expression: bool = True, lambda_identity: float = 1.0,
                  lambda_expression: float = 1.0, sigma_mm: float = SIGMA_MM,
                  identity_prior_mean: Tensor | None = None) -> LandmarkFit:
    """Fit pose, identity and expression to iBUG-68 landmarks, for a batch of faces at once.

    Args:
        model: any :class:`MorphableModel` with landmark definitions (``landmark_mask`` marks them);
            ``contour_right``/``contour_left`` enable contour fitting.
        landmarks: ``(B, 68, 2)`` 0-based pixel coordinates (x right, y down), nan for missing points.
        iterations: alternations of contour search, pose and shape (eos's ``num_iterations``).
        contour: fit the jawline (iBUG 0–7, 9–16) with pose-dependent correspondences; when off, only
            the landmarks the model defines are used.
        identity_components: fit only the first this-many identity components (default all).
        expression: fit expression coefficients (PCA) or blendshape weights (bounded to [0, 1]).
        lambda_identity / lambda_expression: prior precision multipliers (1 = the model's N(0, 1) prior).
        sigma_mm: landmark noise σ in mm on the face; smaller fits the landmarks more closely.
        identity_prior_mean: ``(B, K)`` or ``(1, K)`` centre of the identity prior (default 0, the model's
            mean): the prior becomes ``λ_identity ‖α − μ‖²``, e.g. with ``μ`` from a regressor
            (:mod:`morphable.nets.genova`), so the landmarks refine a recognisable shape instead of the mean.
    Returns:
        :class:`LandmarkFit`.
    Raises:
        ValueError: wrong shape, or a face with fewer than 4 usable fixed landmarks.
    """
    check_landmarks(landmarks)
    return _fit(model, fit_terms(model), landmarks, iterations=iterations, contour=contour,
                identity_components=identity_components, expression=expression, lambda_identity=lambda_identity,
                lambda_expression=lambda_expression, sigma_mm=sigma_mm, identity_prior_mean=identity_prior_mean)


def fit_points(model: MorphableModel, points: Tensor, vertex_ids: Tensor, *, iterations: int = 5,
               identity_components: int | None = None, expression: bool = True, lambda_identity: float = 1.0,
               lambda_expression: float = 1.0, sigma_mm: float = SIGMA_MM) -> LandmarkFit:
    """:func:`fit_landmarks` for any set of model vertices seen in the image (no contour search).

    Args:
        points: ``(B, N, 2)`` pixels (nan = missing), the images of the vertices ``vertex_ids (N,)``.
    Returns:
        :class:`LandmarkFit` whose ``landmarks_fitted``/``landmark_ids`` have ``N`` rows.
    """
    if points.dim() != 3 or points.shape[-1] != 2 or vertex_ids.shape != (points.shape[1],):
        raise ValueError(f"fit_points: expected points (B, N, 2) and vertex_ids (N,), got {tuple(points.shape)} "
                         f"and {tuple(vertex_ids.shape)}")
    return _fit(model, point_terms(model, vertex_ids), points, iterations=iterations, contour=False,
                identity_components=identity_components, expression=expression, lambda_identity=lambda_identity,
                lambda_expression=lambda_expression, sigma_mm=sigma_mm)
