"""Video tracking: one identity for the whole clip, a pose and an expression per frame, kept coherent over
time by a motion prior and by dense optical flow between consecutive frames.

The tracking energy of Zhang's group (seed ``zhang-deep-3d-face-modeling``; Guo et al., "Self-supervised
CNN for Unconstrained 3D Facial Performance Capture from an RGB-D Camera", arXiv 1808.05323, the "pair
loss"), minimised here per frame by Gauss–Newton in the eos landmark fit's variables
(:mod:`morphable.fitting.landmarks`) instead of by a network:

    E(χ_n) = E_lan(χ_n) + E_reg(χ_n) + w_flow E_flow(χ_n, χ_{n−1}) + E_temp(χ_n, χ_{n−1}),  E_same hard.

* **E_same** ``‖α_id,n1 − α_id,n2‖²``: enforced exactly — the clip has one identity ``α_id``. It is the
  product of the keyframes' Gaussian identity posteriors (:func:`fuse_identities`: each keyframe's landmark
  fit with its camera and expression marginalised, :attr:`LandmarkFit.identity_covariance`), optionally
  centred on a regressor's prediction. The seed also shares the albedo; this tracker fits no albedo or
  light (landmarks and flow only), so there is none to share.
* **E_lan**: the 68 landmarks (jawline correspondences chosen per pose, :mod:`~morphable.fitting.contour`),
  noise σ in mm on the face; **E_reg**: the expression prior (blendshape weights bounded to [0, 1]).
* **E_flow** ``= 1/|F| Σ_p ‖(Pr_n(p) − Pr_{n−1}(p)) − f(Pr_{n−1}(p))‖²``: ``f`` is the dense optical flow
  from frame n−1 to n (OpenCV's Farnebäck, on a crop around the face, :func:`face_flow`); ``p`` runs over
  ``flow_points`` face vertices facing the camera in frame n−1. With the previous projection fixed,
  each term is a 2D target ``Pr_{n−1}(p) + f(·)`` for vertex ``p``: rows of the same least-squares system
  as the landmarks, with weight ``w_flow``.
* **E_temp** (temporal coherence): a Gaussian motion prior on the change of rotation (rad), log-scale,
  translation (mm on the face) and expression between consecutive frames.

Each frame starts from the previous frame's solution (the seed's CoarseNet initialisation does not exist
in this project yet); the first frame, and the first after frames without a face, start from the linear
camera estimate. Frames without landmarks are *held*: their parameters are interpolated from the nearest
tracked frames on both sides (:func:`track_landmarks` reports them).

:class:`FaceFollower` supplies the landmarks: dlib's 68-point predictor in a box tracked from the previous
frame's landmarks, re-detecting over the whole frame only when the face is lost.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from morphable.fitting.camera_estimation import (estimate_scaled_orthographic, project_scaled_orthographic,
                                                 refine_scaled_orthographic, to_camera)
from morphable.fitting.contour import CONTOUR_IDS, contour_correspondences
from morphable.fitting.landmarks import SIGMA_MM, check_landmarks, fit_landmarks, fit_terms
from morphable.fitting.shape import joint_normal_equations, solve_coefficients
from morphable.geometry.camera import ScaledOrthographic, rescale_pixels
from morphable.geometry.mesh import vertex_normals
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from morphable.models.base import N_LANDMARKS, MorphableModel


FRESH_ROUNDS = 3
"""Contour-then-Gauss–Newton rounds for a frame that does not start from the previous frame's solution."""


