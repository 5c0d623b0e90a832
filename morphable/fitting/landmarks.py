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

Only the landmark and contour rows of the bases ever enter an iteration, never the whole mesh: the
camera-independent part of the fixed landmarks' normal equations is a per-model table (:class:`RowTables`),
the jawline rows are gathered from the contour region, and the mesh is built only when
:attr:`LandmarkFit.vertices` is first read. Each Gauss–Newton step is one batched Cholesky factorisation
(:func:`~morphable.fitting.shape.solve_factored`), so a batch of faces is solved at once.

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
from morphable.fitting.shape import solve_trailing
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
        landmarks_fitted: ``(B, 68, 2)`` px, the model's landmarks projected into the image with the final
            correspondences (nan where the model defines no point for that landmark).
        landmark_ids: ``(B, 68)`` int64 model vertex each landmark was fitted to (the first vertex of a
            barycentric landmark), −1 where the landmark was missing or undefined.
        identity_covariance: ``(B, K, K)`` posterior covariance of ``identity`` (Gaussian, at the fitted
            camera; rows/columns of unfitted components are 0).
        rms_px: ``(B,)`` root-mean-square reprojection error over the used landmarks (px).
        contour_fitted: whether the jawline rows of ``landmark_ids`` are pose-dependent contour
            correspondences (else they are the model's fixed landmarks, or unused).
        model: the fitted model (its buffers give :attr:`vertices` and :attr:`vertex_uncertainty`).
    """

    identity: Tensor
    expression: Tensor
    camera: ScaledOrthographic
    landmarks_fitted: Tensor
    landmark_ids: Tensor
    identity_covariance: Tensor
    rms_px: Tensor
    contour_fitted: bool
    model: MorphableModel = field(repr=False, compare=False)

    @cached_property
    def vertices(self) -> Tensor:
        """``(B, V, 3)`` fitted mesh, mm, model space, in the landmarks' dtype (``camera.project(vertices)``
        gives pixels); built from the coefficients on first access, so a fit that needs no mesh costs none."""
        m = self.model
        return m(identity=self.identity.to(m.mean.dtype),
                 expression=self.expression.to(m.mean.dtype) if m.n_expression else None).vertices.to(self.identity.dtype)

    @cached_property
    def vertex_uncertainty(self) -> Tensor:
        """``(B, V)`` mm: posterior RMS displacement of each vertex (computed on first access)."""
        return vertex_std(self.model.identity_basis, self.identity_covariance).to(self.identity.dtype)


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
    tables: dict = field(default_factory=dict, repr=False, compare=False)  # RowTables per (rows, columns)


_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # the Gram matrices RowTables keeps
_PAIR_INDEX = [3 * c + d for c, d in _PAIRS]  # their coefficients' positions in a flattened 3×3 matrix


@dataclass(frozen=True)
class RowTables:
    """The fixed rows' part of the normal equations that does not depend on the camera (float64, built once).

    For a fixed point ``n`` with basis rows ``B_n (3, P)`` the coefficient block of ``JᵀJ`` is
    ``B_nᵀ Rᵀ Πᵀ Π R B_n = B_nᵀ (I − r rᵀ) B_n`` (``r`` the rotation's third row: the scaled-orthographic
    projection drops the view depth), so over all points it is ``Σ_cd M_cd G_cd`` with ``M = I − r rᵀ`` and
    the Gram matrices ``G_cd = Σ_n B_n[c]ᵀ B_n[d]`` of the model (``G_dc = G_cdᵀ``, so six suffice): a
    ``(B, 6) @ (6, D²)`` product per step instead of ``2N·P²`` per face.

    Attributes:
        mean: ``(N, 3)`` mean shape at the fixed points (mm).
        basis: ``(3N, P)`` their basis rows (row ``3n + c`` is coordinate ``c`` of point ``n``), fitted columns only.
        gram: ``(6, D·D)`` ``G_00, G_11, G_22, G_01 + G_10, G_02 + G_20, G_12 + G_21`` (see :data:`_PAIRS`),
            padded with zero camera rows/columns to ``D = 6 + P``.
    """

    mean: Tensor
    basis: Tensor
    gram: Tensor

    @staticmethod
    def build(mean: Tensor, basis: Tensor) -> "RowTables":
        """From ``mean (N, 3)`` and ``basis (N, 3, P)`` (float64)."""
        N, _, P = basis.shape
        D = 6 + P
        G = torch.einsum("ncp,ndq->cdpq", basis, basis)
        gram = basis.new_zeros(len(_PAIRS), D, D)
        for k, (c, d) in enumerate(_PAIRS):
            gram[k, 6:, 6:] = G[c, c] if c == d else G[c, d] + G[d, c]
        return RowTables(mean=mean.contiguous(), basis=basis.reshape(3 * N, P).contiguous(), gram=gram.view(len(_PAIRS), -1))


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
        self.bounded = terms.expression_bounded and Ke > 0  # box constraints on the trailing expression columns
        self.sigma = sigma_mm
        self.lm_mean = terms.landmark_mean.to(y.device)
        all_cols = K == terms.n_identity and Ke == terms.n_expression
        self.lm_basis = terms.landmark_basis.to(y.device) if all_cols else terms.landmark_basis.to(y.device)[..., self.cols]
        if self.use_contour:
            self.region_mean = terms.region_mean
            self.region_basis = terms.region_basis if all_cols else terms.region_basis[..., self.cols]
        n_ok = self.w_fixed.sum(1)
        if (n_ok < 4).any():
            bad = int(torch.nonzero(n_ok < 4)[0])
            raise ValueError(f"fit_landmarks: face {bad} has {int(n_ok[bad])} usable landmarks (need at least 4)")
        rows = torch.nonzero(fixed).squeeze(1)
        key = (tuple(rows.tolist()), K, Ke)
        if key not in terms.tables:
            terms.tables[key] = RowTables.build(self.lm_mean[rows], self.lm_basis[rows])
        self.tables: RowTables = terms.tables[key]
        self.y_fixed, self.w_rows = self.y[:, rows], self.valid[:, rows].to(f64)
        missing = torch.nonzero((self.w_rows < 1).any(0)).squeeze(1)  # rows some face lacks: Gram correction
        self.missing = missing if missing.numel() else None
        if self.use_contour:
            ids = list(CONTOUR_IDS)
            self.y_contour, self.w_contour = self.y[:, ids], self.valid[:, ids].to(f64)

    def points(self, state: _State) -> tuple[Tensor, Tensor]:
        """Mean and basis rows of the 68 correspondences: ``(B, 68, 3)``, ``(B, 68, 3, P)``."""
        B = self.y.shape[0]
        mean = self.lm_mean.expand(B, -1, -1)
        basis = self.lm_basis.expand(B, -1, -1, -1)
        if state.contour_ids is not None:
            rows = list(CONTOUR_IDS)
            mean, basis = mean.clone(), basis.clone()
            mean[:, rows], basis[:, rows] = self._region(self.terms.region_position[state.contour_ids])
        return mean, basis

    def _region(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(*S, 3)`` and basis rows ``(*S, 3, P)`` of the contour-region vertices at ``positions (*S,)``."""
        flat, P = positions.reshape(-1), self.region_basis.shape[-1]
        return (self.region_mean.index_select(0, flat).view(*positions.shape, 3),
                self.region_basis.view(-1, 3 * P).index_select(0, flat).view(*positions.shape, 3, P))

    def _project_region(self, state: _State, positions: Tensor, faces: Tensor | None = None) -> Tensor:
        """Image points ``(F, S, 2)`` of contour-region vertices ``positions (S,)`` for ``faces`` (default all)."""
        P = state.coeffs.shape[1]
        coeffs, s, R, t = ((state.coeffs, state.scale, state.R, state.t) if faces is None else
                           (state.coeffs[faces], state.scale[faces], state.R[faces], state.t[faces]))
        mean, rows = self._region(positions)  # (S, 3), (S, 3, P)
        pts = torch.addmm(mean.view(1, -1), coeffs, rows.view(-1, P).T).view(coeffs.shape[0], -1, 3)
        return project_scaled_orthographic(pts, s, R, t)

    def update_contour(self, state: _State) -> None:
        state.contour_ids = contour_correspondences(lambda pos: self._project_region(state, pos), state.R, self.y,
                                                    self.terms.contour,
                                                    project_faces=lambda pos, f: self._project_region(state, pos, f))

    def model_points(self, state: _State) -> Tensor:
        """The 68 model points at the current coefficients ``(B, 68, 3)`` (mm), jawline at the contour."""
        x = state.coeffs
        B, P = x.shape
        X = self.lm_mean + (x @ self.lm_basis.reshape(-1, P).T).view(B, -1, 3)
        if state.contour_ids is not None:
            mean, basis = self._region(self.terms.region_position[state.contour_ids])
            X[:, list(CONTOUR_IDS)] = mean + (basis.view(B, -1, P) @ x[..., None]).view(B, -1, 3)
        return X

    def weights(self, state: _State) -> Tensor:
        return self.w_all if state.contour_ids is not None else self.w_fixed

    def system(self, state: _State) -> tuple[Tensor, Tensor]:
        """Gauss–Newton system ``H δ = g`` in camera and coefficients, from the landmark rows only.

        The same equations as :func:`~morphable.fitting.shape.joint_normal_equations` on :meth:`points`
        (``tests/fitting/test_landmarks.py`` checks that), assembled without expanding the basis per face:
        the fixed rows' coefficient block from :class:`RowTables` (with a correction for rows some face
        lacks), their camera coupling and gradient as one matrix product with the shared basis rows, and
        only the 16 gathered jawline rows per face as explicit Jacobian rows.

        Returns:
            ``H (B, 6+P, 6+P)`` and ``g (B, 6+P)`` with ``δ = (ω, log-scale, t (px), Δx)``.
        """
        x, s, R, t = state.coeffs, state.scale, state.R, state.t
        B, P = x.shape
        D = 6 + P
        tab, inv_var = self.tables, 1.0 / self.sigma**2
        n_fixed = tab.mean.shape[0]
        X = tab.mean + (x @ tab.basis.T).view(B, n_fixed, 3)  # (B, N, 3) model space
        y, w = self.y_fixed, self.w_rows
        if state.contour_ids is not None:
            mean_c, basis_c = self._region(self.terms.region_position[state.contour_ids])  # (B, 16, 3), (B, 16, 3, P)
            basis_c = basis_c.view(B, -1, P)  # (B, 48, P)
            X = torch.cat([X, mean_c + (basis_c @ x[..., None]).view(B, -1, 3)], 1)
            y, w = torch.cat([y, self.y_contour], 1), torch.cat([w, self.w_contour], 1)
        Xv = X @ R.transpose(1, 2)
        vx, vy, vz = Xv.unbind(-1)
        zero, inv_s = torch.zeros_like(vx), (1 / s)[:, None].expand_as(vx)
        ru = (y[..., 0] - t[:, None, 0]) / s[:, None] - vx  # residuals (mm) of u = s·vx + t_u, v = −s·vy + t_v
        rv = (y[..., 1] - t[:, None, 1]) / s[:, None] + vy
        # per landmark coordinate: the camera Jacobian (ω, log s, t) in mm and the residual, (B, N, 2, 7)
        A = torch.stack([zero, vz, -vy, vx, inv_s, zero, ru, vz, zero, -vx, -vy, zero, inv_s, rv], -1).view(B, -1, 2, 7)
        wA = A * (w * inv_var)[..., None, None]
        cam = wA.view(B, -1, 7)[..., :6].transpose(1, 2) @ A.view(B, -1, 7)  # (B, 6, 7): H_cc | g_c
        FR = R[:, :2] * R.new_tensor([1.0, -1.0])[None, :, None]  # (B, 2, 3) = F Π R
        # camera–coefficient coupling and coefficient gradient: Σ_n (w J_camᵀ | w r)ᵀ F Π R B_n
        T = (wA.transpose(2, 3) @ FR[:, None]).transpose(1, 2)  # (B, 7, N, 3)
        C = T[:, :, :n_fixed].reshape(B, 7, -1) @ tab.basis  # (B, 7, P)
        r3 = R[:, 2]
        M = (torch.eye(3, dtype=x.dtype, device=x.device) - r3[:, :, None] * r3[:, None, :]) * inv_var
        H = (M.view(B, 9)[:, _PAIR_INDEX] @ tab.gram).view(B, D, D)  # fixed rows' coefficient block, weights 1
        H[:, :6, :6] += cam[..., :6]
        rows_x, w_x = [], []  # explicit coefficient rows F Π R B_n and their weights
        if state.contour_ids is not None:
            C = C + T[:, :, n_fixed:].reshape(B, 7, -1) @ basis_c
            rows_x.append(FR[:, None] @ basis_c.view(B, -1, 3, P))
            w_x.append(self.w_contour)
        if self.missing is not None:  # rows of weight w < 1: remove (1 − w) of them from the Gram part
            rows_x.append(FR[:, None] @ tab.basis.view(n_fixed, 3, P)[self.missing])
            w_x.append(self.w_rows[:, self.missing] - 1)
        H[:, :6, 6:] = C[:, :6]
        H[:, 6:, :6] = C[:, :6].transpose(1, 2)
        if rows_x:
            J_x = rows_x[0] if len(rows_x) == 1 else torch.cat(rows_x, 1)  # (B, M, 2, P)
            w_x = (w_x[0] if len(w_x) == 1 else torch.cat(w_x, 1)) * inv_var
            H[:, 6:, 6:].baddbmm_((J_x * w_x[..., None, None]).flatten(1, 2).transpose(1, 2), J_x.flatten(1, 2))
        diag = H.diagonal(dim1=1, dim2=2)
        diag[:, :6] += 1e-9
        diag[:, 6:] += self.prior
        g_x = C[:, 6] - self.prior * (x if self.prior_mean is None else x - self.prior_mean)
        return H, torch.cat([cam[..., 6], g_x], 1)

    def joint_step(self, state: _State) -> Tensor:
        """One Gauss–Newton step in camera and coefficients; returns the Cholesky factor ``(B, 6+P, 6+P)`` of
        its system matrix (the inverse of which is the Gaussian posterior covariance of all parameters)."""
        H, g = self.system(state)
        exp = state.coeffs[:, self.K:]  # bounded (blendshapes) or not, the expression columns come last
        if self.bounded:
            delta, L = solve_trailing(H, g, 6 + self.K, self.lower[self.K:] - exp, self.upper[self.K:] - exp,
                                      x0=torch.zeros_like(exp))  # start at the current weights
        else:
            delta, L = solve_trailing(H, g, H.shape[-1], exp, exp)
        state.R = axis_angle_to_matrix(delta[:, :3]) @ state.R
        state.scale = state.scale * torch.exp(delta[:, 3])
        state.t = state.t + delta[:, 4:6]
        state.coeffs = torch.maximum(torch.minimum(state.coeffs + delta[:, 6:], self.upper), self.lower)
        return L

    def solve_shape(self, state: _State) -> Tensor:
        """Closed-form coefficients for the current camera (Aldrian & Smith; :mod:`~morphable.fitting.shape`);
        returns the Cholesky factor ``(B, P, P)`` of the coefficient precision."""
        zero = _State(coeffs=torch.zeros_like(state.coeffs), scale=state.scale, R=state.R, t=state.t,
                      contour_ids=state.contour_ids)
        H, g = self.system(zero)  # at x = 0 the gradient is the right-hand side of the absolute solve
        K = self.K
        state.coeffs, L = solve_trailing(H[:, 6:, 6:], g[:, 6:], K if self.bounded else H.shape[-1] - 6,
                                         self.lower[K:].expand_as(state.coeffs[:, K:]),
                                         self.upper[K:].expand_as(state.coeffs[:, K:]), x0=state.coeffs[:, K:])
        return L


