"""Landmark and symmetry definitions shared by the model loaders.

* ICT FaceKit's Multi-PIE / iBUG-68 vertex ids and jawline alternatives, as listed (0-based) in the
  "Facial Landmarks" section of ICT-FaceKit's ``README.md`` (commit da5f95a).
* :func:`vertex_landmarks`: iBUG-68 rows for models whose landmarks are single vertices.
* :func:`nearest_mirror`: each vertex's mirror partner (x → −x) by nearest neighbour, for models without
  a symmetry table, with :func:`nearest_mirror_reference` as the brute-force check.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.spatial import cKDTree

from morphable.models.base import N_LANDMARKS

ICT_MULTIPIE_68 = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443,
    268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147,
    4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081,
    0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966,
)
"""ICT vertex of each iBUG/Multi-PIE-68 point (row i = iBUG point i+1)."""

ICT_JAWLINE_RIGHT = (1278, 1272, 12, 1834, 243, 781, 2199, 1447)
"""Alternative vertices for iBUG points 1-8 (indices 0-7)."""
ICT_JAWLINE_LEFT = (3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496)
"""Alternative vertices for iBUG points 10-17 (indices 9-16)."""
ICT_JAWLINE_RIGHT_EXTENDED = (1280, 1278, 1275, 1272, 1248, 12, 820, 1834, 1902, 243, 844, 781, 1673, 2199,
                              801, 1447, 800)
"""Superset of :data:`ICT_JAWLINE_RIGHT`: the right contour candidates."""
ICT_JAWLINE_LEFT_EXTENDED = (3041, 3661, 3042, 4390, 3880, 3022, 3085, 2484, 4102, 4036, 3061, 2253, 3466,
                             3490, 3493, 3496, 3498)
"""Superset of :data:`ICT_JAWLINE_LEFT`: the left contour candidates."""


def vertex_landmarks(mapping: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """iBUG-68 definitions from ``{0-based iBUG index: vertex id}``.

    Returns:
        ``indices (68, 3)`` int64 (the vertex repeated), ``weights (68, 3)`` (1, 0, 0), ``mask (68,)`` bool.
    """
    indices = np.zeros((N_LANDMARKS, 3), np.int64)
    weights = np.tile([1.0, 0.0, 0.0], (N_LANDMARKS, 1))
    mask = np.zeros(N_LANDMARKS, bool)
    for point, vertex in mapping.items():
        indices[point] = vertex
        mask[point] = True
    return indices, weights, mask


def nearest_mirror(vertices: np.ndarray) -> np.ndarray:
    """Mirror partner of every vertex: the nearest vertex to ``(−x, y, z)``. ``(V, 3) -> (V,)`` int64.

    Assumes the model's symmetry plane is x = 0 (model space, DESIGN.md). Midline vertices map to
    themselves (or a neighbour within the mesh's resolution).
    """
    v = np.asarray(vertices, dtype=np.float64)
    _, ids = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
    return ids.astype(np.int64)


def nearest_mirror_reference(vertices: np.ndarray) -> np.ndarray:
    """Brute-force :func:`nearest_mirror` (O(V²) memory in chunks), for tests."""
    v = np.asarray(vertices, dtype=np.float64)
    mirrored = v * np.array([-1.0, 1.0, 1.0])
    out = np.empty(len(v), np.int64)
    for start in range(0, len(v), 256):
        d = ((mirrored[start: start + 256, None, :] - v[None]) ** 2).sum(-1)
        out[start: start + 256] = d.argmin(1)
    return out