@dataclass(frozen=True)
class TrackConfig:
    """Weights of the tracking energy (module docstring). Motion σ's are per frame at the video's rate.

    Attributes:
        sigma_mm: landmark noise σ (mm on the face), as in :func:`~morphable.fitting.landmarks.fit_landmarks`.
        lambda_expression: expression prior precision multiplier (E_reg).
        flow_weight: weight of one E_flow point relative to one landmark (w_flow; 0 switches E_flow off).
        flow_points: face vertices sampled for E_flow (those facing the camera are used).
        motion_rotation_deg / motion_scale / motion_translation_mm / motion_expression: σ of the change
            between consecutive frames of the rotation (degrees), log-scale, translation (mm on the face)
            and each expression coefficient (E_temp; ``inf`` switches a part off).
        iterations: Gauss–Newton steps per frame; the jawline correspondences are chosen once per frame, at
            its starting pose (the previous frame's, close enough in a video), or before each of
            ``FRESH_ROUNDS`` rounds of steps for a frame started from the linear camera estimate.
        keyframes: frames whose landmark fits are fused into the clip identity (E_same).
        constant_velocity: centre E_temp on the constant-velocity prediction from the two previous frames
            (a prior on the second difference, i.e. acceleration) instead of on the previous frame.
        contour_hysteresis_px: a jawline landmark keeps the previous frame's vertex unless another is this
            much closer (working px; 0 re-chooses freely every frame).
    """

    sigma_mm: float = SIGMA_MM
    lambda_expression: float = 1.0
    flow_weight: float = 0.1
    flow_points: int = 200
    motion_rotation_deg: float = 1.0
    motion_scale: float = 0.01
    motion_translation_mm: float = 1.0
    motion_expression: float = 0.1
    iterations: int = 1
    keyframes: int = 8
    constant_velocity: bool = True
    contour_hysteresis_px: float = 4.0


@dataclass(frozen=True)
class Track:
    """Result of :func:`track_landmarks` for ``N`` frames (float64).

    Attributes:
        identity: ``(K,)`` the clip's standardised identity coefficients; identity_covariance ``(K, K)``.
        expression: ``(N, Ke)`` per frame.
        camera: :class:`ScaledOrthographic` with batch ``N`` (pixels of the landmarks' frame).
        landmarks_fitted: ``(N, 68, 2)`` px, the model's landmarks projected (NaN where undefined).
        rms_px: ``(N,)`` RMS landmark error over the used landmarks (NaN for held frames).
        flow_used: ``(N,)`` number of E_flow points used per frame.
        held: frame indices without landmarks, interpolated from their neighbours.
    """

    identity: Tensor
    identity_covariance: Tensor
    expression: Tensor
    camera: ScaledOrthographic
    landmarks_fitted: Tensor
    rms_px: Tensor
    flow_used: Tensor
    held: tuple[int, ...]


# --- E_same: one identity for the clip ---------------------------------------------------------------------
def fuse_identities(identities: Tensor, covariances: Tensor, prior_mean: Tensor | None = None,
                    prior_precision: float = 1.0) -> tuple[Tensor, Tensor]:
    """The one identity that ``B`` frames' Gaussian posteriors agree on (their product).

    Each frame's posterior ``N(α_i, Σ_i)`` contains the same prior ``N(μ, λ⁻¹ I)`` once; the product of the
    frames' likelihoods and one prior has precision ``P = Σ_i Σ_i⁻¹ − (B − 1) λ I`` and mean
    ``P⁻¹ (Σ_i Σ_i⁻¹ α_i − (B − 1) λ μ)`` — the joint MAP of a shared identity (E_same as a hard
    constraint) for linear landmark models at the frames' cameras and expressions.

    Args:
        identities: ``(B, K)``; covariances: ``(B, K, K)`` (components not fitted: zero rows/columns are
            replaced by the prior's).
        prior_mean: ``(K,)`` μ (default 0); prior_precision: λ.
    Returns:
        ``identity (K,)`` and ``covariance (K, K)``.
    """
    B, K = identities.shape
    f64 = torch.float64
    cov = covariances.to(f64).clone()
    unfitted = cov.diagonal(dim1=1, dim2=2) == 0
    cov = cov + torch.diag_embed(unfitted.to(f64) / prior_precision)
    P_i = torch.linalg.inv(cov)
    mu = identities.new_zeros(K, dtype=f64) if prior_mean is None else prior_mean.reshape(K).to(f64)
    P = P_i.sum(0) - (B - 1) * prior_precision * torch.eye(K, dtype=f64, device=P_i.device)
    b = (P_i @ identities.to(f64)[..., None])[..., 0].sum(0) - (B - 1) * prior_precision * mu
    return torch.linalg.solve(P, b), torch.linalg.inv(P)