def _ordinary(state: _State) -> _State:
    """A copy of a state computed under ``torch.inference_mode`` made of ordinary tensors (the fit's results
    must allow in-place changes and autograd use by the caller)."""
    return _State(coeffs=state.coeffs.clone(), scale=state.scale.clone(), R=state.R.clone(), t=state.t.clone(),
                  contour_ids=None if state.contour_ids is None else state.contour_ids.clone())


def _initial_state(problem: _Problem) -> _State:
    B = problem.y.shape[0]
    X = problem.lm_mean.expand(B, -1, -1)
    s, R, t = estimate_scaled_orthographic(X, problem.y, problem.w_fixed)
    s, R, t = refine_scaled_orthographic(X, problem.y, problem.w_fixed, s, R, t, steps=3)
    return _State(coeffs=problem.y.new_zeros(B, problem.cols.numel()), scale=s, R=R, t=t)


def _finish(model: MorphableModel, problem: _Problem, state: _State, cov: Tensor, out_dtype: torch.dtype) -> LandmarkFit:
    """Package the working state and the fitted identity covariance ``cov (B, K, K)`` as a :class:`LandmarkFit`."""
    B, K, Ke = problem.y.shape[0], problem.K, problem.Ke
    dev = problem.y.device
    identity = problem.y.new_zeros(B, model.n_identity)
    identity[:, :K] = state.coeffs[:, :K]
    expression = problem.y.new_zeros(B, model.n_expression)
    expression[:, :Ke] = state.coeffs[:, K:]
    cov_full = problem.y.new_zeros(B, model.n_identity, model.n_identity)
    cov_full[:, :K, :K] = cov
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
    cam = to_camera(state.scale.to(out_dtype), state.R.to(out_dtype), state.t.to(out_dtype))
    return LandmarkFit(identity=identity.to(out_dtype), expression=expression.to(out_dtype), camera=cam,
                       landmarks_fitted=fitted.to(out_dtype), landmark_ids=ids, identity_covariance=cov_full.to(out_dtype),
                       rms_px=rms.to(out_dtype), contour_fitted=state.contour_ids is not None, model=model)


