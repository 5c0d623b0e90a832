"""Similarity / rigid alignment: Umeyama's closed form and ICP against a surface.

* :func:`umeyama` — least-squares similarity (or rigid) transform between corresponding point sets,
  S. Umeyama, "Least-squares estimation of transformation parameters between two point patterns",
  IEEE PAMI 13(4), 1991 (eqs. 40-42). Reflections are never returned (``det R = +1``).
* :func:`icp` — Iterative Closest Point (Besl & McKay, PAMI 1992) that moves a *surface* (a triangle mesh,
  or a point cloud) onto fixed points, minimising ``Σ_i dist(p_i, T(surface))²`` with the distances
  measured in the fixed points' frame (so an isotropic scale cannot shrink the error away). Two steps:
  point-to-point (Umeyama on the closest points; the objective never increases) and point-to-plane
  (Chen & Medioni, 1992: Gauss-Newton on the distances along the surface normals, linearised in a
  small rotation, translation and scale; on a mesh, points whose closest point is on an edge or vertex
  use the direction to that point instead of a face normal, so the step is Gauss-Newton on the exact
  point-to-surface distances; guarded by a backtracking line search with a point-to-point fallback,
  so it never increases the objective either).

Arrays are numpy (float64 inside); rotations act on column vectors, points are rows: ``s · P @ R.T + t``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from morphable.geometry.closest_point import TriangleIndex, on_boundary
from morphable.geometry.rotation import axis_angle_to_matrix


@dataclass(frozen=True)
class Similarity:
    """``x ↦ scale · R x + translation`` (points as rows: ``scale · X @ R.T + t``).

    Attributes:
        scale: isotropic scale (> 0; 1 for a rigid transform).
        rotation: (3, 3) rotation matrix, det +1.
        translation: (3,) translation, in the target's units.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(1.0, np.eye(3), np.zeros(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points (..., 3)."""
        return self.scale * np.asarray(points, dtype=np.float64) @ self.rotation.T + self.translation

    def inverse(self) -> "Similarity":
        rt = self.rotation.T
        return Similarity(1.0 / self.scale, rt, -(rt @ self.translation) / self.scale)

    def compose(self, first: "Similarity") -> "Similarity":
        """``self ∘ first``: apply ``first``, then ``self``."""
        return Similarity(self.scale * first.scale, self.rotation @ first.rotation,
                          self.scale * self.rotation @ first.translation + self.translation)

    def matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix acting on column vectors."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def to_dict(self) -> dict:
        return {"scale": float(self.scale), "rotation": self.rotation.tolist(),
                "translation": self.translation.tolist()}


