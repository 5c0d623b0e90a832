"""UV flattening: Tutte embedding with conformal (cotangent) weights onto the unit square, and its
symmetric variant (Bas et al., "3D Morphable Models as Spatial Transformer Networks", ICCV-W 2017, Sec. 3.3:
"a Tutte embedding using conformal Laplacian weights and with the mesh boundary mapped to a square ... we map
the symmetry line to the symmetry line of the square, flatten only one side of the mesh and obtain the
flattening of the other half by reflection").

Conventions: ``uv`` is ``(V, 2)`` in [0, 1]², ``u`` grows with model x, ``v`` grows with model y (v up, as in
OBJ), so a triangle wound counter-clockwise seen from +z keeps a positive signed UV area. In the symmetric
embedding the symmetry line is ``u = 0.5`` and a vertex and its mirror get ``(u, v)`` and ``(1 − u, v)``.

Tutte's theorem guarantees an embedding without flipped triangles for positive weights and a convex
boundary; cotangent weights can be negative on obtuse triangles, so they are clamped to a small positive
floor (a standard safeguard: tiny, so it changes the map only where a weight would be ≤ 0). Holes
(eyes, mouth) are closed with a virtual fan vertex during the solve, so the mesh is a topological disk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from morphable.geometry.laplacian import cotangent_weights

_WEIGHT_FLOOR = 1e-6  # positive floor for cotangent weights, relative to their median (Tutte needs w > 0)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Ordered vertex loops of the mesh boundary (edges used by one triangle), following face winding."""
    f = np.asarray(faces, np.int64)
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = np.sort(directed, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    border = directed[counts[inverse.ravel()] == 1]
    nxt = dict(zip(border[:, 0].tolist(), border[:, 1].tolist()))
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        loops.append(np.array(loop, np.int64))
    return loops


def largest_component(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """Boolean mask ``(F,)`` of the faces in the connected component with the most faces."""
    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]]])
    A = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
    _, label = csgraph.connected_components(A, directed=False)
    face_label = label[f[:, 0]]
    best = np.bincount(face_label).argmax()
    return face_label == best


def mirror_pairs(vertices, faces=None, *, axis: int = 0, tolerance: float | None = None) -> Tensor:
    """Symmetric pairs by nearest mirrored vertex (for models that ship no symmetry list: ICT, FLAME).

    Each vertex is reflected across the plane ``x[axis] = 0`` and matched to its nearest vertex; only
    mutual matches are kept (an involution), and a vertex that is its own match lies on the symmetry line.

    Args:
        vertices: ``(V, 3)`` mesh, symmetric about ``x[axis] = 0`` (model space: axis 0).
        faces: optional ``(F, 3)``; when given, pairs that join a boundary vertex to an interior one are
            dropped (a mesh whose topology is not exactly symmetric cannot mirror them in a flattening).
        tolerance: maximum match distance (units of ``vertices``); default 2 % of the bounding-box diagonal.
    Returns:
        ``(P, 2)`` int64 pairs ``(vertex, mirror)``, both orders listed, self-pairs for the midline.
    """
    v = _np(vertices).astype(np.float64)
    m = v.copy()
    m[:, axis] *= -1
    d, j = cKDTree(v).query(m)
    if tolerance is None:
        tolerance = 0.02 * float(np.linalg.norm(v.max(0) - v.min(0)))
    return symmetry_pairs(np.where(d <= tolerance, j, -1), faces)


def symmetry_pairs(mirror, faces=None) -> Tensor:
    """Pairs usable by :func:`flatten` from a per-vertex mirror index (e.g. a model's shipped symmetry list).

    Keeps only mutual matches (``mirror[mirror[i]] == i``: a list that maps two vertices to one mirror is
    not a reflection there) and, when ``faces`` is given, drops pairs joining a boundary vertex to an
    interior one (a mesh whose topology is not exactly symmetric cannot mirror them in a flattening).

    Args:
        mirror: ``(V,)`` int mirror index of each vertex (−1 = none; ``i`` = on the symmetry line).
        faces: optional ``(F, 3)``.
    Returns:
        ``(P, 2)`` int64 pairs ``(vertex, mirror)``, both orders listed, self-pairs for the midline.
    """
    j = _np(mirror).astype(np.int64)
    i = np.arange(len(j))
    keep = (j >= 0) & (j[np.maximum(j, 0)] == i)
    if faces is not None:
        on_border = np.zeros(len(j), bool)
        for lp in boundary_loops(_np(faces)):
            on_border[lp] = True
        keep &= on_border == on_border[np.maximum(j, 0)]
    return torch.as_tensor(np.stack([i[keep], j[keep]], 1), dtype=torch.int64)