def _inverse_block(L: Tensor, offset: int, k: int) -> Tensor:
    """``(H⁻¹)[o:o+k, o:o+k]`` from the Cholesky factor ``L (B, P, P)`` of ``H``. ``-> (B, k, k)``.

    ``H⁻¹ = L⁻ᵀ L⁻¹`` and the trailing block of ``L⁻¹`` is ``L[o:, o:]⁻¹`` (lower triangular), so the block is
    ``YᵀY`` with ``Y = L[o:, o:]⁻¹ E`` (``E`` the first ``k`` unit columns): ``k`` triangular solves, not a full inverse.
    """
    L_o = L[:, offset:, offset:]
    E = torch.eye(L_o.shape[-1], k, dtype=L.dtype, device=L.device).expand(L.shape[0], -1, -1)
    Y = torch.linalg.solve_triangular(L_o, E, upper=False)
    return Y.transpose(1, 2) @ Y


def _fit(model: MorphableModel, terms: FitTerms, points: Tensor, *, iterations: int, contour: bool,
         identity_components: int | None, expression: bool, lambda_identity: float, lambda_expression: float,
         sigma_mm: float, identity_prior_mean: Tensor | None = None) -> LandmarkFit:
    out_dtype = points.dtype if points.is_floating_point() else torch.float32
    problem = _Problem(terms, points.to(model.mean.device), contour=contour,
                       identity_components=identity_components, expression=expression,
                       lambda_identity=lambda_identity, lambda_expression=lambda_expression, sigma_mm=sigma_mm,
                       identity_prior_mean=identity_prior_mean)
    with torch.inference_mode():  # no autograd bookkeeping in the many small steps
        state = _initial_state(problem)
        problem.solve_shape(state)
        L = None
        for _ in range(iterations):
            if problem.use_contour:
                problem.update_contour(state)
            L = problem.joint_step(state)
        if L is None:
            cov = _inverse_block(problem.solve_shape(state), 0, problem.K)
        else:  # the identity block of the joint inverse: camera and expression marginalised
            cov = _inverse_block(L, 6, problem.K)
        if problem.use_contour:
            problem.update_contour(state)
    return _finish(model, problem, _ordinary(state), cov.clone(), out_dtype)


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
        :class:`LandmarkFit` (not differentiable: the iterations run under ``torch.inference_mode``).
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