def _as_points(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected shape (N, 3), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains non-finite values")
    return x


def umeyama(source: np.ndarray, target: np.ndarray, *, scale: bool = True,
            weights: np.ndarray | None = None) -> Similarity:
    """Similarity ``T`` minimising ``Σ_i w_i |T(source_i) − target_i|²`` (Umeyama 1991).

    Args:
        source, target: (N, 3) corresponding points (N >= 3, not all collinear for a unique rotation).
        scale: solve for an isotropic scale; False gives the rigid (Kabsch) solution with scale 1.
        weights: optional (N,) non-negative weights.

    Returns:
        :class:`Similarity` mapping source onto target (a proper rotation even when a reflection would fit
        better: Umeyama's ``S = diag(1, 1, det(U)det(V))`` correction).
    """
    x, y = _as_points(source, "source"), _as_points(target, "target")
    if x.shape != y.shape or len(x) < 3:
        raise ValueError(f"umeyama: need equal shapes with N >= 3, got {x.shape} and {y.shape}")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(x),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights: expected (N,) non-negative with a positive sum, got shape {w.shape}")
    w = w / w.sum()
    mx, my = w @ x, w @ y
    xc, yc = x - mx, y - my
    cov = (yc * w[:, None]).T @ xc                     # Σ_xy = Σ_i w_i (y_i − μ_y)(x_i − μ_x)ᵀ   (eq. 38)
    u, d, vt = np.linalg.svd(cov)
    s = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:      # eq. 43: no reflection
        s[2] = -1.0
    rotation = u @ np.diag(s) @ vt                     # eq. 40
    var_x = float(w @ (xc ** 2).sum(axis=1))          # σ_x² (eq. 36)
    c = float(d @ s) / var_x if scale else 1.0         # eq. 42
    return Similarity(c, rotation, my - c * rotation @ mx)   # eq. 41


def aligned_distances(predicted: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> np.ndarray:
    """Shape error with pose and size factored out: per-vertex distances ``(V,)`` (the input unit, mm for model
    meshes) of ``predicted`` ``(V, 3)`` to ``truth`` ``(V, 3)`` after the :func:`umeyama` similarity that best
    maps the one onto the other (float64). The metric of the synthetic benchmarks (``photometric_bench.py``,
    ``rgbd_bench.py``, ``coarse_bench.py``) and of CoarseNet's validation, where the true vertices are known."""
    p, t = (x.detach().double().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
            for x in (predicted, truth))
    return np.linalg.norm(umeyama(p, t).apply(p) - t, axis=1)


def aligned_error(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean :func:`aligned_distances` per mesh: ``(B, V, 3), (B, V, 3) -> (B,)`` float64."""
    return torch.tensor([aligned_distances(p, t).mean() for p, t in zip(predicted, truth)], dtype=torch.float64)


@dataclass(frozen=True)
class IcpResult:
    """Outcome of :func:`icp`.

    Attributes:
        transform: similarity taking the moving surface into the fixed points' frame.
        distances: (N,) final distance of each fixed point to the transformed surface (fixed units).
        inliers: (N,) bool, the points used (all unless ``max_distance`` or ``exclude_boundary`` is set).
        iterations: the number of steps taken. converged: the relative decrease fell below tolerance.
    """

    transform: Similarity
    distances: np.ndarray
    inliers: np.ndarray
    iterations: int
    converged: bool


class _Surface:
    """The moving surface in its own frame: closest points (+ normals) for query points."""

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray | None, normals: np.ndarray | None,
                 with_rim: bool):
        self.with_rim = with_rim
        self.vertices = _as_points(vertices, "moving vertices")
        if triangles is not None:
            self.index = TriangleIndex(self.vertices, triangles)
            corners = self.vertices[self.index.triangles]
            n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
            self.face_normals = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
            self.tree = None
        else:
            self.index = None
            self.tree = cKDTree(self.vertices)
        self.normals = None if normals is None else _as_points(normals, "moving normals")

    def closest(self, points: np.ndarray):
        """Closest points (N,3), distances (N,), unit step normals (N,3) or None, on-rim flags (N,) or None."""
        if self.index is not None:
            found = self.index.query(points)
            rim = on_boundary(found, self.index.triangles) if self.with_rim else None
            # the distance's gradient direction: the face normal inside a triangle, the direction from
            # the closest point to the query point on an edge or a vertex (e.g. beyond the rim), which
            # makes the point-to-plane step Gauss-Newton on the true point-to-surface distances
            normals = self.face_normals[found.triangle]
            off_face = (found.barycentric == 0.0).any(axis=1) & (found.distance > 0)
            normals[off_face] = (points[off_face] - found.point[off_face]) / found.distance[off_face, None]
            return found.point, found.distance, normals, rim
        dist, ids = self.tree.query(points)
        return self.vertices[ids], dist, None if self.normals is None else self.normals[ids], None


def _small_similarity(delta: np.ndarray, centre: np.ndarray) -> Similarity:
    """``x ↦ (1+σ) exp([ω]×)(x − centre) + centre + τ`` for ``delta = (ω (3), τ (3), σ)``."""
    rot = axis_angle_to_matrix(torch.as_tensor(delta[:3], dtype=torch.float64)).numpy()
    s = 1.0 + delta[6]
    return Similarity(s, rot, centre + delta[3:6] - s * rot @ centre)


def _point_to_plane_step(fixed: np.ndarray, closest: np.ndarray, normals: np.ndarray, scale: bool) -> np.ndarray:
    """Gauss-Newton step ``(ω, τ, σ)`` for ``Σ (n_i · (ΔT(y_i) − p_i))²`` linearised at ΔT = identity.

    ``y`` are the current closest points on the (already transformed) surface and ``n`` their normals;
    ``n·(ω × (y − c)) = ω · ((y − c) × n)``.
    """
    centre = fixed.mean(axis=0)
    yc = closest - centre
    residual = np.einsum("ij,ij->i", normals, closest - fixed)
    columns = [np.cross(yc, normals), normals]
    if scale:
        columns.append(np.einsum("ij,ij->i", normals, yc)[:, None])
    jac = np.concatenate(columns, axis=1)
    step, *_ = np.linalg.lstsq(jac, -residual, rcond=None)
    return np.concatenate([step, np.zeros(7 - len(step))]), centre


def icp(fixed_points: np.ndarray, moving_vertices: np.ndarray, moving_triangles: np.ndarray | None = None,
        *, method: str = "point_to_plane", scale: bool = False, init: Similarity | None = None,
        max_iterations: int = 50, tolerance: float = 1e-6, max_distance: float | None = None,
        moving_normals: np.ndarray | None = None, exclude_boundary: bool = False) -> IcpResult:
    """Align a moving surface onto fixed points by ICP.

    Minimises ``E(T) = Σ_{i ∈ inliers} dist(p_i, T(M))²`` over similarities (``scale=True``) or
    rigid transforms, where ``dist`` is the exact point-to-surface distance
    (:mod:`morphable.geometry.closest_point`) for a mesh, or the nearest-vertex distance for a point cloud.

    Args:
        fixed_points: (N, 3) points that stay put (e.g. a cropped ground-truth scan), in mm.
        moving_vertices: (V, 3) the surface to move. moving_triangles: (F, 3) int, or None for a cloud.
        method: "point_to_plane" (default) or "point_to_point".
        scale: also solve for an isotropic scale.
        init: starting transform (default identity).
        max_iterations, tolerance: stop after that many steps, or when ``E`` decreases by less than
            ``tolerance · E`` (or E reaches 0).
        max_distance: points farther than this from the surface are left out (trimmed ICP: for crops
            that do not overlap fully). None uses every point. Inliers are re-selected after each step;
            a step is taken only if it lowers E over the inliers it was computed from.
        moving_normals: (V, 3) unit vertex normals; needed for point-to-plane on a point cloud.
        exclude_boundary: leave out points whose closest point is on the moving mesh's rim (Turk & Levoy
            1994): they lie beyond the surface, outside the overlap (needs ``moving_triangles``).

    Returns:
        :class:`IcpResult`.
    """
    if method not in ("point_to_plane", "point_to_point"):
        raise ValueError(f"icp: method must be 'point_to_plane' or 'point_to_point', got {method!r}")
    fixed = _as_points(fixed_points, "fixed_points")
    if method == "point_to_plane" and moving_triangles is None and moving_normals is None:
        raise ValueError("icp: point_to_plane on a point cloud needs moving_normals")
    if exclude_boundary and moving_triangles is None:
        raise ValueError("icp: exclude_boundary needs moving_triangles")
    surface = _Surface(moving_vertices, moving_triangles, moving_normals, exclude_boundary)
    cap = np.inf if max_distance is None else float(max_distance)

    def evaluate(t: Similarity):
        # closest point on T(M) to p is T(closest point on M to T⁻¹p); distances scale by s
        c0, d0, n0, rim = surface.closest(t.inverse().apply(fixed))
        dist = t.scale * d0
        used = dist <= cap
        if exclude_boundary:
            used &= ~rim
        return c0, dist, n0, used

    def energy(dist: np.ndarray, used: np.ndarray) -> float:
        return float((np.minimum(dist[used], cap) ** 2).sum())

    transform = init or Similarity.identity()
    c0, dist, n0, inl = evaluate(transform)
    converged, iterations = energy(dist, inl) == 0.0, 0
    while not converged and iterations < max_iterations and inl.sum() >= 3:
        iterations += 1
        # each step must lower E over the current inlier set (whose distances are then measured
        # exactly, wherever the step moves their closest points); the set is updated afterwards
        current = energy(dist, inl)
        candidates = []
        if method == "point_to_plane":
            closest, normals = transform.apply(c0[inl]), n0[inl] @ transform.rotation.T
            delta, centre = _point_to_plane_step(fixed[inl], closest, normals, scale)
            candidates = [_small_similarity(delta * h, centre).compose(transform) for h in (1, .5, .25)]
        candidates.append(umeyama(c0[inl], fixed[inl], scale=scale))
        for trial in candidates:
            trial_c0, trial_dist, trial_n0, trial_inl = evaluate(trial)
            trial_energy = energy(trial_dist, inl)
            if trial_energy <= current:
                break
        else:
            converged = True                                  # no step lowers E: at a (local) optimum
            break
        transform, c0, dist, n0, inl = trial, trial_c0, trial_dist, trial_n0, trial_inl
        converged = current - trial_energy <= tolerance * current or trial_energy == 0.0
    return IcpResult(transform, dist, inl, iterations, bool(converged))
