"""MICC Florence neutral-face protocol as used by Genova et al., "Unsupervised Training for 3D Morphable
Model Regression", CVPR 2018, §5.2 (after Tran et al., CVPR 2017):

1. **Crop** the ground-truth scan to the vertices within 95 mm of the nose tip (faces kept when all three
   corners are kept).
2. **ICP with isotropic scale** moves the prediction onto the cropped scan ("we do not assume the methods
   predict absolute scale"): point-to-plane, points matched to the prediction's rim are left out
   (:func:`morphable.geometry.align.icp` with ``exclude_boundary``), starting from corresponding
   landmarks (Umeyama) when given, else from the nose tips put on top of each other.
3. **Symmetric point-to-plane distance** "within the ICP-determined region of intersection": for every
   vertex of one surface, its nearest vertex ``q`` on the other and that vertex's normal ``n_q``, the
   distance ``|n_q · (p − q)|`` (Chen & Medioni's point-to-plane distance, insensitive to the two
   meshes' different vertex densities); pairs whose ``q`` is a rim vertex of its surface (outside the
   overlap) are left out; both directions are pooled. Mean and standard deviation in mm.

The nose tip defaults to the ground-truth vertex farthest along +z (a frontal scan in model space,
+z towards the viewer); give it explicitly otherwise. All inputs in mm except the prediction, whose scale
ICP solves for. Two signs of a scan in the wrong unit are reported rather than guessed at: a mesh whose
size does not fit a face in mm (:func:`suggested_unit`) and a crop that keeps the whole scan
(``MiccResult.crop_kept_all``: a metre-scale head lies entirely within 95 "mm" of its nose tip).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from morphable.eval.stats import DistanceStats
from morphable.geometry.align import Similarity, icp, umeyama
from morphable.geometry.mesh import boundary_edges, submesh, vertex_normals

CROP_RADIUS_MM = 95.0


@dataclass(frozen=True)
class MiccResult(DistanceStats):
    """Symmetric point-to-plane errors.

    Attributes:
        gt_to_pred: distances (mm) of the cropped ground-truth vertices in the overlap.
        pred_to_gt: distances (mm) of the aligned prediction's vertices in the overlap.
        transform: the similarity applied to the prediction.
        aligned_vertices: (V, 3) the prediction after ``transform``.
        gt_ids: indices of the cropped ground-truth vertices.
        gt_overlap: bool mask over ``gt_ids``: the vertices whose distance is in ``gt_to_pred``.
        crop_kept_all: the crop removed no ground-truth vertex (a whole head within the radius: the scan
            is probably not in mm, or it is already cropped).
    """

    gt_to_pred: np.ndarray
    pred_to_gt: np.ndarray
    transform: Similarity
    aligned_vertices: np.ndarray
    gt_ids: np.ndarray
    gt_overlap: np.ndarray
    crop_kept_all: bool = False


    @property
    def distances(self) -> np.ndarray:
        return np.concatenate([self.gt_to_pred, self.pred_to_gt])

    def summary(self) -> dict:
        return {"median_mm": self.median_mm, "mean_mm": self.mean_mm, "std_mm": self.std_mm,
                "gt_to_pred_mean_mm": float(np.mean(self.gt_to_pred)),
                "pred_to_gt_mean_mm": float(np.mean(self.pred_to_gt)),
                "n_points": int(len(self.distances)), "scale": float(self.transform.scale),
                "crop_kept_all": bool(self.crop_kept_all)}


def suggested_unit(vertices_mm: np.ndarray) -> str | None:
    """The unit a mesh read as millimetres was probably written in, judged by its size; ``None`` when its
    size fits a face or head in mm.

    A face crop or head is 100–300 mm across (bounding-box diagonal). The same mesh written in metres reads as
    under 1 "mm" across, in centimetres as 10–40. So: diagonal < 1 → ``"m"``, < 50 → ``"cm"``.
    """
    v = np.asarray(vertices_mm, dtype=np.float64)
    diagonal = float(np.linalg.norm(np.ptp(v, axis=0))) if len(v) else 0.0
    if diagonal < 1.0:
        return "m"
    if diagonal < 50.0:
        return "cm"
    return None


def crop_around(vertices: np.ndarray, triangles: np.ndarray, centre: np.ndarray,
                radius: float = CROP_RADIUS_MM) -> tuple[np.ndarray, np.ndarray]:
    """Keep the vertices within ``radius`` mm of ``centre`` (3,). Returns (kept ids (K,), triangles (F', 3)
    re-indexed into the kept vertices, only those with all three corners kept)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    keep = np.linalg.norm(vertices - np.asarray(centre, dtype=np.float64), axis=1) <= radius
    cut = submesh(torch.as_tensor(np.asarray(triangles, dtype=np.int64)).reshape(-1, 3), torch.from_numpy(keep),
                  len(vertices))
    return cut.vertex_ids.numpy(), cut.triangles.numpy()


def _normals_and_rim(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tri = torch.as_tensor(triangles, dtype=torch.int64)
    normals = vertex_normals(torch.as_tensor(vertices, dtype=torch.float64)[None], tri)[0].numpy()
    rim = np.zeros(len(vertices), dtype=bool)
    rim[boundary_edges(tri).numpy().ravel()] = True
    return normals, rim


def point_to_plane_distances(points: np.ndarray, vertices: np.ndarray, normals: np.ndarray,
                             rim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``|n_q · (p − q)|`` with ``q`` the nearest vertex of ``vertices`` (V, 3) to each point (N, 3).

    Returns:
        distances (N,) and a mask (N,) of the points whose ``q`` is not on the rim (``rim`` (V,) bool).
    """
    _, q = cKDTree(vertices).query(points)
    d = np.abs(np.einsum("ij,ij->i", normals[q], points - vertices[q]))
    return d, ~rim[q]


def micc_errors(gt_vertices: np.ndarray, gt_triangles: np.ndarray, pred_vertices: np.ndarray,
                pred_triangles: np.ndarray, *, gt_nose_tip: np.ndarray | None = None,
                pred_nose_tip: np.ndarray | None = None, gt_landmarks: np.ndarray | None = None,
                pred_landmarks: np.ndarray | None = None, crop_radius: float = CROP_RADIUS_MM,
                align: bool = True, scale: bool = True, max_distance: float = 10.0,
                max_iterations: int = 50) -> MiccResult:
    """Genova/MICC error of a predicted neutral face against a ground-truth scan.

    Args:
        gt_vertices (S, 3) mm, gt_triangles (G, 3): the ground-truth scan.
        pred_vertices (V, 3), pred_triangles (F, 3): the prediction (triangles; split quads first).
        gt_nose_tip, pred_nose_tip: (3,) nose tips; default: each mesh's vertex with the largest z.
        gt_landmarks, pred_landmarks: optional (L, 3) corresponding points (L >= 3) for the initial
            similarity; without them ICP starts from the nose tips put together (scale 1).
        crop_radius: mm around the ground-truth nose tip (95 in the paper).
        align: False measures the prediction as given (already in the scan's frame).
        scale: solve for isotropic scale in ICP (the protocol); False for a rigid ICP.
        max_distance: mm; ICP leaves out (and charges ``max_distance²`` for) points farther than this.
        max_iterations: cap on ICP steps.
    """
    gt_v = np.asarray(gt_vertices, dtype=np.float64)
    pred_v = np.asarray(pred_vertices, dtype=np.float64)
    gt_tip = gt_v[np.argmax(gt_v[:, 2])] if gt_nose_tip is None else np.asarray(gt_nose_tip, np.float64)
    ids, gt_tri = crop_around(gt_v, gt_triangles, gt_tip, crop_radius)
    if len(gt_tri) == 0:
        raise ValueError(f"MICC crop keeps no ground-truth triangle within {crop_radius} mm of the nose tip")
    gt_crop = gt_v[ids]
    transform = Similarity.identity()
    if align:
        if gt_landmarks is not None and pred_landmarks is not None:
            transform = umeyama(pred_landmarks, gt_landmarks, scale=scale)
        else:
            pred_tip = pred_v[np.argmax(pred_v[:, 2])] if pred_nose_tip is None else np.asarray(pred_nose_tip)
            transform = Similarity(1.0, np.eye(3), gt_tip - pred_tip)
        transform = icp(gt_crop, pred_v, pred_triangles, method="point_to_plane", scale=scale, init=transform,
                        max_distance=max_distance, exclude_boundary=True,
                        max_iterations=max_iterations).transform
    aligned = transform.apply(pred_v)
    gt_n, gt_rim = _normals_and_rim(gt_crop, gt_tri)
    pred_n, pred_rim = _normals_and_rim(aligned, pred_triangles)
    d_gp, ok_gp = point_to_plane_distances(gt_crop, aligned, pred_n, pred_rim)
    d_pg, ok_pg = point_to_plane_distances(aligned, gt_crop, gt_n, gt_rim)
    return MiccResult(d_gp[ok_gp], d_pg[ok_pg], transform, aligned, ids, ok_gp,
                      crop_kept_all=len(ids) == len(gt_v))