def _mirror_map(pairs: np.ndarray, V: int) -> np.ndarray:
    mirror = np.full(V, -1, np.int64)
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):
            if mirror[x] not in (-1, y):
                raise ValueError(f"symmetric_pairs: vertex {x} is paired with both {mirror[x]} and {y}")
            mirror[x] = y
    return mirror


def _square_path(t: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Points at normalised arc length ``t ∈ [0, 1]`` along a polyline through ``corners`` ``(C, 2)``."""
    seg = np.linalg.norm(np.diff(corners, axis=0), axis=1)
    cum = np.concatenate([[0], np.cumsum(seg)]) / seg.sum()
    out = np.empty((len(t), 2))
    for d in range(2):
        out[:, d] = np.interp(t, cum, corners[:, d])
    return out


def _arc_param(points: np.ndarray) -> np.ndarray:
    """Normalised arc length of an open polyline ``(N, 3)`` from the top of the face to its chin, 0 → 1,
    bent piecewise-linearly so that the vertices nearest 1/4 and 3/4 land exactly there: they become the
    square's corners, and the boundary polygon then covers the whole square."""
    s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    t = s / max(s[-1], 1e-12)
    if len(t) < 5:
        return t
    k1 = int(np.argmin(np.abs(t[1:-1] - 0.25))) + 1
    k2 = int(np.argmin(np.abs(t[k1 + 1:-1] - 0.75))) + k1 + 1
    return np.interp(t, [0, t[k1], t[k2], 1], [0, 0.25, 0.75, 1])


@dataclass(frozen=True)
class _Disk:
    vertices: np.ndarray  # (V + H, 3) with one virtual vertex per hole
    faces: np.ndarray     # faces of the kept component + hole fans
    outer: np.ndarray     # outer boundary loop (vertex ids)
    used: np.ndarray      # (V,) bool: vertex belongs to the flattened component
    holes: list           # inner boundary loops; hole h's virtual centre is vertex V + h


def _as_disk(v: np.ndarray, f: np.ndarray) -> _Disk:
    f = f[largest_component(f, len(v))]
    used = np.zeros(len(v), bool)
    used[f.ravel()] = True
    loops = boundary_loops(f)
    if not loops:
        raise ValueError("flatten: the mesh has no boundary (a closed surface cannot be mapped to a square)")
    length = [np.linalg.norm(v[np.roll(lp, -1)] - v[lp], axis=1).sum() for lp in loops]
    outer = loops[int(np.argmax(length))]
    verts, faces, holes = [v], [f], []
    n = len(v)
    for lp in loops:
        if lp is outer:
            continue
        verts.append(v[lp].mean(0, keepdims=True))
        faces.append(np.stack([lp, np.full_like(lp, n), np.roll(lp, -1)], 1))  # fan keeps the loop's winding
        holes.append(lp)
        n += 1
    return _Disk(np.concatenate(verts), np.concatenate(faces), outer, used, holes)


def _hole_mirrors(disk: _Disk, mirror: np.ndarray, V: int) -> None:
    """Extend ``mirror`` (in place) to the virtual hole centres: mirrored holes pair their centres, a
    self-symmetric hole's centre lies on the symmetry line."""
    owner = {int(i): h for h, lp in enumerate(disk.holes) for i in lp}
    for h, lp in enumerate(disk.holes):
        m = mirror[lp]
        m = m[m >= 0]
        if len(m):
            other = np.bincount([owner.get(int(i), -1) + 1 for i in m]).argmax() - 1
            if other >= 0:
                mirror[V + h] = V + other


def _weights(v: np.ndarray, f: np.ndarray) -> sp.csr_matrix:
    W = cotangent_weights(v, f).tocsr()
    W.sum_duplicates()
    floor = _WEIGHT_FLOOR * np.median(W.data[W.data > 0])
    W.data = np.maximum(W.data, floor)
    return W


def _boundary_uv(v: np.ndarray, outer: np.ndarray, mirror: np.ndarray | None) -> np.ndarray:
    """Place the outer loop on the square: the top (max y, nearest the midline) at (0.5, 1)."""
    p = v[outer]
    # orient the loop so that it leaves the top point towards +x (u grows with x)
    upper = p[:, 1] >= np.median(p[:, 1])
    top = int(np.argmin(np.where(upper, np.abs(p[:, 0]), np.inf)))
    lower = ~upper
    bottom = int(np.argmin(np.where(lower, np.abs(p[:, 0]), np.inf)))
    loop = np.roll(outer, -top)
    bottom = (bottom - top) % len(outer)
    right, left = loop[: bottom + 1], np.concatenate([loop[bottom:], loop[:1]])
    if v[right, 0].mean() < v[left, 0].mean():  # walk the other way round
        loop = np.concatenate([loop[:1], loop[1:][::-1]])
        bottom = len(outer) - bottom
        right, left = loop[: bottom + 1], np.concatenate([loop[bottom:], loop[:1]])
    uv = {}
    r = _square_path(_arc_param(v[right]), np.array([[0.5, 1], [1, 1], [1, 0], [0.5, 0]]))
    lft = _square_path(_arc_param(v[left]), np.array([[0.5, 0], [0, 0], [0, 1], [0.5, 1]]))
    for ids, coords in ((right, r), (left[1:-1], lft[1:-1])):
        for i, c in zip(ids.tolist(), coords):
            uv[i] = c
    first = np.array([uv[i] for i in outer.tolist()])
    if mirror is None:
        return first
    out = first.copy()  # symmetrise mirrored boundary pairs (from the unsymmetrised values); midline on u = 0.5
    pos = {i: k for k, i in enumerate(outer.tolist())}
    for k, i in enumerate(outer.tolist()):
        j = mirror[i]
        if j == i:
            out[k, 0] = 0.5
        elif j >= 0:
            if j not in pos:
                raise ValueError(f"symmetric_pairs: vertex {i} is on the outer boundary but its mirror {j} is not")
            a, b = first[k], first[pos[j]]
            out[k] = [(a[0] + 1 - b[0]) / 2, (a[1] + b[1]) / 2]
    return out


def flatten(vertices, faces, symmetric_pairs=None) -> Tensor:
    """Tutte / conformal flattening of a face mesh onto the unit square.

    Args:
        vertices: ``(V, 3)`` positions (any units).
        faces: ``(F, 3)`` triangles. Only the connected component with the most faces is flattened; its
            longest boundary loop goes to the square, other loops (holes) are closed during the solve.
        symmetric_pairs: optional ``(P, 2)`` integer pairs ``(vertex, mirror)`` (one or both orders;
            ``(i, i)`` marks a vertex on the symmetry line). With pairs, the embedding is symmetric: the
            energy is minimised over one half, the other half is its reflection ``u ↦ 1 − u``.
    Returns:
        ``(V, 2)`` float64 UVs in [0, 1]²; vertices outside the flattened component are NaN.
    """
    v = _np(vertices).astype(np.float64)
    f = _np(faces).astype(np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f"flatten: expected vertices (V, 3) and faces (F, 3), got {v.shape} and {f.shape}")
    V = len(v)
    disk = _as_disk(v, f)
    N = len(disk.vertices)
    W = _weights(disk.vertices, disk.faces)
    L = (sp.diags(np.asarray(W.sum(1)).ravel()) - W).tocsr()

    mirror = None
    if symmetric_pairs is not None:
        pairs = _np(symmetric_pairs).astype(np.int64).reshape(-1, 2)
        mirror = np.concatenate([_mirror_map(pairs, V), np.full(N - V, -1)])
        mirror[(mirror >= 0) & ~np.concatenate([disk.used, np.ones(N - V, bool)])[np.maximum(mirror, 0)]] = -1
        _hole_mirrors(disk, mirror, V)

    fixed = np.zeros(N, bool)
    fixed[disk.outer] = True
    uv = np.zeros((N, 2))
    uv[disk.outer] = _boundary_uv(disk.vertices, disk.outer, mirror)
    active = np.concatenate([disk.used, np.ones(N - V, bool)])

    # Reduced variables: x = P z + c. Each free class (a vertex, or a mirror pair) has one unknown per
    # coordinate; the mirror of a representative gets u = 1 − z_u, v = z_v; midline vertices get u = 0.5.
    for d in range(2):
        col = np.full(N, -1)
        sign = np.ones(N)
        const = np.where(fixed, uv[:, d], 0.0)
        free = active & ~fixed
        n_var = 0
        for i in np.flatnonzero(free):
            if col[i] >= 0 or (mirror is not None and d == 0 and mirror[i] == i):
                continue
            col[i] = n_var
            j = -1 if mirror is None else mirror[i]
            if j >= 0 and j != i and free[j]:
                col[j] = n_var
                if d == 0:
                    rep, other = (i, j) if disk.vertices[i, 0] >= disk.vertices[j, 0] else (j, i)
                    sign[other], const[other] = -1.0, 1.0
                    sign[rep], const[rep] = 1.0, 0.0
            n_var += 1
        if mirror is not None and d == 0:
            mid = free & (mirror == np.arange(N))
            const[mid] = 0.5
        rows = np.flatnonzero(col >= 0)
        P = sp.csr_matrix((sign[rows], (rows, col[rows])), shape=(N, n_var))
        A = (P.T @ L @ P).tocsc()
        b = -(P.T @ (L @ const))
        z = spla.spsolve(A, b)
        uv[:, d] = P @ z + const
    out = np.full((V, 2), np.nan)
    out[disk.used] = uv[:V][disk.used]
    return torch.as_tensor(np.clip(out, 0.0, 1.0))


def signed_areas(uv, faces) -> Tensor:
    """Signed area of each UV triangle (positive = counter-clockwise). ``(V, 2), (F, 3) -> (F,)``."""
    uv = torch.as_tensor(_np(uv))
    f = torch.as_tensor(_np(faces)).long()
    a, b, c = uv[f[:, 0]], uv[f[:, 1]], uv[f[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def count_flips(uv, faces) -> int:
    """Triangles whose UV orientation disagrees with the majority, or that are degenerate (NaN-free ones)."""
    s = signed_areas(uv, faces)
    s = s[torch.isfinite(s)]
    sign = 1.0 if (s > 0).sum() >= (s < 0).sum() else -1.0
    return int((s * sign <= 0).sum())


def distortion(vertices, faces, uv) -> dict[str, float]:
    """Area and angle distortion of a flattening, over triangles with finite UVs.

    Returns ``area``: mean ``|log(A_uv/A_3d ÷ median ratio)|`` (0 = every triangle's relative area kept) and
    ``angle_deg``: mean absolute difference between corresponding 3D and UV triangle angles, in degrees
    (0 = conformal).
    """
    v, f, t = _np(vertices).astype(np.float64), _np(faces).astype(np.int64), _np(uv).astype(np.float64)
    f = f[np.isfinite(t[f]).all((1, 2))]

    def angles(p):
        out = []
        for k in range(3):
            a, b = p[:, (k + 1) % 3] - p[:, k], p[:, (k + 2) % 3] - p[:, k]
            cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-15)
            out.append(np.arccos(np.clip(cos, -1, 1)))
        return np.stack(out, 1)

    p3, p2 = v[f], np.concatenate([t[f], np.zeros((len(f), 3, 1))], axis=2)
    a3 = 0.5 * np.linalg.norm(np.cross(p3[:, 1] - p3[:, 0], p3[:, 2] - p3[:, 0]), axis=1)
    a2 = 0.5 * np.linalg.norm(np.cross(p2[:, 1] - p2[:, 0], p2[:, 2] - p2[:, 0]), axis=1)
    ratio = np.log(np.maximum(a2, 1e-300) / np.maximum(a3, 1e-300))
    return {"area": float(np.abs(ratio - np.median(ratio)).mean()),
            "angle_deg": float(np.degrees(np.abs(angles(p3) - angles(p2)).mean()))}


def locate(uv, faces, points) -> tuple[Tensor, Tensor]:
    """Find, for each 2D point, a UV triangle containing it and its barycentric coordinates.

    Candidate triangles come from a k-d tree over triangle centroids (the 32 nearest), each tested
    exactly; points outside every candidate get triangle −1 (and NaN barycentrics).

    Args:
        uv: ``(V, 2)``; faces: ``(F, 3)``; points: ``(N, 2)``.
    Returns:
        ``(N,)`` int64 triangle ids and ``(N, 3)`` barycentric weights.
    """
    t = _np(uv).astype(np.float64)
    f = _np(faces).astype(np.int64)
    q = _np(points).astype(np.float64)
    ok = np.isfinite(t[f]).all((1, 2))
    fid = np.flatnonzero(ok)
    tri = t[f[fid]]
    cent = tri.mean(1)
    k = min(32, len(fid))
    _, cand = cKDTree(cent).query(q, k=k)
    cand = cand.reshape(len(q), k)
    a, b, c = tri[cand, 0], tri[cand, 1], tri[cand, 2]  # (N, k, 2)
    v0, v1, v2 = b - a, c - a, q[:, None] - a
    den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    den = np.where(np.abs(den) < 1e-300, np.nan, den)
    l1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
    l2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
    bary = np.stack([1 - l1 - l2, l1, l2], -1)
    inside = (bary >= -1e-9).all(-1)
    first = np.where(inside.any(1), inside.argmax(1), -1)
    rows = np.arange(len(q))
    ids = np.where(first >= 0, fid[cand[rows, np.maximum(first, 0)]], -1)
    w = np.where((first >= 0)[:, None], bary[rows, np.maximum(first, 0)], np.nan)
    return torch.as_tensor(ids), torch.as_tensor(w)
