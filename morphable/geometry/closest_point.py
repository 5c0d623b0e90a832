"""Exact closest points on a triangle mesh surface (point-to-surface distances).

The per-pair kernel is the region test of Ericson, *Real-Time Collision Detection* (2005), §5.1.5
("Closest point on triangle to point"), vectorised over pairs: the point's projection is classified into
one of the triangle's seven Voronoi regions (3 vertices, 3 edges, interior) and the closest point is
returned with its barycentric coordinates.

The fast search (:class:`TriangleIndex`) is exact, not approximate. Triangles are grouped by size; in each
group a ``scipy.spatial.cKDTree`` over the triangle centroids proposes ``k`` candidate triangles per point.
Every triangle of a group lies inside a ball of radius ``R`` (the group's largest) around its centroid, so
a triangle whose centroid is at distance ``D`` from the point is at least ``D - R`` away. When the best
distance found is ``<= D_k - R`` (``D_k``: distance of the k-th nearest centroid) no unseen triangle of
the group can be closer (and a group whose nearest centroid is beyond ``best + R`` is skipped); the
remaining points are resolved with a ball query of radius ``best + R``, which by the same bound contains
every triangle of the group that could win.

All arrays are numpy; float64 is used internally. Units are those of the inputs (mm in this project).
:func:`closest_points_brute_force` is the slow obvious reference (every point against every triangle).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class ClosestPoints:
    """Closest points on a surface for N query points.

    Attributes:
        distance: (N,) Euclidean distance from each query point to the surface (input units).
        point: (N, 3) the closest surface point.
        triangle: (N,) int64 index of the triangle holding it (one of them when several tie).
        barycentric: (N, 3) its barycentric coordinates in that triangle (non-negative, sum 1).
    """

    distance: np.ndarray
    point: np.ndarray
    triangle: np.ndarray
    barycentric: np.ndarray


def _check_mesh(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(vertices, dtype=np.float64)
    triangles = np.asarray(triangles)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices: expected shape (V, 3), got {vertices.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3 or len(triangles) == 0:
        raise ValueError(f"triangles: expected shape (F, 3) with F > 0, got {triangles.shape}")
    triangles = triangles.astype(np.int64)
    if triangles.min() < 0 or triangles.max() >= len(vertices):
        raise ValueError(f"triangles index vertices outside [0, {len(vertices)})")
    return vertices, triangles


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points: expected shape (N, 3), got {points.shape}")
    return points


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x[..., 0] * y[..., 0] + x[..., 1] * y[..., 1] + x[..., 2] * y[..., 2]


def closest_points_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray,
                                c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest point of triangle ``(a[i], b[i], c[i])`` to ``points[i]``, for every i (Ericson §5.1.5).

    Args:
        points, a, b, c: (..., 3) arrays of equal shape (one point and one triangle per row).

    Returns:
        closest (..., 3) and barycentric (..., 3) with ``closest = u a + v b + w c``. Edge and vertex
        regions have exact zeros (and ones) in the barycentrics. Degenerate (zero-area) triangles are
        handled by their vertex and edge regions.
    """
    p, a, b, c = (np.asarray(x, dtype=np.float64) for x in (points, a, b, c))
    ab, ac, ap = b - a, c - a, p - a
    ab_ab, ac_ac, ab_ac = _dot(ab, ab), _dot(ac, ac), _dot(ab, ac)
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    d3, d4 = d1 - ab_ab, d2 - ab_ac            # ab·(p − b), ac·(p − b)
    d5, d6 = d1 - ab_ac, d2 - ac_ac            # ab·(p − c), ac·(p − c)
    vc = d1 * d4 - d3 * d2                     # Ericson's va, vb, vc: signed sub-triangle areas (× 2|n|)
    vb = d5 * d2 - d1 * d6
    va = d3 * d6 - d5 * d4

    def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        # den is 0 only where the region's mask is False (or for exactly degenerate triangles); no nans
        return num / np.where(den == 0.0, 1.0, den)

    # interior (the default), then the six boundary regions in reverse priority: the last write wins
    total = va + vb + vc
    v, w = safe_div(vb, total), safe_div(vc, total)
    u = 1.0 - v - w
    zero = np.zeros_like(d1)
    one = np.ones_like(d1)

    def put(mask, uu, vv, ww):
        nonlocal u, v, w
        u, v, w = np.where(mask, uu, u), np.where(mask, vv, v), np.where(mask, ww, w)

    w_bc = safe_div(d4 - d3, (d4 - d3) + (d5 - d6))
    put((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), zero, 1 - w_bc, w_bc)
    w_ac = safe_div(d2, d2 - d6)
    put((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - w_ac, zero, w_ac)
    put((d6 >= 0) & (d5 <= d6), zero, zero, one)
    v_ab = safe_div(d1, d1 - d3)
    put((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - v_ab, v_ab, zero)
    put((d3 >= 0) & (d4 <= d3), zero, one, zero)
    put((d1 <= 0) & (d2 <= 0), one, zero, zero)

    closest = u[..., None] * a + v[..., None] * b + w[..., None] * c
    return closest, np.stack([u, v, w], axis=-1)


def _pair_distances(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray,
                    point_ids: np.ndarray, triangle_ids: np.ndarray):
    tri = triangles[triangle_ids]
    closest, bary = closest_points_on_triangles(points[point_ids], vertices[tri[:, 0]],
                                                vertices[tri[:, 1]], vertices[tri[:, 2]])
    diff = closest - points[point_ids]
    return np.sqrt(_dot(diff, diff)), closest, bary


def _best_per_point(n: int, point_ids: np.ndarray, triangle_ids: np.ndarray, dist: np.ndarray,
                    closest: np.ndarray, bary: np.ndarray) -> ClosestPoints:
    """Reduce (point, triangle) pairs to the nearest triangle of each of the n points (each has >= 1 pair)."""
    order = np.lexsort((dist, point_ids))             # by point, then by distance
    first = order[np.r_[True, point_ids[order][1:] != point_ids[order][:-1]]]
    if len(first) != n:
        raise AssertionError("every query point needs at least one candidate triangle")
    return ClosestPoints(dist[first], closest[first], triangle_ids[first], bary[first])


def closest_points_brute_force(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray,
                               *, chunk_pairs: int = 2_000_000) -> ClosestPoints:
    """Reference: test every point against every triangle. O(N·F) time; use for small meshes only.

    Args:
        points: (N, 3) query points. vertices: (V, 3). triangles: (F, 3) int.
        chunk_pairs: how many (point, triangle) pairs to evaluate at once (memory bound).
    """
    points = _check_points(points)
    vertices, triangles = _check_mesh(vertices, triangles)
    n, f = len(points), len(triangles)
    per_chunk = max(1, chunk_pairs // f)
    parts = []
    for start in range(0, n, per_chunk):
        ids = np.arange(start, min(n, start + per_chunk))
        pid = np.repeat(ids, f)
        tid = np.tile(np.arange(f), len(ids))
        dist, closest, bary = _pair_distances(points, vertices, triangles, pid, tid)
        best = _best_per_point(len(ids), pid - start, tid, dist, closest, bary)
        parts.append(best)
    return ClosestPoints(*(np.concatenate([getattr(p, k) for p in parts])
                           for k in ("distance", "point", "triangle", "barycentric")))


class TriangleIndex:
    """A spatial index over a fixed triangle mesh answering exact closest-point queries.

    Args:
        vertices: (V, 3) mesh vertices. triangles: (F, 3) int vertex indices.
        candidates: k, the number of nearest-centroid triangles tried first per point and group
            (exactness does not depend on it, only speed).

    Triangles are grouped by their bounding radius (powers of two times its 90th percentile), one
    ``cKDTree`` per group, so that a few large triangles (common in scans) do not loosen the bound for
    all the small ones. Build once and query many times (ICP keeps the mesh fixed and moves the points).
    """

    def __init__(self, vertices: np.ndarray, triangles: np.ndarray, *, candidates: int = 8):
        self.vertices, self.triangles = _check_mesh(vertices, triangles)
        corners = self.vertices[self.triangles]                      # (F, 3, 3)
        centroids = corners.mean(axis=1)
        radius = np.linalg.norm(corners - centroids[:, None], axis=2).max(axis=1)
        # level 0: the bulk (radius <= 90th percentile); then one level per doubling of the radius
        typical = max(float(np.percentile(radius, 90)), 1e-300)
        level = np.ceil(np.log2(np.maximum(radius / typical, 1.0))).astype(np.int64)
        self.groups = []                                             # (tree, triangle ids, radius, k)
        for lv in np.unique(level):
            ids = np.flatnonzero(level == lv)
            k = int(candidates) if lv == 0 else max(1, int(candidates) // 2)
            self.groups.append((cKDTree(centroids[ids]), ids, float(radius[ids].max()),
                                max(1, min(k, len(ids)))))

    def _pairs(self, points: np.ndarray, point_ids: np.ndarray, triangle_ids: np.ndarray,
               n: int, local: np.ndarray) -> ClosestPoints:
        return _best_per_point(n, local, triangle_ids, *_pair_distances(
            points, self.vertices, self.triangles, point_ids, triangle_ids))

    @staticmethod
    def _merge(best: ClosestPoints | None, new: ClosestPoints, rows: np.ndarray) -> ClosestPoints:
        if best is None:
            return new
        take = new.distance < best.distance[rows]
        better = rows[take]
        fields = []
        for name in ("distance", "point", "triangle", "barycentric"):
            value = getattr(best, name).copy()
            value[better] = getattr(new, name)[take]
            fields.append(value)
        return ClosestPoints(*fields)

    def query(self, points: np.ndarray) -> ClosestPoints:
        """Exact closest surface points of ``points`` (N, 3); see the module docstring for the bound."""
        points = _check_points(points)
        n = len(points)
        if n == 0:
            return ClosestPoints(np.zeros(0), np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros((0, 3)))
        rows = np.arange(n)
        best, kth = None, []
        for tree, ids, radius, k in self.groups:                     # 1. k candidates per group
            far = np.full(n, np.inf)
            todo = rows
            if best is not None:
                # a group whose nearest centroid is farther than best + radius cannot win: skip those rows
                nearest, _ = tree.query(points, k=1)
                todo = np.flatnonzero(best.distance > nearest - radius)
            if len(todo):
                m = len(todo)
                centre_dist, local_tid = tree.query(points[todo], k=k)
                centre_dist, local_tid = centre_dist.reshape(m, k), local_tid.reshape(m, k)
                tid = ids[local_tid]                                 # (m, k)
                dist, closest, bary = _pair_distances(points, self.vertices, self.triangles,
                                                      np.repeat(todo, k), tid.ravel())
                pick = dist.reshape(m, k).argmin(axis=1) + k * np.arange(m)   # dense: best of each row
                found = ClosestPoints(dist[pick], closest[pick], tid.ravel()[pick], bary[pick])
                best = self._merge(best, found, todo)
                if k < len(ids):
                    far[todo] = centre_dist[:, -1]
            kth.append(far)
        for (tree, ids, radius, _), far in zip(self.groups, kth):    # 2. certify, else search the ball
            unsure = np.flatnonzero(best.distance > far - radius)
            if len(unsure) == 0:
                continue
            reach = (best.distance[unsure] + radius) * (1 + 1e-9) + 1e-12
            lists = tree.query_ball_point(points[unsure], reach)
            counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
            has = counts > 0
            if not has.any():
                continue
            flat = np.fromiter((t for x in lists for t in x), dtype=np.int64, count=int(counts.sum()))
            local = np.repeat(np.arange(int(has.sum())), counts[has])
            found = self._pairs(points, unsure[has][local], ids[flat], int(has.sum()), local)
            best = self._merge(best, found, unsure[has])
        return best


def closest_points(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> ClosestPoints:
    """Exact closest points of ``points`` (N, 3) on the mesh ``(vertices (V, 3), triangles (F, 3))``.

    One-shot form of :class:`TriangleIndex`; equal (to rounding) to :func:`closest_points_brute_force`.
    """
    return TriangleIndex(vertices, triangles).query(points)


def on_boundary(found: ClosestPoints, triangles: np.ndarray) -> np.ndarray:
    """Whether each closest point lies on the mesh boundary (an edge used by one triangle, or a vertex of one).

    Such matches mean the query point lies beyond the surface's rim (outside the region where two surfaces
    overlap); ICP and the MICC protocol leave them out. Uses the exact zeros the region test writes into
    the barycentric coordinates of edge and vertex regions.

    Args:
        found: result of a query against the mesh with these ``triangles`` (F, 3).
    Returns:
        (N,) bool.
    """
    triangles = np.asarray(triangles, dtype=np.int64)
    tri = triangles[found.triangle]                                      # (N, 3)
    half_a = triangles[:, [1, 2, 0]].ravel()                            # edge opposite corner k: (k+1, k+2)
    half_b = triangles[:, [2, 0, 1]].ravel()
    n = int(triangles.max()) + 1
    keys, counts = np.unique(np.minimum(half_a, half_b) * n + np.maximum(half_a, half_b), return_counts=True)
    boundary_keys = keys[counts == 1]
    boundary_vertex = np.zeros(n, dtype=bool)
    boundary_vertex[boundary_keys // n] = True
    boundary_vertex[boundary_keys % n] = True
    result = np.zeros(len(tri), dtype=bool)
    for k in range(3):
        a, b = tri[:, (k + 1) % 3], tri[:, (k + 2) % 3]
        edge_is_boundary = np.isin(np.minimum(a, b) * n + np.maximum(a, b), boundary_keys)
        result |= (found.barycentric[:, k] == 0.0) & edge_is_boundary
        result |= (found.barycentric[:, k] == 1.0) & boundary_vertex[tri[:, k]]
    return result
