"""Render-and-recover against a 3D scan: how close does a model's neutral face get, NoW-style?

The library half of ``benchmarks/scan_recover.py`` (see ``docs/fidelity.md``):

* :func:`load_scan`: a scan and its landmarks, converted to millimetres; the landmarks may be the
  FLAME/iBUG-51 set (iBUG-68 points 17..67, as ``flame-fitting/data/scan_lmks.npy``), a full iBUG-68 set,
  or the 7 NoW points; the 7 NoW landmarks (:data:`morphable.eval.now.NOW_LANDMARKS_IBUG68`) are kept.
* :func:`load_flame_mesh_scan`: a mesh in FLAME's topology (FLAME's template, a FLAME sample, a scan
  registered to FLAME) as a :class:`Scan`, its landmarks placed by FLAME's static landmark embedding:
  faces the scored model was not built from, for render-and-recover beyond the one real scan.
* :func:`scored_model`: the model on the part of its mesh a face scan sees (ICT: ``face`` + ``head_neck``
  + ``eyes``, leaving out the mouth socket, teeth, tongue, eyelashes and other hidden or hair-like parts;
  the whole mesh for models without those regions). Its 68 landmark definitions give the mesh's 7 NoW
  points (:func:`mesh_now_landmarks`).
* :func:`score_identity` / :func:`score_mesh`: NoW's scan-to-mesh error (:func:`morphable.eval.now.now_errors`:
  sphere crop of the scan, similarity alignment on the 7 landmarks, point-to-surface refinement; median
  and mean of the cropped scan vertices' distances to the mesh) of a neutral mesh (expression zero).
* :func:`fit_identity_to_scan`: the **3D oracle**, the best the model's identity space can do on this scan
  (what a perfect image-based method could reach): identity fitted to the scan directly in 3D, by
  alternating (1) a rigid (optionally similarity) ICP alignment of the current mesh to the cropped scan,
  started from the 7-landmark Umeyama alignment, and (2) regularised linear least squares of the
  identity on the closest points, point-to-plane (Chen & Medioni 1992) as in non-rigid ICP with a
  linear model (Amberg et al., "Optimal Step Nonrigid ICP Algorithms for Surface Registration", CVPR
  2007, with the model basis as the deformation): for cropped scan points ``q_i`` (model frame) with
  closest model points ``x_i(α) = Σ_k w_ik (m_k + B_k α)`` and unit normals ``n_i``,

  ``α = argmin Σ_i (n_iᵀ (x_i(α) − q_i))² / σ² + λ ‖α‖²``,

  leaving out points whose closest point is on the mesh's rim (beyond the model's surface).
* :func:`scan_from_model`: a model's own neutral mesh as a "scan" (synthetic ground truth).

Units: mm throughout; arrays are numpy float64 unless a tensor is named.
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from morphable.errors import InputError
from morphable.eval.now import NOW_LANDMARKS_IBUG68, NowResult, crop_scan, crop_sphere, now_errors, read_landmarks_3d
from morphable.geometry.align import Similarity, icp, umeyama
from morphable.geometry.closest_point import TriangleIndex, on_boundary
from morphable.models.base import MorphableModel
from morphable.models.functional import barycentric_points
from morphable.models.region import restrict

UNITS_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}

#: Rows of the 7 NoW landmarks in a FLAME/iBUG-51 landmark set (iBUG-68 point i is row i − 17).
NOW_ROWS_IBUG51: tuple[int, ...] = tuple(i - 17 for i in NOW_LANDMARKS_IBUG68)

#: Model regions a face scan sees (ICT's names); a model without any of them is scored whole.
SCORED_REGIONS: tuple[str, ...] = ("face", "head_neck", "eyes")


@dataclass(frozen=True)
class Scan:
    """A ground-truth surface for NoW scoring.

    Attributes:
        vertices: (S, 3) mm. triangles: (F, 3) int64 (only rendering needs them; NoW scores vertices).
        landmarks: (7, 3) mm, the NoW landmarks in :data:`~morphable.eval.now.NOW_LANDMARK_NAMES` order.
        name: where it came from (for messages).
    """

    vertices: np.ndarray
    triangles: np.ndarray
    landmarks: np.ndarray
    name: str = "scan"

    @property
    def crop_ids(self) -> np.ndarray:
        """Indices of the vertices inside NoW's face sphere (:func:`morphable.eval.now.crop_scan`)."""
        return crop_scan(self.vertices, self.landmarks)


