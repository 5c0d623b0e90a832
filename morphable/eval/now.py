"""The NoW benchmark's scan-to-mesh error (Sanyal et al., "Learning to Regress 3D Face Shape and
Expression from an Image without 3D Supervision" (RingNet), CVPR 2019; protocol of the public
``now_evaluation`` code, ``scan2mesh_computations.py`` and its ``_metrical`` variant).

Steps, for one ground-truth scan and one predicted mesh, both with the 7 NoW landmarks:

1. **Crop** the scan to a sphere: centre ``c = nose_bottom + 0.3 (nose_bridge − nose_bottom)`` where the
   nose bridge is the midpoint of the inner eye corners; radius
   ``1.4 · (|outer_eye_R − outer_eye_L| + |nose_bridge − nose_bottom|) / 2``. Only scan vertices inside
   are measured.
2. **Landmark alignment**: the similarity (metrical: rigid) transform of the mesh that best maps its 7
   landmarks onto the scan's (Umeyama).
3. **Refinement**: scale, rotation and translation of the mesh (metrical: rotation and translation)
   minimising ``Σ dist(scan vertex, mesh surface)²`` over the cropped scan vertices
   (:func:`morphable.geometry.align.icp`, point-to-plane Gauss-Newton on exact point-to-surface distances).
4. **Error**: the unsigned distance of every cropped scan vertex to the aligned mesh's surface; median,
   mean and standard deviation in mm.

Differences from the reference code, deliberately: reflections are not allowed in step 2 (the reference
uses MATLAB-style ``procrustes(reflection='best')``; a mirrored prediction should show up as a large
error, not be silently flipped), and the metrical variant uses a rigid Procrustes (the reference rotates
the mesh but keeps a translation computed for the scaled fit, which the refinement then repairs).

Units: everything in mm (NoW scans are in mm; convert predictions before calling, see ``--mesh-unit``).
"""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from morphable.errors import InputError

from morphable.eval.stats import DistanceStats
from morphable.geometry.align import Similarity, icp, umeyama
from morphable.geometry.closest_point import closest_points

#: The 7 NoW landmarks, in file order, as iBUG-68 (0-based) indices.
NOW_LANDMARKS_IBUG68: tuple[int, ...] = (36, 39, 42, 45, 33, 48, 54)
NOW_LANDMARK_NAMES: tuple[str, ...] = (
    "right eye outer corner", "right eye inner corner", "left eye inner corner", "left eye outer corner",
    "nose bottom", "right mouth corner", "left mouth corner")


@dataclass(frozen=True)
class NowResult(DistanceStats):
    """Scan-to-mesh errors of one prediction.

    Attributes:
        distances: (N,) distance of each cropped scan vertex to the aligned mesh surface, mm.
        scan_ids: (N,) indices of those vertices in the scan.
        transform: the similarity applied to the mesh (identity with ``align=False``).
        aligned_vertices: (V, 3) the mesh vertices after ``transform``, mm.
        median_mm, mean_mm, std_mm: statistics of ``distances`` (population std, as ``numpy.std``).
    """

    distances: np.ndarray
    scan_ids: np.ndarray
    transform: Similarity
    aligned_vertices: np.ndarray

    def summary(self) -> dict:
        return {"median_mm": self.median_mm, "mean_mm": self.mean_mm, "std_mm": self.std_mm,
                "n_points": int(len(self.distances)), "scale": float(self.transform.scale)}