def keyframe_indices(has_face: Sequence[bool], count: int) -> list[int]:
    """Up to ``count`` frames with a face, spread evenly over the clip."""
    good = [i for i, ok in enumerate(has_face) if ok]
    if len(good) <= count:
        return good
    return [good[int(round(j))] for j in np.linspace(0, len(good) - 1, count)]


def clip_identity(model: MorphableModel, landmarks: Tensor, *, prior_mean: Tensor | None = None,
                  prior_precision: float = 1.0, sigma_mm: float = SIGMA_MM,
                  iterations: int = 5) -> tuple[Tensor, Tensor]:
    """E_same: fit each of ``B`` keyframes' landmarks (``(B, 68, 2)`` px) and fuse the identities.

    Args:
        prior_mean: ``(K,)`` centre of the identity prior (e.g. a regressor's prediction averaged over
            the keyframes), default the model's mean; prior_precision: its λ.
    Returns:
        ``identity (K,)`` and ``covariance (K, K)``, float64 (:func:`fuse_identities`).
    """
    check_landmarks(landmarks)
    kwargs = {}
    if prior_mean is not None:
        kwargs = {"identity_prior_mean": prior_mean.reshape(1, -1).to(landmarks.dtype),
                  "lambda_identity": prior_precision}
    fit = fit_landmarks(model, landmarks, iterations=iterations, sigma_mm=sigma_mm, **kwargs)
    return fuse_identities(fit.identity, fit.identity_covariance, prior_mean, prior_precision)