def now_landmarks_from(points: np.ndarray, source: str | PathLike = "landmarks") -> np.ndarray:
    """The 7 NoW landmarks (7, 3) of a 51-point (iBUG 17..67), 68-point (iBUG) or 7-point (NoW) set."""
    points = np.asarray(points, np.float64)
    if points.ndim == 2 and points.shape[1] == 3:
        if len(points) == 51:
            return points[list(NOW_ROWS_IBUG51)]
        if len(points) == 68:
            return points[list(NOW_LANDMARKS_IBUG68)]
        if len(points) == 7:
            return points
    raise InputError(source, f"expected 7 (NoW), 51 (iBUG 17-67) or 68 (iBUG) 3D landmarks, got shape {points.shape}")


def load_scan(mesh_path: str | PathLike, landmarks_path: str | PathLike, unit: str = "m") -> Scan:
    """Read a scan (.obj/.ply) and its 3D landmarks (.npy/.txt/.pp; 51, 68 or 7 points), in ``unit``
    (``"m"``, ``"cm"`` or ``"mm"``), as a :class:`Scan` in mm. Bad files raise :class:`InputError`."""
    from morphable.io.mesh import fan_triangles, read_mesh

    if unit not in UNITS_TO_MM:
        raise ValueError(f"load_scan: unit must be one of {sorted(UNITS_TO_MM)}, got {unit!r}")
    factor = UNITS_TO_MM[unit]
    landmarks = now_landmarks_from(read_landmarks_3d(landmarks_path, None), landmarks_path) * factor
    mesh = read_mesh(mesh_path)
    triangles = fan_triangles(mesh.faces)
    if len(mesh.vertices) < 3:
        raise InputError(mesh_path, "the scan has fewer than 3 vertices")
    scan = Scan(np.asarray(mesh.vertices, np.float64) * factor, np.asarray(triangles, np.int64), landmarks,
                Path(mesh_path).name)
    centre, _ = crop_sphere(landmarks)
    low, high = scan.vertices.min(axis=0), scan.vertices.max(axis=0)
    if not ((low <= centre) & (centre <= high)).all() or len(scan.crop_ids) < 100:
        raise InputError(landmarks_path, f"the NoW crop of these landmarks (centre {np.round(centre, 1).tolist()} mm) "
                                         f"misses the scan ({len(scan.crop_ids)} vertices inside): are scan and "
                                         f"landmarks in the same frame and unit ({unit})?")
    return scan