def _landmarks7(points: np.ndarray, name: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (7, 3) or not np.isfinite(points).all():
        raise ValueError(f"{name}: expected 7 finite 3D NoW landmarks (7, 3), got {points.shape}")
    return points


def read_landmarks_3d(path: str | PathLike, count: int | None = 7) -> np.ndarray:
    """Read ``count`` (None: any number >= 3) 3D points: text (one ``x y z`` line each, NoW's ``.txt``), ``.npy`` (count, 3), or
    MeshLab picked points ``.pp`` (NoW's ground-truth landmarks). Raises InputError naming the file."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            points = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".pp":
            root = ElementTree.parse(path).getroot()
            points = [[float(p.attrib[k]) for k in "xyz"] for p in root.iter("point")]
        else:
            points = [[float(x) for x in line.replace(",", " ").split()]
                      for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        points = np.asarray(points, dtype=np.float64)
    except (OSError, ValueError, KeyError, UnicodeDecodeError, ElementTree.ParseError) as err:
        raise InputError(path, f"cannot read 3D landmarks ({err.__class__.__name__}: {err})") from None
    wanted = f"{count}" if count is not None else "at least 3"
    if (points.ndim != 2 or points.shape[1:] != (3,) or len(points) != (count or len(points)) or len(points) < 3
            or not np.isfinite(points).all()):
        raise InputError(path, f"expected {wanted} finite 3D points (x y z), got an array of shape {points.shape}")
    return points


def crop_sphere(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """NoW's face sphere from the scan's 7 landmarks (7, 3) mm: ``(centre (3,), radius mm)``."""
    lm = _landmarks7(landmarks, "scan landmarks")
    nose_bottom = lm[4]
    nose_bridge = (lm[1] + lm[2]) / 2                    # between the inner eye corners
    centre = nose_bottom + 0.3 * (nose_bridge - nose_bottom)
    outer_eye = np.linalg.norm(lm[0] - lm[3])
    nose_length = np.linalg.norm(nose_bridge - nose_bottom)
    return centre, float(1.4 * (outer_eye + nose_length) / 2)


def crop_scan(scan_vertices: np.ndarray, scan_landmarks: np.ndarray) -> np.ndarray:
    """Indices of the scan vertices (V, 3) inside the NoW sphere (distance <= radius)."""
    centre, radius = crop_sphere(scan_landmarks)
    return np.flatnonzero(np.linalg.norm(np.asarray(scan_vertices, np.float64) - centre, axis=1) <= radius)


def now_errors(scan_vertices: np.ndarray, scan_landmarks: np.ndarray, mesh_vertices: np.ndarray,
               mesh_triangles: np.ndarray, mesh_landmarks: np.ndarray, *, metrical: bool = False,
               align: bool = True, max_iterations: int = 50) -> NowResult:
    """NoW scan-to-mesh error of a predicted mesh against a ground-truth scan.

    Args:
        scan_vertices: (S, 3) ground-truth scan vertices, mm. Only vertices matter (not its faces).
        scan_landmarks: (7, 3) the scan's NoW landmarks, mm, in :data:`NOW_LANDMARK_NAMES` order.
        mesh_vertices: (V, 3) predicted mesh, mm for ``metrical`` (any scale otherwise).
        mesh_triangles: (F, 3) int triangles of the prediction (split quads first).
        mesh_landmarks: (7, 3) the prediction's NoW landmarks, same order.
        metrical: no scale anywhere (the metrical NoW variant): errors include a wrong absolute size.
        align: False skips steps 2-3 (the mesh must already be in the scan's frame).
        max_iterations: cap on refinement steps.

    Returns:
        :class:`NowResult`.
    """
    scan_vertices = np.asarray(scan_vertices, dtype=np.float64)
    mesh_vertices = np.asarray(mesh_vertices, dtype=np.float64)
    scan_lm = _landmarks7(scan_landmarks, "scan landmarks")
    mesh_lm = _landmarks7(mesh_landmarks, "mesh landmarks")
    ids = crop_scan(scan_vertices, scan_lm)
    if len(ids) < 3:
        raise ValueError(f"NoW crop keeps {len(ids)} scan vertices: are the scan landmarks in the scan's frame?")
    points = scan_vertices[ids]
    if align:
        start = umeyama(mesh_lm, scan_lm, scale=not metrical)
        fit = icp(points, mesh_vertices, mesh_triangles, method="point_to_plane", scale=not metrical,
                  init=start, max_iterations=max_iterations)
        transform, distances = fit.transform, fit.distances     # exact distances to the aligned surface
    else:
        transform = Similarity.identity()
        distances = closest_points(points, mesh_vertices, mesh_triangles).distance
    return NowResult(distances, ids, transform, transform.apply(mesh_vertices))