# --- E_flow: dense optical flow around the face ---------------------------------------------------------------
@dataclass(frozen=True)
class FlowField:
    """Dense optical flow from one frame to the next over a square crop around the face.

    Attributes:
        flow: ``(h, w, 2)`` float32 displacement in crop pixels (x right, y down).
        origin: ``(2,)`` frame pixel ``(x, y)`` of the crop's top-left corner pixel.
        scale: crop px per frame px.
    """

    flow: np.ndarray
    origin: np.ndarray
    scale: float

    def displacement(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flow at ``(N, 2)`` frame pixels: displacement ``(N, 2)`` frame px (bilinear) and ``(N,)`` bool
        inside the crop."""
        import cv2

        c = rescale_pixels(np.asarray(points, np.float64) - self.origin, self.scale).astype(np.float32)
        h, w = self.flow.shape[:2]
        inside = (c[:, 0] >= 0) & (c[:, 0] <= w - 1) & (c[:, 1] >= 0) & (c[:, 1] <= h - 1)
        d = cv2.remap(self.flow, c[:, :1], c[:, 1:], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return d.reshape(-1, 2).astype(np.float64) / self.scale, inside


def landmark_box(landmarks: np.ndarray) -> np.ndarray | None:
    """``(left, top, right, bottom)`` of the finite landmarks ``(68, 2)``, or ``None``."""
    pts = landmarks[np.isfinite(landmarks).all(1)]
    if not len(pts):
        return None
    return np.concatenate([pts.min(0), pts.max(0)])


def face_flow(previous: np.ndarray, current: np.ndarray, box: np.ndarray, *, size: int = 128,
              margin: float = 0.6) -> FlowField:
    """Farnebäck dense flow (``cv2.calcOpticalFlowFarneback``; pyramid 0.5 × 3, window 15) from
    ``previous`` to ``current`` (``(H, W)`` uint8 grey frames) over the square around ``box``
    (``(left, top, right, bottom)`` px, widened by ``margin`` of its size on each side), resized to
    ``size`` px: the whole frame would cost ~40× more for the same face."""
    import cv2

    H, W = previous.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1], 8.0) * (0.5 + margin)
    x0, y0 = int(max(0, np.floor(cx - half))), int(max(0, np.floor(cy - half)))
    x1, y1 = int(min(W, np.ceil(cx + half) + 1)), int(min(H, np.ceil(cy + half) + 1))
    scale = size / max(x1 - x0, y1 - y0)
    shape = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    a = cv2.resize(previous[y0:y1, x0:x1], shape, interpolation=cv2.INTER_AREA)
    b = cv2.resize(current[y0:y1, x0:x1], shape, interpolation=cv2.INTER_AREA)
    flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return FlowField(flow=flow, origin=np.array([x0, y0], np.float64), scale=float(scale))


# --- the per-frame solve ----------------------------------------------------------------------------------------
@dataclass
class _Pose:
    scale: Tensor  # (1,)
    R: Tensor  # (1, 3, 3)
    t: Tensor  # (1, 2)
    expression: Tensor  # (1, Ke)


class _ClipModel:
    """The model's landmark, contour and flow-point rows with the clip identity folded into the mean."""

    def __init__(self, model: MorphableModel, identity: Tensor, config: TrackConfig):
        f64 = torch.float64
        terms = fit_terms(model)
        K, Ke = terms.n_identity, terms.n_expression
        a = identity.to(f64).reshape(K)
        self.terms, self.Ke = terms, Ke
        self.bounded = terms.expression_bounded
        self.lm_mean = terms.landmark_mean + terms.landmark_basis[..., :K] @ a  # (68, 3)
        self.lm_basis = terms.landmark_basis[..., K:]  # (68, 3, Ke)
        self.contour = terms.contour is not None
        if self.contour:
            self.region_mean = terms.region_mean + terms.region_basis[..., :K] @ a
            self.region_basis = terms.region_basis[..., K:]
        ids = model.region_ids("face")
        g = torch.Generator().manual_seed(0)
        pick = ids[torch.randperm(ids.numel(), generator=g)[:config.flow_points]]
        shape = model.mean.to(f64) + model.identity_basis.to(f64) @ a
        self.flow_mean = shape[pick]  # (M, 3)
        self.flow_basis = (model.expression_basis.to(f64)[pick] if Ke else shape.new_zeros(len(pick), 3, 0))
        self.flow_normals = vertex_normals(shape[None], model.triangles)[0, pick]  # (M, 3), identity shape, neutral
        self.fixed = terms.landmark_mask.clone()  # (68,) landmarks at fixed vertices
        self.used = self.fixed.clone()  # (68,) and the jawline's pose-dependent ones
        if self.contour:
            self.fixed[list(CONTOUR_IDS)] = False
            self.used[list(CONTOUR_IDS)] = True
        inf = float("inf")
        lo, hi = (0.0, 1.0) if self.bounded else (-inf, inf)
        self.lower = torch.full((Ke,), lo, dtype=f64)
        self.upper = torch.full((Ke,), hi, dtype=f64)

    def landmark_rows(self, contour_ids: Tensor | None) -> tuple[Tensor, Tensor]:
        """Mean ``(68, 3)`` and expression basis ``(68, 3, Ke)`` rows for the 68 landmarks."""
        mean, basis = self.lm_mean, self.lm_basis
        if contour_ids is not None:
            pos = self.terms.region_position[contour_ids]
            mean, basis = mean.clone(), basis.clone()
            mean[list(CONTOUR_IDS)] = self.region_mean[pos]
            basis[list(CONTOUR_IDS)] = self.region_basis[pos]
        return mean, basis

    def project(self, mean: Tensor, basis: Tensor, pose: _Pose) -> Tensor:
        """``(N, 3)``, ``(N, 3, Ke)`` rows → ``(N, 2)`` px."""
        X = mean + basis @ pose.expression[0]
        return project_scaled_orthographic(X[None], pose.scale, pose.R, pose.t)[0]

    def update_contour(self, y: Tensor, pose: _Pose) -> Tensor:
        def project(positions: Tensor) -> Tensor:
            return self.project(self.region_mean[positions], self.region_basis[positions], pose)[None]

        return contour_correspondences(project, pose.R, y[None], self.terms.contour)[0]


def _initial_pose(clip: _ClipModel, y: Tensor, w: Tensor) -> _Pose:
    """The linear camera estimate for the fixed landmarks, neutral expression."""
    X, yy, ww = clip.lm_mean[None], torch.nan_to_num(y, nan=0.0)[None], w[None]
    s, R, t = estimate_scaled_orthographic(X, yy, ww)
    s, R, t = refine_scaled_orthographic(X, yy, ww, s, R, t, steps=3)
    return _Pose(s, R, t, y.new_zeros(1, clip.Ke))


def _flow_rows(clip: _ClipModel, flow: FlowField, previous: _Pose) -> tuple[Tensor, Tensor, Tensor]:
    """E_flow targets: ``mean (M', 3)``, ``basis (M', 3, Ke)``, ``targets (M', 2)`` px for the sampled
    vertices that face the camera in the previous frame and lie inside the flow crop."""
    facing = (clip.flow_normals @ previous.R[0].T)[:, 2] > 0.3  # view-frame normal towards the viewer
    p_prev = clip.project(clip.flow_mean, clip.flow_basis, previous)
    d, inside = flow.displacement(p_prev.numpy())
    keep = facing & torch.from_numpy(inside)
    targets = p_prev + torch.from_numpy(d).to(p_prev.dtype)
    return clip.flow_mean[keep], clip.flow_basis[keep], targets[keep]


def _predict(previous: _Pose, before: _Pose | None, clip: _ClipModel) -> _Pose:
    """E_temp's centre: the previous pose, or with the one ``before`` it the constant-velocity prediction
    ``2 χ_{n−1} − χ_{n−2}`` (rotation and log-scale on their manifolds; expression kept in its bounds)."""
    if before is None:
        return previous
    step = axis_angle_to_matrix(matrix_to_axis_angle(previous.R @ before.R.transpose(1, 2)))
    e = torch.maximum(torch.minimum(2 * previous.expression - before.expression, clip.upper), clip.lower)
    return _Pose(previous.scale**2 / before.scale, step @ previous.R, 2 * previous.t - before.t, e)


def _motion_prior(H: Tensor, g: Tensor, pose: _Pose, previous: _Pose, config: TrackConfig) -> None:
    """Add E_temp's camera part, centred on ``previous`` (or :func:`_predict`), to the Gauss–Newton system
    ``H δ = g`` (``δ = (ω, log s, t px, Δe)``; the data terms are in (mm/σ)², so is this prior: each σ is one
    standard deviation of the frame-to-frame change)."""
    w_rot = 1.0 / np.deg2rad(config.motion_rotation_deg) ** 2
    omega = matrix_to_axis_angle(previous.R @ pose.R.transpose(1, 2))[0]  # exp(ω) R = R_prev
    H[0, :3, :3] += w_rot * torch.eye(3, dtype=H.dtype)
    g[0, :3] += w_rot * omega
    w_s = 1.0 / config.motion_scale**2
    H[0, 3, 3] += w_s
    g[0, 3] += w_s * torch.log(previous.scale[0] / pose.scale[0])
    w_t = 1.0 / (config.motion_translation_mm * float(pose.scale[0])) ** 2  # σ in px
    H[0, 4:6, 4:6] += w_t * torch.eye(2, dtype=H.dtype)
    g[0, 4:6] += w_t * (previous.t[0] - pose.t[0])


def _sticky(clip: _ClipModel, y: Tensor, pose: _Pose, new: Tensor, old: Tensor, hysteresis_px: float) -> Tensor:
    """Keep the previous frame's jawline vertex for each contour landmark unless the new choice lies closer to
    the landmark by more than ``hysteresis_px`` (at ``pose``): dlib's jaw points slide along the outline by a
    pixel or two from frame to frame, and each switch of vertex would be a jump of the fitted landmark."""
    pos_new, pos_old = clip.terms.region_position[new], clip.terms.region_position[old]
    target = y[list(CONTOUR_IDS)]
    d_new = (clip.project(clip.region_mean[pos_new], clip.region_basis[pos_new], pose) - target).norm(dim=-1)
    d_old = (clip.project(clip.region_mean[pos_old], clip.region_basis[pos_old], pose) - target).norm(dim=-1)
    return torch.where(d_old - d_new > hysteresis_px, new, old)


def _solve_frame(clip: _ClipModel, y: Tensor, pose: _Pose, previous: _Pose | None, flow: FlowField | None,
                 config: TrackConfig, previous_contour: Tensor | None = None,
                 predicted: _Pose | None = None) -> tuple[_Pose, Tensor | None, int]:
    """Gauss–Newton on one frame's energy from ``pose``; returns the pose, the contour ids and the number of
    E_flow points. ``previous`` (the frame before, tracked) enables E_flow and E_temp (centred on
    ``predicted``, default ``previous``); ``previous_contour`` are its jawline vertices (:func:`_sticky`)."""
    predicted = predicted if predicted is not None else previous
    f64 = torch.float64
    valid = torch.isfinite(y).all(-1)
    y0 = torch.nan_to_num(y, nan=0.0)
    w_lm = (valid & clip.used).to(f64)
    rows = None
    if flow is not None and previous is not None and config.flow_weight > 0:
        rows = _flow_rows(clip, flow, previous)
    n_flow = 0 if rows is None else rows[0].shape[0]
    Ke = clip.Ke
    lam = torch.full((Ke,), config.lambda_expression, dtype=f64)
    prior_mean = None
    if previous is not None and np.isfinite(config.motion_expression):
        w_e = 1.0 / config.motion_expression**2
        prior_mean = (w_e * predicted.expression) / (lam + w_e)
        lam = lam + w_e
    inf = torch.full((6,), float("inf"), dtype=f64)
    contour_ids = None
    for _ in range(1 if previous is not None else FRESH_ROUNDS):
        if clip.contour:
            contour_ids = clip.update_contour(y0, pose)
            if previous_contour is not None and config.contour_hysteresis_px > 0:
                contour_ids = _sticky(clip, y0, pose, contour_ids, previous_contour, config.contour_hysteresis_px)
        mean, basis = clip.landmark_rows(contour_ids)
        targets, weights = y0, w_lm
        if n_flow:
            mean, basis = torch.cat([mean, rows[0]]), torch.cat([basis, rows[1]])
            targets = torch.cat([y0, rows[2]])
            weights = torch.cat([w_lm, w_lm.new_full((n_flow,), config.flow_weight)])
        for _ in range(config.iterations):
            H, g = joint_normal_equations(mean[None], basis, pose.expression, targets[None], weights[None],
                                          pose.scale, pose.R, pose.t, config.sigma_mm, lam, prior_mean)
            if previous is not None:
                _motion_prior(H, g, pose, predicted, config)
            lo = torch.cat([-inf, clip.lower - pose.expression[0]])[None]
            hi = torch.cat([inf, clip.upper - pose.expression[0]])[None]
            delta = solve_coefficients(H, g, lo, hi)[0]
            e = torch.maximum(torch.minimum(pose.expression + delta[6:], clip.upper), clip.lower)
            pose = _Pose(pose.scale * torch.exp(delta[3]), axis_angle_to_matrix(delta[None, :3]) @ pose.R,
                         pose.t + delta[4:6], e)
    return pose, contour_ids, n_flow


def _interpolate(a: _Pose, b: _Pose, w: float) -> _Pose:
    """The pose ``w`` of the way from ``a`` to ``b`` (rotation along the geodesic, log-linear scale)."""
    omega = matrix_to_axis_angle(a.R.transpose(1, 2) @ b.R)
    return _Pose(a.scale * (b.scale / a.scale) ** w, a.R @ axis_angle_to_matrix(w * omega),
                 a.t + w * (b.t - a.t), a.expression + w * (b.expression - a.expression))


def track_landmarks(model: MorphableModel, landmarks: Tensor, identity: Tensor, *,
                    flows: Sequence[FlowField | None] | None = None, config: TrackConfig = TrackConfig(),
                    identity_covariance: Tensor | None = None) -> Track:
    """Track pose and expression through ``N`` frames with one identity (module docstring).

    Args:
        landmarks: ``(N, 68, 2)`` px per frame (0-based, x right, y down); a frame whose landmarks are all
            NaN has no face and is held.
        identity: ``(K,)`` the clip's identity (e.g. :func:`clip_identity`), held fixed (E_same).
        flows: ``N`` entries, ``flows[n]`` the flow from frame ``n−1`` to ``n`` (:func:`face_flow`) or ``None``.
        config: :class:`TrackConfig`.
        identity_covariance: ``(K, K)`` stored in the result (default zeros).
    Returns:
        :class:`Track`.
    Raises:
        ValueError: wrong shapes, or no frame with at least 4 usable landmarks.
    """
    check_landmarks(landmarks)
    N = landmarks.shape[0]
    if flows is not None and len(flows) != N:
        raise ValueError(f"track_landmarks: {len(flows)} flow fields for {N} frames")
    f64 = torch.float64
    clip = _ClipModel(model, identity, config)
    y_all = landmarks.detach().cpu().to(f64)
    poses: list[_Pose | None] = [None] * N
    contours: list[Tensor | None] = [None] * N
    flow_used = torch.zeros(N, dtype=torch.int64)
    for n in range(N):
        y = y_all[n]
        w_fixed = (torch.isfinite(y).all(-1) & clip.fixed).to(f64)
        if w_fixed.sum() < 4:
            continue
        previous = poses[n - 1] if n > 0 else None
        flow = flows[n] if flows is not None else None
        if previous is None:  # first frame, or the first after frames without a face
            poses[n], contours[n], flow_used[n] = _solve_frame(clip, y, _initial_pose(clip, y, w_fixed), None,
                                                               None, config)
            continue
        before = poses[n - 2] if n > 1 and config.constant_velocity else None
        poses[n], contours[n], flow_used[n] = _solve_frame(clip, y, previous, previous, flow, config, contours[n - 1],
                                                           _predict(previous, before, clip))
    tracked = [n for n in range(N) if poses[n] is not None]
    if not tracked:
        raise ValueError("track_landmarks: no frame has at least 4 usable landmarks")
    held = tuple(n for n in range(N) if poses[n] is None)
    for n in held:
        before = max((m for m in tracked if m < n), default=None)
        after = min((m for m in tracked if m > n), default=None)
        if before is None or after is None:
            near = after if before is None else before
            poses[n], contours[n] = poses[near], contours[near]
        else:
            poses[n] = _interpolate(poses[before], poses[after], (n - before) / (after - before))
            contours[n] = contours[before if n - before <= after - n else after]
    fitted = torch.empty(N, N_LANDMARKS, 2, dtype=f64)
    rms = torch.full((N,), float("nan"), dtype=f64)
    used = clip.used
    for n in range(N):
        proj = clip.project(*clip.landmark_rows(contours[n]), poses[n])
        fitted[n] = torch.where(used[:, None], proj, proj.new_tensor(float("nan")))
        if n not in held:
            ok = used & torch.isfinite(y_all[n]).all(-1)
            rms[n] = ((proj[ok] - y_all[n][ok]) ** 2).sum(-1).mean().sqrt()
    camera = to_camera(torch.cat([p.scale for p in poses]), torch.cat([p.R for p in poses]),
                       torch.cat([p.t for p in poses]))
    K = identity.numel()
    cov = identity_covariance if identity_covariance is not None else identity.new_zeros(K, K)
    return Track(identity=identity.detach().cpu().to(f64).reshape(K), identity_covariance=cov.detach().cpu().to(f64),
                 expression=torch.cat([p.expression for p in poses]), camera=camera, landmarks_fitted=fitted,
                 rms_px=rms, flow_used=flow_used, held=held)


def landmark_jitter(points: Tensor | np.ndarray) -> float:
    """Mean length of the frame-to-frame second difference ``x_{n+1} − 2 x_n + x_{n−1}`` of ``(N, L, 2)``
    landmark tracks (px; points or frames with NaN are skipped)."""
    x = np.asarray(points, np.float64)
    d2 = np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=-1)
    d2 = d2[np.isfinite(d2)]
    return float(d2.mean()) if d2.size else float("nan")