def load_flame_mesh_scan(mesh_path: str | PathLike, embedding_path: str | PathLike, unit: str = "m",
                         name: str | None = None) -> Scan:
    """A mesh in FLAME's topology as a :class:`Scan` in mm, its 51 landmarks (iBUG 17..67) placed by FLAME's
    static landmark embedding (``flame_static_embedding.pkl``: ``lmk_face_idx`` (51,) triangle ids and
    ``lmk_b_coords`` (51, 3) barycentric coordinates; read with the restricted unpickler).

    Raises:
        InputError: unreadable files, or an embedding that does not fit the mesh's triangles.
    """
    from morphable.io.mesh import fan_triangles, read_mesh
    from morphable.io.safe_pickle import load_pickle

    if unit not in UNITS_TO_MM:
        raise ValueError(f"load_flame_mesh_scan: unit must be one of {sorted(UNITS_TO_MM)}, got {unit!r}")
    mesh = read_mesh(mesh_path)
    vertices = np.asarray(mesh.vertices, np.float64) * UNITS_TO_MM[unit]
    triangles = np.asarray(fan_triangles(mesh.faces), np.int64)
    embedding = load_pickle(embedding_path)
    try:
        face_ids = np.asarray(embedding["lmk_face_idx"]).astype(np.int64).reshape(-1)
        weights = np.asarray(embedding["lmk_b_coords"], np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(embedding_path, f"not a FLAME landmark embedding ({err})") from None
    if weights.shape != (len(face_ids), 3) or len(face_ids) != 51:
        raise InputError(embedding_path, f"expected 51 triangle ids and (51, 3) barycentric weights, got "
                                         f"{face_ids.shape} and {weights.shape}")
    if face_ids.min() < 0 or face_ids.max() >= len(triangles):
        raise InputError(embedding_path, f"triangle ids up to {face_ids.max()} but {Path(mesh_path).name} has "
                                         f"{len(triangles)} triangles (not FLAME's topology?)")
    landmarks = (vertices[triangles[face_ids]] * weights[..., None]).sum(axis=1)
    return Scan(vertices, triangles, now_landmarks_from(landmarks, embedding_path), name or Path(mesh_path).name)


def scored_model(model: MorphableModel, regions: tuple[str, ...] = SCORED_REGIONS) -> MorphableModel:
    """The model restricted to the union of ``regions`` it has (all of it when it has none)."""
    present = [model.regions[r] for r in regions if r in model.regions]
    if not present:
        return model
    return restrict(model, torch.cat(present), name=f"{model.name}_scored")


def _now_rows(model: MorphableModel) -> list[int]:
    rows = list(NOW_LANDMARKS_IBUG68)
    if not bool(model.landmark_mask[rows].all()):
        missing = [r for r in rows if not bool(model.landmark_mask[r])]
        raise ValueError(f"model {model.name} does not define iBUG landmarks {missing} needed for NoW")
    return rows


def mesh_now_landmarks(model: MorphableModel, vertices: Tensor | np.ndarray) -> np.ndarray:
    """The 7 NoW landmarks (7, 3) of a mesh of ``model`` (vertices (V, 3)) from the model's iBUG-68
    definitions (vertex ids or barycentric points)."""
    rows = _now_rows(model)
    v = torch.as_tensor(np.asarray(vertices, np.float64) if not isinstance(vertices, Tensor) else vertices)
    points = barycentric_points(v.double()[None], model.landmark_indices[rows], model.landmark_weights[rows])
    return points[0].cpu().numpy()


def neutral_vertices(model: MorphableModel, identity: Tensor | None) -> np.ndarray:
    """(V, 3) mm: the neutral mesh (expression zero) of ``identity`` (K,) or (1, K); None = the mean face."""
    if identity is None:
        return model.mean.double().cpu().numpy()
    ident = torch.as_tensor(identity).reshape(1, -1).to(model.mean.dtype)
    with torch.no_grad():
        return model(identity=ident, expression=None).vertices[0].double().cpu().numpy()


def score_mesh(scan: Scan, model: MorphableModel, vertices: np.ndarray, *, metrical: bool = False) -> NowResult:
    """NoW error of a mesh of ``model`` (vertices (V, 3) mm, the model's triangles) against ``scan``."""
    return now_errors(scan.vertices, scan.landmarks, vertices, model.triangles.cpu().numpy(),
                      mesh_now_landmarks(model, vertices), metrical=metrical)


def score_identity(scan: Scan, model: MorphableModel, identity: Tensor | None, *, metrical: bool = False) -> NowResult:
    """NoW error of the neutral face of ``identity`` ((K,) or (1, K); None = the mean face)."""
    return score_mesh(scan, model, neutral_vertices(model, identity), metrical=metrical)


def scan_from_model(model: MorphableModel, identity: Tensor | None, name: str = "model") -> Scan:
    """A model's neutral mesh as a :class:`Scan` (vertices, triangles, its own 7 NoW landmarks)."""
    vertices = neutral_vertices(model, identity)
    return Scan(vertices, model.triangles.cpu().numpy().astype(np.int64), mesh_now_landmarks(model, vertices), name)


@dataclass(frozen=True)
class OracleFit:
    """Result of :func:`fit_identity_to_scan`.

    Attributes:
        identity: (K,) float64 tensor of identity coefficients.
        transform: the model -> scan similarity (scale 1 unless fitted with ``scale=True``).
        rms_mm: RMS point-to-surface distance (mm) of the scan points each identity solve used, measured
            before that solve (after the alignment step).
        n_points: the scan points used in the last solve.
    """

    identity: Tensor
    transform: Similarity
    rms_mm: tuple[float, ...]
    n_points: int


def _identity_step(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, mean: np.ndarray,
                   basis: np.ndarray, sigma_mm: float, lambda_identity: float) -> tuple[np.ndarray, float, int]:
    """One regularised point-to-plane solve: ``points`` (N, 3) in the model frame against the current mesh
    ``vertices`` (V, 3); ``mean`` (V, 3) and ``basis`` (V, 3, K) of the model. Returns α (K,), RMS, count."""
    index = TriangleIndex(vertices, triangles)
    found = index.query(points)
    keep = ~on_boundary(found, triangles)
    tri = triangles[found.triangle[keep]]                                # (N, 3) corner vertex ids
    w = found.barycentric[keep]                                          # (N, 3)
    corners = vertices[triangles]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])[found.triangle[keep]]
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-300)
    m0 = np.einsum("nk,nkc->nc", w, mean[tri])                           # x_i(0)
    bx = sum(w[:, k, None, None] * basis[tri[:, k]] for k in range(3))   # ∂x_i/∂α  (N, 3, K)
    a = np.einsum("nc,ncp->np", normal, bx)                              # n_iᵀ ∂x_i/∂α
    b = np.einsum("nc,nc->n", normal, points[keep] - m0)                 # n_iᵀ (q_i − x_i(0))
    K = basis.shape[-1]
    alpha = np.linalg.solve(a.T @ a / sigma_mm ** 2 + lambda_identity * np.eye(K), a.T @ b / sigma_mm ** 2)
    rms = float(np.sqrt(np.mean(found.distance[keep] ** 2)))
    return alpha, rms, int(keep.sum())


