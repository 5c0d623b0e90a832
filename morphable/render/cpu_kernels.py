"""Compiled CPU kernels (numba) for the renderer: the z-buffer rasterisation of triangle ids, the silhouette
search (silhouette edges and each boundary pixel's nearest one), and the SH shading of the packed pixels with
its backward pass.

The two searches compute *exactly* what the vectorised PyTorch searches of :mod:`morphable.render.rasterize`
and :mod:`morphable.render.silhouette` compute (same float arithmetic in the same order, same z-buffer keys
and tie rules; the tests compare the two bit for bit), but as plain loops: one pass over each triangle's
pixel box instead of building candidate lists, which on a CPU costs a handful of tensor passes per
candidate. A 224² render of a 35k-vertex mesh rasterises in about 2.5 ms here against 12–14 ms for the
tensor version. The shading kernels equal :func:`~morphable.render.deferred.sh_shade_packed_reference` to
rounding (tested with values, gradients and ``gradcheck``). The tensor versions stay the path for other
devices (CUDA) and the references these are tested against, beside the brute-force references
(:func:`~morphable.render.rasterize.rasterize_reference`,
:func:`~morphable.render.silhouette.nearest_edge_reference`).

Arithmetic of the searches: every quantity the tensor path computes in the screen dtype (float32 normally)
is computed here in that dtype too: numba keeps float32 arithmetic in float32 and, without ``fastmath``,
neither fuses multiply–adds nor reorders sums, so the results match the tensor kernels' IEEE operations
exactly. Division is IEEE (``error_model="numpy"``: no exception on a zero divisor). The shading kernels may
reassociate (``fastmath`` without the no-NaN/no-infinity flags).

Threads: the rasteriser and the shading kernels each have a parallel twin (``*_parallel``, numba
``parallel=True``) that splits the loop into ``n`` chunks (the rasteriser: triangles dealt round-robin, one
z-buffer each, merged by the serial rule's order; the shading: pixel ranges, with per-range gradient buffers
summed after). :func:`~morphable.render.kernel_threads.kernel_threads` picks ``n`` from torch's thread count;
``n = 1`` runs the serial kernel. The parallel rasteriser and shading forward give the serial kernels' results
bit for bit, the parallel shading backward up to the order of its sums (tested). The silhouette search runs on
one thread. Kernels are compiled on first use (a few seconds; the parallel ones longer) and cached on disk beside
this file when it is writable (numba's ``cache=True``).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from morphable.render.kernel_threads import kernel_threads, launched, work_arrays

@numba.njit(cache=True, error_model="numpy")
def _sortable_key(depth) -> np.int64:  # pragma: no cover - compiled
    """float32 ``depth`` -> int64 in [0, 2**32) with the float order, -0.0 below +0.0 and NaNs outside the
    infinities (rasterize._sortable_key). Only the rare z-tests that a float comparison cannot decide use it."""
    tmp = np.empty(1, np.float32)
    tmp[0] = depth
    b = np.int64(tmp.view(np.int32)[0])
    if b < 0:
        b = b ^ np.int64(0x7FFFFFFF)
    return b + np.int64(2**31)


@numba.njit(cache=True, error_model="numpy", inline="always")
def _nearer(depth, best) -> bool:  # pragma: no cover - compiled
    """Whether float32 ``depth`` has a smaller z-buffer key than ``best`` (ids decide exact ties: the earlier
    triangle, already in the buffer, keeps the pixel)."""
    if depth < best:
        return True
    if depth > best or (depth == best and depth != 0):
        return False
    return _sortable_key(depth) < _sortable_key(best)  # ±0 and NaN


@numba.njit(cache=True, error_model="numpy")
def _all_finite(screen) -> bool:  # pragma: no cover - compiled
    for v in range(screen.shape[0]):
        for c in range(3):
            if not np.isfinite(screen[v, c]):
                return False
    return True


@numba.njit(cache=True, error_model="numpy")
def _raster_image(screen, corners, parity, H, W, cull, perspective, near, zdepth, zid, facing, first, step,
                  finite):  # pragma: no cover - compiled
    """z-buffer the triangles ``first, first + step, …`` of one mesh ``screen`` ``(V, 3)`` into ``zdepth``
    (float32) and ``zid`` (int32 triangle id, −1 empty), both ``(H·W,)``, and write their orientations into
    ``facing`` ``(F,)``. ``finite``: :func:`_all_finite` of ``screen`` (then no triangle checks its corners).

    Per triangle, as rasterize._setup/_items/_scan: corners in canonical id order A < B < C, orientation and
    culling, the pixel box, the edge vectors times the sign of their barycentric scale (watertight), and the
    z-test of every pixel centre of the box by (float32 depth, id)."""
    F = corners.shape[1]
    dt = screen.dtype.type
    zero, one, nr = dt(0.0), dt(1.0), dt(near)
    for f in range(first, F, step):
        ia, ib, ic = corners[0, f], corners[1, f], corners[2, f]
        xa, ya, da = screen[ia, 0], screen[ia, 1], screen[ia, 2]
        xb, yb, db = screen[ib, 0], screen[ib, 1], screen[ib, 2]
        xc, yc, dc = screen[ic, 0], screen[ic, 1], screen[ic, 2]
        area2 = (xc - xb) * (ya - yb) - (yc - yb) * (xa - xb)
        sa = area2 * parity[f]
        if sa != sa or not (finite or (np.isfinite(xa) and np.isfinite(xb) and np.isfinite(xc) and np.isfinite(ya)
                                       and np.isfinite(yb) and np.isfinite(yc) and np.isfinite(da)
                                       and np.isfinite(db) and np.isfinite(dc))):
            facing[f] = 0
            continue
        face = np.int8(1) if sa > zero else (np.int8(-1) if sa < zero else np.int8(0))
        if perspective:
            if not (da > zero and db > zero and dc > zero):
                face = np.int8(0)
            good = da != zero and db != zero and dc != zero and max(max(da, db), dc) >= nr
            if cull:
                good = good and (sa * (da * db * dc)) < zero
            else:
                good = good and area2 != zero
        elif cull:
            good = sa < zero
        else:
            good = area2 != zero
        facing[f] = face
        if not good:
            continue
        xmin, xmax = min(min(xa, xb), xc), max(max(xa, xb), xc)
        ymin, ymax = min(min(ya, yb), yc), max(max(ya, yb), yc)
        if perspective and min(min(da, db), dc) <= zero:
            xmin, ymin, xmax, ymax = zero, zero, dt(W - 1), dt(H - 1)
        x0, y0 = max(np.ceil(xmin), zero), max(np.ceil(ymin), zero)
        x1, y1 = min(np.floor(xmax), dt(W - 1)), min(np.floor(ymax), dt(H - 1))
        if not (x1 - x0 >= zero and y1 - y0 >= zero):
            continue
        inv = one / area2
        q0, q1, q2 = inv, -inv, inv
        if perspective:
            q0, q1, q2 = q0 / dc, q1 / db, q2 / da
        s0 = one if q0 > zero else (-one if q0 < zero else zero)
        s1 = one if q1 > zero else (-one if q1 < zero else zero)
        s2 = one if q2 > zero else (-one if q2 < zero else zero)
        q0, q1, q2 = abs(q0), abs(q1), abs(q2)
        if not perspective:
            q0, q1, q2 = q0 * dc, q1 * db, q2 * da
        ux0, uy0 = s0 * (xb - xa), s0 * (yb - ya)
        ux1, uy1 = s1 * (xc - xa), s1 * (yc - ya)
        ux2, uy2 = s2 * (xc - xb), s2 * (yc - yb)
        for py in range(np.int64(y0), np.int64(y1) + 1):
            fy = dt(py)
            ry, ry2 = fy - ya, fy - yb
            for px in range(np.int64(x0), np.int64(x1) + 1):
                fx = dt(px)
                rx, rx2 = fx - xa, fx - xb
                w0 = ux0 * ry - uy0 * rx
                w1 = ux1 * ry - uy1 * rx
                w2 = ux2 * ry2 - uy2 * rx2
                if not (w0 >= zero and w1 >= zero and w2 >= zero):
                    continue
                if perspective:
                    e0, e1, e2 = w0 * q0, w1 * q1, w2 * q2
                    inv_depth = e0 + e1 + e2
                    if not (inv_depth > zero and inv_depth * nr <= one):
                        continue
                    depth = np.float32(one / (e0 + e1 + e2))
                else:
                    depth = np.float32(w0 * q0 + w1 * q1 + w2 * q2)
                p = py * W + px
                if zid[p] < 0 or _nearer(depth, zdepth[p]):
                    zdepth[p] = depth
                    zid[p] = f


@numba.njit(cache=True, error_model="numpy")
def _rasterize(screen, corners, parity, H, W, cull, perspective, near):  # pragma: no cover - compiled
    """Every mesh of the batch ``screen`` ``(B, V, 3)``. ``-> (ids (B, H·W) int32, facing (B, F) int8)``."""
    B = screen.shape[0]
    ids = np.full((B, H * W), np.int32(-1))
    facing = np.empty((B, corners.shape[1]), np.int8)
    zdepth = np.empty(H * W, np.float32)
    for b in range(B):
        _raster_image(screen[b], corners, parity, H, W, cull, perspective, near, zdepth, ids[b], facing[b], 0, 1,
                      _all_finite(screen[b]))
    return ids, facing


@numba.njit(cache=True, error_model="numpy", parallel=True)
def _rasterize_parallel(screen, corners, parity, H, W, cull, perspective, near, work_depth,
                        work_ids):  # pragma: no cover - compiled
    """:func:`_rasterize` with each image's triangles dealt to ``n`` parallel threads (triangle ``f`` to thread
    ``f mod n``), each with its own z-buffer, merged afterwards by the serial rule's order: the smaller depth key,
    then the smaller triangle id. The same ids and orientations as the serial kernel. Work buffers from the
    caller (contents arbitrary): depths ``(n, H·W)`` float32, ids ``(n − 1, H·W)`` int32."""
    B, F = screen.shape[0], corners.shape[1]
    n = work_depth.shape[0]
    ids = np.full((B, H * W), np.int32(-1))
    facing = np.empty((B, F), np.int8)
    for b in range(B):
        finite = _all_finite(screen[b])  # once per image, not per thread
        for c in numba.prange(n):
            if c == 0:
                zid = ids[b]
            else:
                zid = work_ids[c - 1]
                zid[:] = -1
            _raster_image(screen[b], corners, parity, H, W, cull, perspective, near, work_depth[c], zid, facing[b],
                          c, n, finite)
        out = ids[b]
        for p in numba.prange(H * W):
            best, depth = out[p], work_depth[0, p]
            for c in range(1, n):
                f = work_ids[c - 1, p]
                if f >= 0:
                    d = work_depth[c, p]
                    if best < 0 or _nearer(d, depth) or (not _nearer(depth, d) and f < best):
                        best, depth = f, d
            out[p] = best
    return ids, facing


def rasterize_ids_facing_cpu(screen: Tensor, corners: tuple[list[Tensor], Tensor], image_size: tuple[int, int], *,
                             cull_backfaces: bool, perspective: bool, near: float) -> tuple[Tensor, Tensor]:
    """:func:`~morphable.render.rasterize.rasterize_ids_facing` on CPU tensors (same results).

    Args:
        screen: ``(B, V, 3)`` screen-space vertices ``(u px, v px, depth mm)``, float32 or float64, CPU.
        corners: ``_sorted_corners(triangles)``: three ``(F,)`` corner-id vectors in increasing id order and
            the ``(F,)`` ±1 parity.
    Returns:
        triangle ids ``(B, H, W)`` int64 (−1 background) and facing ``(B·F,)`` int8.
    """
    H, W = int(image_size[0]), int(image_size[1])
    B = screen.shape[0]
    s = np.ascontiguousarray(screen.detach().numpy())
    rows, parity = corners
    c = np.stack([r.numpy() for r in rows])  # (3, F) int32
    p = parity.numpy().astype(s.dtype)
    n = kernel_threads(c.shape[1])
    if n == 1:
        ids, facing = _rasterize(s, c, p, H, W, cull_backfaces, perspective, s.dtype.type(near))
    else:
        work = work_arrays("raster", (((n, H * W), np.float32), ((n - 1, H * W), np.int32)))
        ids, facing = _rasterize_parallel(s, c, p, H, W, cull_backfaces, perspective, s.dtype.type(near), *work)
        launched()
    return torch.from_numpy(ids).view(B, H, W).long(), torch.from_numpy(facing).view(-1)


@numba.njit(cache=True, error_model="numpy")
def _segment_search(screen, b, h, index, half_vertices, boundary, reach, best, winner):  # pragma: no cover - compiled
    """Offer half-edge ``h`` of image ``b`` (its end points' screen positions) as candidate ``index`` to every
    boundary pixel within ``reach``, as silhouette._nearest_edge does: box grown by ``reach``, squared distance
    to the segment, float32 keys, the earlier candidate kept on ties."""
    B, H, W = boundary.shape
    dt = screen.dtype.type
    zero, one, r, r2 = dt(0.0), dt(1.0), dt(reach), dt(reach * reach)
    va, vb = half_vertices[0, h], half_vertices[1, h]
    ax, ay, bx, by = screen[b, va, 0], screen[b, va, 1], screen[b, vb, 0], screen[b, vb, 1]
    if not (np.isfinite(ax) and np.isfinite(ay) and np.isfinite(bx) and np.isfinite(by)):
        return
    lox, loy = max(np.ceil(min(ax, bx) - r), zero), max(np.ceil(min(ay, by) - r), zero)
    hix, hiy = min(np.floor(max(ax, bx) + r), dt(W - 1)), min(np.floor(max(ay, by) + r), dt(H - 1))
    if not (hix - lox + one >= one and hiy - loy + one >= one):
        return
    sx, sy = bx - ax, by - ay
    ab2 = max(sx * sx + sy * sy, dt(1e-12))
    rx, ry = lox - ax, loy - ay  # box origin − a
    base = b * H * W
    for dy in range(np.int64(hiy - loy) + 1):
        py = ry + dt(dy)
        row = base + (np.int64(loy) + dy) * W + np.int64(lox)
        for dx in range(np.int64(hix - lox) + 1):
            p = row + dx
            if not boundary.flat[p]:
                continue
            px = rx + dt(dx)
            t = min(max((px * sx + py * sy) / ab2, zero), one)
            ex, ey = px - t * sx, py - t * sy
            dist2 = ex * ex + ey * ey  # squared, as the tensor search
            if dist2 <= r2 and np.float32(dist2) < best[p]:  # keys compare float32 distances
                best[p] = np.float32(dist2)
                winner[p] = index
                winner[best.shape[0] + p] = h


@numba.njit(cache=True, error_model="numpy")
def _silhouette_search(screen, facing, first, second, first_face, second_face, has_second, half_vertices, boundary,
                       reach):  # pragma: no cover - compiled
    """silhouette.silhouette_edges + _nearest_edge in one pass: the silhouette half-edges of every image (folds
    between front and back faces, boundary edges), offered in the tensor search's candidate order (every image's
    first sides, then every image's second sides) so that ties resolve identically. ``-> (B·H·W,)`` winning
    half-edge per pixel, −1 where none."""
    B, H, W = boundary.shape
    E = first.shape[0]
    best = np.full(B * H * W, np.inf, np.float32)
    winner = np.full(2 * B * H * W, np.int64(-1))  # [candidate index | half-edge]
    index = 0
    for side in range(2):
        for b in range(B):
            for e in range(E):
                f1 = facing[b, first_face[e]]
                f2 = facing[b, second_face[e]] if has_second[e] else np.int8(0)
                if f1 == f2:
                    continue
                if side == 0 and f1 != 0:
                    _segment_search(screen, b, first[e], index, half_vertices, boundary, reach, best, winner)
                    index += 1
                elif side == 1 and f2 != 0:
                    _segment_search(screen, b, second[e], index, half_vertices, boundary, reach, best, winner)
                    index += 1
    return winner[B * H * W:]


def silhouette_search_cpu(screen: Tensor, facing: Tensor, topology, boundary: Tensor,
                          reach: float) -> tuple[Tensor, Tensor]:
    """The silhouette half-edges (:func:`~morphable.render.silhouette.silhouette_edges`) and each boundary pixel's
    nearest one within ``reach`` (:func:`~morphable.render.silhouette._nearest_edge`) in one compiled pass, on
    CPU tensors; the same result as those two.

    Args:
        screen: ``(B, V, 3)`` screen-space vertices; facing: ``(B·F,)`` int8 triangle orientations;
        topology: the mesh's :class:`~morphable.render.silhouette.EdgeTopology`; boundary: ``(B, H, W)`` bool.
    Returns:
        packed ``(pix, half_edge)``, both ``(N,)`` int64: flat pixel ids ``b·H·W + y·W + x`` (increasing) and
        their nearest silhouette half-edge ``3 f + i``.
    """
    B = screen.shape[0]
    t = topology
    half = torch.from_numpy(_silhouette_search(
        screen.detach().contiguous().numpy(), facing.view(B, -1).numpy(), t.first.numpy(), t.second.numpy(),
        t.first_face.numpy(), t.second_face.numpy(), t.has_second.numpy(), t.half_vertices.numpy(),
        boundary.contiguous().numpy(), reach))
    pix = torch.from_numpy(np.flatnonzero(half.numpy() >= 0))
    return pix, half.index_select(0, pix)


_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}  # shading only: IEEE infinities and NaNs kept


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _pixel(screen, normals, colors, triangles, b, f, px, py, perspective, eps, tiny):  # pragma: no cover - compiled
    """One packed pixel's forward quantities (render.deferred, steps 1–2, as scalars): corner ids, barycentrics
    λ (clamped to the triangle, :func:`~morphable.render.rasterize.barycentric_at`: ``λ_i = c_i / Σ c``,
    ``c_i = max(s w_i / d_i, 0)``), the orientation ``s = ±1``, ``Σ c`` and its reciprocal, the unit normal m,
    ``|n|``, ``1 / max(|n|, eps)`` and the albedo ρ. Written branch-free in the screen dtype (``max``, and
    constants made from ``tiny``): float32 stays float32, and no data-dependent branch stalls the loop."""
    zero = tiny - tiny  # (an integer literal would make the arithmetic float64: numba types it int64)
    one = tiny / tiny
    i0, i1, i2 = triangles[f, 0], triangles[f, 1], triangles[f, 2]
    x0, y0, x1, y1, x2, y2 = screen[b, i0, 0], screen[b, i0, 1], screen[b, i1, 0], screen[b, i1, 1], \
        screen[b, i2, 0], screen[b, i2, 1]
    # w_i = (x_k − x_j)(py − y_j) − (y_k − y_j)(px − x_j), (j, k) = (i + 1, i + 2)
    w0 = (x2 - x1) * (py - y1) - (y2 - y1) * (px - x1)
    w1 = (x0 - x2) * (py - y2) - (y0 - y2) * (px - x2)
    w2 = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
    sign = one if w0 + w1 + w2 >= zero else -one
    if perspective:
        w0, w1, w2 = w0 / screen[b, i0, 2], w1 / screen[b, i1, 2], w2 / screen[b, i2, 2]
    c0, c1, c2 = max(sign * w0, zero), max(sign * w1, zero), max(sign * w2, zero)
    total = max(c0 + c1 + c2, tiny)
    inv = one / total
    l0, l1, l2 = c0 * inv, c1 * inv, c2 * inv
    nx = l0 * normals[b, i0, 0] + l1 * normals[b, i1, 0] + l2 * normals[b, i2, 0]
    ny = l0 * normals[b, i0, 1] + l1 * normals[b, i1, 1] + l2 * normals[b, i2, 1]
    nz = l0 * normals[b, i0, 2] + l1 * normals[b, i1, 2] + l2 * normals[b, i2, 2]
    r0 = l0 * colors[b, i0, 0] + l1 * colors[b, i1, 0] + l2 * colors[b, i2, 0]
    r1 = l0 * colors[b, i0, 1] + l1 * colors[b, i1, 1] + l2 * colors[b, i2, 1]
    r2 = l0 * colors[b, i0, 2] + l1 * colors[b, i1, 2] + l2 * colors[b, i2, 2]
    length = np.sqrt(nx * nx + ny * ny + nz * nz)
    scale = one / max(length, eps)
    return (i0, i1, i2, l0, l1, l2, sign, total, inv, nx * scale, ny * scale, nz * scale, length, scale, r0, r1, r2)


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _shading(K, beta, bk, mx, my, mz):  # pragma: no cover - compiled
    """``s = β + Kᵀψ(m)`` (3 channels) and ψ's five quadratic rows, one image's light ``bk``."""
    p3, p4, p5, p6, p7 = mx * my, my * mz, mx * mz, mz * mz, mx * mx - my * my
    s0 = (beta[bk, 0] + K[bk, 0, 0] * mx + K[bk, 1, 0] * my + K[bk, 2, 0] * mz + K[bk, 3, 0] * p3
          + K[bk, 4, 0] * p4 + K[bk, 5, 0] * p5 + K[bk, 6, 0] * p6 + K[bk, 7, 0] * p7)
    s1 = (beta[bk, 1] + K[bk, 0, 1] * mx + K[bk, 1, 1] * my + K[bk, 2, 1] * mz + K[bk, 3, 1] * p3
          + K[bk, 4, 1] * p4 + K[bk, 5, 1] * p5 + K[bk, 6, 1] * p6 + K[bk, 7, 1] * p7)
    s2 = (beta[bk, 2] + K[bk, 0, 2] * mx + K[bk, 1, 2] * my + K[bk, 2, 2] * mz + K[bk, 3, 2] * p3
          + K[bk, 4, 2] * p4 + K[bk, 5, 2] * p5 + K[bk, 6, 2] * p6 + K[bk, 7, 2] * p7)
    return s0, s1, s2, p3, p4, p5, p6, p7


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _psi_gradient(K, bk, gs0, gs1, gs2):  # pragma: no cover - compiled
    """``∂/∂ψ = K ∂/∂s`` (8 rows) for one pixel of image light ``bk``."""
    return (K[bk, 0, 0] * gs0 + K[bk, 0, 1] * gs1 + K[bk, 0, 2] * gs2,
            K[bk, 1, 0] * gs0 + K[bk, 1, 1] * gs1 + K[bk, 1, 2] * gs2,
            K[bk, 2, 0] * gs0 + K[bk, 2, 1] * gs1 + K[bk, 2, 2] * gs2,
            K[bk, 3, 0] * gs0 + K[bk, 3, 1] * gs1 + K[bk, 3, 2] * gs2,
            K[bk, 4, 0] * gs0 + K[bk, 4, 1] * gs1 + K[bk, 4, 2] * gs2,
            K[bk, 5, 0] * gs0 + K[bk, 5, 1] * gs1 + K[bk, 5, 2] * gs2,
            K[bk, 6, 0] * gs0 + K[bk, 6, 1] * gs1 + K[bk, 6, 2] * gs2,
            K[bk, 7, 0] * gs0 + K[bk, 7, 1] * gs1 + K[bk, 7, 2] * gs2)


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST, inline="always")
def _shade_pixels(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective, eps, tiny, lo, hi,
                  out):  # pragma: no cover - compiled
    """Packed SH-shaded colours of pixels ``lo:hi`` into ``out`` ``(P, 3)`` (render.deferred: barycentrics,
    interpolation, Lᵀφ(m) = Kᵀψ(m) + β with ψ = (m_x, m_y, m_z, m_x m_y, m_y m_z, m_x m_z, m_z², m_x² − m_y²))."""
    shared = K.shape[0] == 1
    for p in range(lo, hi):
        b = batch[p]
        _, _, _, _, _, _, _, _, _, mx, my, mz, _, _, r0, r1, r2 = _pixel(
            screen, normals, colors, triangles, b, face[p], centres[p, 0], centres[p, 1], perspective, eps, tiny)
        s0, s1, s2, _, _, _, _, _ = _shading(K, beta, 0 if shared else b, mx, my, mz)
        out[p, 0], out[p, 1], out[p, 2] = r0 * s0, r1 * s1, r2 * s2


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST)
def _sh_shade_forward(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective,
                      eps, tiny):  # pragma: no cover - compiled
    """Packed SH-shaded colours ``(P, 3)`` of every pixel (:func:`_shade_pixels`), on one thread."""
    out = np.empty((face.shape[0], 3), screen.dtype)
    _shade_pixels(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective, eps, tiny, 0,
                  face.shape[0], out)
    return out


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST, parallel=True)
def _sh_shade_forward_parallel(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective,
                               eps, tiny, chunks):  # pragma: no cover - compiled
    """:func:`_sh_shade_forward` as ``chunks`` ranges of pixels on parallel threads (the same values: each pixel
    is computed alone)."""
    P = face.shape[0]
    out = np.empty((P, 3), screen.dtype)
    for c in numba.prange(chunks):
        _shade_pixels(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective, eps, tiny,
                      c * P // chunks, (c + 1) * P // chunks, out)
    return out


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST)
def _sh_shade_backward_into(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective, eps,
                            tiny, grad, lo, hi, g_screen, g_normals, g_colors, psi_all,
                            g_s_all):  # pragma: no cover - compiled
    """Gradients of ``Σ grad · colour`` for :func:`_sh_shade_forward` from the pixels ``lo:hi``, accumulated into
    ``(g_screen, g_normals, g_colors)`` (the inputs' shapes), with each pixel's ``ψ`` and ``∂/∂s`` written to its
    rows of ``psi_all`` ``(P, 8)`` and ``g_s_all`` ``(P, 3)`` (``∂/∂K = Σ_p ψ ⊗ ∂/∂s`` and ``∂/∂β = Σ_p ∂/∂s`` are
    sums over each image's pixels, left to a matrix product). Each pixel's forward quantities are recomputed
    instead of stored; every loop is unrolled into scalars (no per-pixel array views or branches)."""
    shared = K.shape[0] == 1
    zero = tiny - tiny
    for p in range(lo, hi):
        b = batch[p]
        bk = 0 if shared else b
        px, py = centres[p, 0], centres[p, 1]
        i0, i1, i2, l0, l1, l2, sign, total, inv, mx, my, mz, length, scale, r0, r1, r2 = _pixel(
            screen, normals, colors, triangles, b, face[p], px, py, perspective, eps, tiny)
        s0, s1, s2, p3, p4, p5, p6, p7 = _shading(K, beta, bk, mx, my, mz)
        psi_all[p, 0], psi_all[p, 1], psi_all[p, 2], psi_all[p, 3] = mx, my, mz, p3
        psi_all[p, 4], psi_all[p, 5], psi_all[p, 6], psi_all[p, 7] = p4, p5, p6, p7
        g0, g1, g2 = grad[p, 0], grad[p, 1], grad[p, 2]
        gr0, gr1, gr2 = g0 * s0, g1 * s1, g2 * s2  # ∂/∂ρ
        gs0, gs1, gs2 = g0 * r0, g1 * r1, g2 * r2  # ∂/∂s
        g_s_all[p, 0], g_s_all[p, 1], g_s_all[p, 2] = gs0, gs1, gs2
        q0, q1, q2, q3, q4, q5, q6, q7 = _psi_gradient(K, bk, gs0, gs1, gs2)
        # (∂ψ/∂m)ᵀ g_ψ, then through m = n / max(|n|, eps): (I − m mᵀ) g / |n| (g / eps where clamped)
        gmx = q0 + my * q3 + mz * q5 + (mx + mx) * q7
        gmy = q1 + mx * q3 + mz * q4 - (my + my) * q7
        gmz = q2 + my * q4 + mx * q5 + (mz + mz) * q6
        dot = gmx * mx + gmy * my + gmz * mz if length >= eps else zero
        gnx, gny, gnz = (gmx - mx * dot) * scale, (gmy - my * dot) * scale, (gmz - mz * dot) * scale
        # corners: attribute gradients λ_i g, and g_λ_i = g_n · N_i + g_ρ · ρ_i
        gl0 = (gnx * normals[b, i0, 0] + gny * normals[b, i0, 1] + gnz * normals[b, i0, 2]
               + gr0 * colors[b, i0, 0] + gr1 * colors[b, i0, 1] + gr2 * colors[b, i0, 2])
        gl1 = (gnx * normals[b, i1, 0] + gny * normals[b, i1, 1] + gnz * normals[b, i1, 2]
               + gr0 * colors[b, i1, 0] + gr1 * colors[b, i1, 1] + gr2 * colors[b, i1, 2])
        gl2 = (gnx * normals[b, i2, 0] + gny * normals[b, i2, 1] + gnz * normals[b, i2, 2]
               + gr0 * colors[b, i2, 0] + gr1 * colors[b, i2, 1] + gr2 * colors[b, i2, 2])
        for v, li in ((i0, l0), (i1, l1), (i2, l2)):
            g_normals[b, v, 0] += li * gnx
            g_normals[b, v, 1] += li * gny
            g_normals[b, v, 2] += li * gnz
            g_colors[b, v, 0] += li * gr0
            g_colors[b, v, 1] += li * gr1
            g_colors[b, v, 2] += li * gr2
        # λ_i = c_i / Σc: ∂/∂c_i = (g_λi − λ·g_λ) / Σc where c_i > 0 (0 where clamped); c_i = s w_i / d_i
        lam_dot = l0 * gl0 + l1 * gl1 + l2 * gl2
        gc0 = (gl0 - lam_dot) * inv if l0 > zero else zero
        gc1 = (gl1 - lam_dot) * inv if l1 > zero else zero
        gc2 = (gl2 - lam_dot) * inv if l2 > zero else zero
        if perspective:
            d0, d1, d2 = screen[b, i0, 2], screen[b, i1, 2], screen[b, i2, 2]
            g_screen[b, i0, 2] -= gc0 * l0 * total / d0
            g_screen[b, i1, 2] -= gc1 * l1 * total / d1
            g_screen[b, i2, 2] -= gc2 * l2 * total / d2
            gw0, gw1, gw2 = sign * gc0 / d0, sign * gc1 / d1, sign * gc2 / d2
        else:
            gw0, gw1, gw2 = sign * gc0, sign * gc1, sign * gc2
        dx0, dy0 = px - screen[b, i0, 0], py - screen[b, i0, 1]
        dx1, dy1 = px - screen[b, i1, 0], py - screen[b, i1, 1]
        dx2, dy2 = px - screen[b, i2, 0], py - screen[b, i2, 1]
        # corner c is the k of w_{c+1} and the j of w_{c+2}: ∂w_i/∂x_k = dy_j, ∂w_i/∂x_j = −dy_k,
        # ∂w_i/∂y_k = −dx_j, ∂w_i/∂y_j = dx_k
        g_screen[b, i0, 0] += gw1 * dy2 - gw2 * dy1
        g_screen[b, i0, 1] += gw2 * dx1 - gw1 * dx2
        g_screen[b, i1, 0] += gw2 * dy0 - gw0 * dy2
        g_screen[b, i1, 1] += gw0 * dx2 - gw2 * dx0
        g_screen[b, i2, 0] += gw0 * dy1 - gw1 * dy0
        g_screen[b, i2, 1] += gw1 * dx0 - gw0 * dx1

@numba.njit(cache=True, error_model="numpy", fastmath=_FAST)
def _sh_shade_backward(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective, eps, tiny,
                       grad):  # pragma: no cover - compiled
    """:func:`_sh_shade_backward_into` of every pixel on one thread, into new arrays:
    ``-> (g_screen, g_normals, g_colors, ψ (P, 8), ∂/∂s (P, 3))``."""
    P = face.shape[0]
    g_screen, g_normals, g_colors = np.zeros_like(screen), np.zeros_like(normals), np.zeros_like(colors)
    psi_all, g_s_all = np.empty((P, 8), screen.dtype), np.empty((P, 3), screen.dtype)
    _sh_shade_backward_into(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective, eps, tiny,
                            grad, 0, P, g_screen, g_normals, g_colors, psi_all, g_s_all)
    return g_screen, g_normals, g_colors, psi_all, g_s_all


@numba.njit(cache=True, error_model="numpy", inline="always")
def _add_flat(dst, src):  # pragma: no cover - compiled
    """``dst += src`` for C-contiguous arrays of one shape, as a flat loop."""
    d, s = dst.ravel(), src.ravel()
    for i in range(d.shape[0]):
        d[i] += s[i]


@numba.njit(cache=True, error_model="numpy", fastmath=_FAST, parallel=True)
def _sh_shade_backward_parallel(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective, eps,
                                tiny, grad, work_screen, work_normals, work_colors):  # pragma: no cover - compiled
    """:func:`_sh_shade_backward` as ``n`` pixel ranges on parallel threads. The first range accumulates into the
    new result arrays, range ``c ≥ 1`` into the caller's work arrays ``work_*[c − 1]`` (``(n − 1, *input
    shape)``, any content), summed into the result afterwards in range order: the sums differ from the serial
    kernel's by rounding. Reusing the caller's buffers matters: arrays allocated by a worker thread come from
    its own malloc arena, which returns them to the system, and their page faults cost more than the split
    gains."""
    P = face.shape[0]
    n = work_screen.shape[0] + 1
    g_screen, g_normals, g_colors = np.zeros_like(screen), np.zeros_like(normals), np.zeros_like(colors)
    psi_all, g_s_all = np.empty((P, 8), screen.dtype), np.empty((P, 3), screen.dtype)
    for c in numba.prange(n):
        if c == 0:
            a_screen, a_normals, a_colors = g_screen, g_normals, g_colors
        else:
            a_screen, a_normals, a_colors = work_screen[c - 1], work_normals[c - 1], work_colors[c - 1]
            a_screen[:] = 0
            a_normals[:] = 0
            a_colors[:] = 0
        _sh_shade_backward_into(screen, normals, colors, K, beta, triangles, batch, face, centres, perspective, eps,
                                tiny, grad, c * P // n, (c + 1) * P // n, a_screen, a_normals, a_colors, psi_all,
                                g_s_all)
    for c in range(n - 1):
        _add_flat(g_screen, work_screen[c])
        _add_flat(g_normals, work_normals[c])
        _add_flat(g_colors, work_colors[c])
    return g_screen, g_normals, g_colors, psi_all, g_s_all