# --- landmarks per frame ---------------------------------------------------------------------------------------
class FaceFollower:
    """The 68 landmarks of one face through a video, frame by frame.

    The first frame (and any frame after the face was lost) runs dlib's full detection
    (:func:`~morphable.detect.choice.detect_faces`, the largest face). Later frames look only around the
    previous landmarks: the square of ``roi`` × their extent, shrunk so the face is about ``face_px``
    pixels, is searched by the HOG detector without upsampling (a few ms instead of a full-frame pyramid),
    and the 68-point predictor runs in the box found, at full resolution. No face in the region means the
    face is lost: the full detection runs on that frame.

    Args:
        detector: the full detection's dlib detector (``auto``, ``hog``, ``cnn``).
        roi: side of the searched square, in landmark extents (1.8 leaves 0.4 extents of motion per frame).
        face_px: the face's size in the shrunk square (HOG's window is 80 px; 90 costs 11 ms of CPU per
            640-px frame against 17 ms for ``roi`` 2.2 and 100 px).
    """

    def __init__(self, detector: str = "auto", *, roi: float = 1.8, face_px: float = 90.0):
        self.detector = detector
        self.roi = roi
        self.face_px = face_px
        self.previous: np.ndarray | None = None
        self.full_detections = 0

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray | None, str]:
        """``(H, W, 3)`` uint8 RGB → ``(68, 2)`` landmarks px (``None``: no face) and how they were found
        (``tracked``, ``dlib-hog``/``dlib-cnn`` for a full detection, ``none``)."""
        from morphable.detect.dlib68 import landmarks_in_box

        if self.previous is not None:
            box = self._search(frame, landmark_box(self.previous))
            if box is not None:
                self.previous = landmarks_in_box(frame, box)
                return self.previous, "tracked"
        from morphable.detect.choice import detect_faces

        self.full_detections += 1
        chosen, _ = detect_faces(frame, "largest", detector=self.detector)
        if not chosen:
            self.previous = None
            return None, "none"
        d = chosen[0][1]
        self.previous = d.landmarks
        return d.landmarks, f"dlib-{d.detector}"

    def _search(self, frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """The HOG face box near ``box`` (frame px), or ``None``."""
        from PIL import Image

        from morphable.detect.dlib68 import face_boxes

        H, W = frame.shape[:2]
        extent = max(box[2] - box[0], box[3] - box[1], 1.0)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = extent * self.roi / 2
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
        x1, y1 = int(min(W, cx + half + 1)), int(min(H, cy + half + 1))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        f = self.face_px / extent
        crop = frame[y0:y1, x0:x1]
        size = (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f)))
        small = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.BILINEAR))
        found = face_boxes(small)
        if not found:
            return None
        factor = np.array([(x1 - x0) / size[0], (y1 - y0) / size[1]] * 2)
        boxes = [(b + 0.5) * factor - 0.5 + np.array([x0, y0, x0, y0]) for b, _ in found]
        centre = np.array([cx, cy])
        return min(boxes, key=lambda b: np.linalg.norm((b[:2] + b[2:]) / 2 - centre))