def fit_identity_to_scan(model: MorphableModel, scan: Scan, *, iterations: int = 8, sigma_mm: float = 1.0,
                         lambda_identity: float = 1.0, scale: bool = False, icp_iterations: int = 10) -> OracleFit:
    """The 3D oracle: identity coefficients fitted to the scan's NoW crop directly in 3D (module docstring).

    Args:
        model: the model to fit, usually :func:`scored_model` (its mesh is what the scan is matched to).
        scan: the target, mm, with its 7 NoW landmarks.
        iterations: alternations of alignment and identity solve.
        sigma_mm: point noise σ (mm) against the N(0, 1) prior of weight ``lambda_identity``.
        scale: allow an isotropic scale in the alignment (default rigid: scan and model are both in mm).
        icp_iterations: ICP steps per alignment.
    """
    points = scan.vertices[scan.crop_ids]
    triangles = model.triangles.cpu().numpy().astype(np.int64)
    mean = model.mean.double().cpu().numpy()
    basis = model.identity_basis.double().cpu().numpy()
    alpha = np.zeros(model.n_identity)
    vertices = mean
    transform = umeyama(mesh_now_landmarks(model, vertices), scan.landmarks, scale=scale)
    history = []
    n_points = 0
    for _ in range(iterations):
        transform = icp(points, vertices, triangles, scale=scale, init=transform, max_iterations=icp_iterations,
                        exclude_boundary=True).transform
        alpha, rms, n_points = _identity_step(transform.inverse().apply(points), vertices, triangles, mean, basis,
                                              sigma_mm, lambda_identity)
        vertices = mean + basis @ alpha
        history.append(rms * transform.scale)
    return OracleFit(torch.as_tensor(alpha), transform, tuple(history), n_points)
