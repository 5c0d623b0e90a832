"""Compiled CPU kernels (numba) for the renderer's two non-differentiable searches: the z-buffer
rasterisation of triangle ids and the nearest silhouette edge of each boundary pixel.

They compute *exactly* what the vectorised PyTorch searches of :mod:`morphable.render.rasterize` and
:mod:`morphable.render.silhouette` compute (same float arithmetic in the same order, same z-buffer keys and
tie rules; the tests compare the two bit for bit), but as plain loops: one pass over each triangle's pixel
box instead of building candidate lists, which on a CPU costs a handful of tensor passes per candidate.
A 224² render of a 35k-vertex mesh rasterises in about 1 ms here against 12–14 ms for the tensor version.
The tensor versions stay the path for other devices (CUDA) and the reference these are tested against,
beside the brute-force references (:func:`~morphable.render.rasterize.rasterize_reference`,
:func:`~morphable.render.silhouette.nearest_edge_reference`).

Arithmetic: every quantity the tensor path computes in the screen dtype (float32 normally) is computed
here in that dtype too: numba keeps float32 arithmetic in float32 and, without ``fastmath``, neither fuses
multiply–adds nor reorders sums, so the results match the tensor kernels' IEEE operations exactly.

The kernels are compiled on first use (a few seconds) and cached on disk beside this file when it is
writable (numba's ``cache=True``).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

@numba.njit(cache=True)
def _sortable_key(depth) -> np.int64:  # pragma: no cover - compiled
    """float32 ``depth`` -> int64 in [0, 2**32) with the float order, -0.0 below +0.0 and NaNs outside the
    infinities (rasterize._sortable_key). Only the rare z-tests that a float comparison cannot decide use it."""
    tmp = np.empty(1, np.float32)
    tmp[0] = depth
    b = np.int64(tmp.view(np.int32)[0])
    if b < 0:
        b = b ^ np.int64(0x7FFFFFFF)
    return b + np.int64(2**31)


@numba.njit(cache=True, inline="always")
def _nearer(depth, best) -> bool:  # pragma: no cover - compiled
    """Whether float32 ``depth`` has a smaller z-buffer key than ``best`` (ids decide exact ties: the earlier
    triangle, already in the buffer, keeps the pixel)."""
    if depth < best:
        return True
    if depth > best or (depth == best and depth != 0):
        return False
    return _sortable_key(depth) < _sortable_key(best)  # ±0 and NaN


@numba.njit(cache=True)
def _all_finite(screen) -> bool:  # pragma: no cover - compiled
    for v in range(screen.shape[0]):
        for c in range(3):
            if not np.isfinite(screen[v, c]):
                return False
    return True


@numba.njit(cache=True)
def _raster_image(screen, corners, parity, H, W, cull, perspective, near, zdepth, zid,
                  facing):  # pragma: no cover - compiled
    """z-buffer one mesh ``screen`` ``(V, 3)`` into ``zdepth`` (float32) and ``zid`` (int32 triangle id, −1
    empty), both ``(H·W,)``, and write every triangle's orientation into ``facing`` ``(F,)``.

    Per triangle, as rasterize._setup/_items/_scan: corners in canonical id order A < B < C, orientation and
    culling, the pixel box, the edge vectors times the sign of their barycentric scale (watertight), and the
    z-test of every pixel centre of the box by (float32 depth, id)."""
    F = corners.shape[1]
    dt = screen.dtype.type
    zero, one, nr = dt(0.0), dt(1.0), dt(near)
    finite = _all_finite(screen)
    for f in range(F):
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


@numba.njit(cache=True)
def _rasterize(screen, corners, parity, H, W, cull, perspective, near):  # pragma: no cover - compiled
    """Every mesh of the batch ``screen`` ``(B, V, 3)``. ``-> (ids (B, H·W) int32, facing (B, F) int8)``."""
    B = screen.shape[0]
    ids = np.full((B, H * W), np.int32(-1))
    facing = np.empty((B, corners.shape[1]), np.int8)
    zdepth = np.empty(H * W, np.float32)
    for b in range(B):
        _raster_image(screen[b], corners, parity, H, W, cull, perspective, near, zdepth, ids[b], facing[b])
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
    ids, facing = _rasterize(s, c, p, H, W, cull_backfaces, perspective, s.dtype.type(near))
    return torch.from_numpy(ids).view(B, H, W).long(), torch.from_numpy(facing).view(-1)


@numba.njit(cache=True)
def _nearest_edge(a, b, batch, boundary, reach):  # pragma: no cover - compiled
    """For every boundary pixel, the nearest segment within ``reach`` (ties: the lowest index), as
    silhouette._nearest_edge computes it. ``-> (B·H·W,)`` int64 segment index, −1 where none."""
    B, H, W = boundary.shape
    dt = a.dtype.type
    zero, one, r, r2 = dt(0.0), dt(1.0), dt(reach), dt(reach * reach)
    best = np.full(B * H * W, np.inf, np.float32)
    index = np.full(B * H * W, np.int64(-1))
    for s in range(a.shape[0]):
        ax, ay, bx, by = a[s, 0], a[s, 1], b[s, 0], b[s, 1]
        if not (np.isfinite(ax) and np.isfinite(ay) and np.isfinite(bx) and np.isfinite(by)):
            continue
        lox, loy = max(np.ceil(min(ax, bx) - r), zero), max(np.ceil(min(ay, by) - r), zero)
        hix, hiy = min(np.floor(max(ax, bx) + r), dt(W - 1)), min(np.floor(max(ay, by) + r), dt(H - 1))
        if not (hix - lox + one >= one and hiy - loy + one >= one):
            continue
        sx, sy = bx - ax, by - ay
        ab2 = max(sx * sx + sy * sy, dt(1e-12))
        rx, ry = lox - ax, loy - ay  # box origin − a
        base = batch[s] * H * W
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
                    index[p] = s
    return index


def nearest_edge_cpu(a: Tensor, b: Tensor, batch: Tensor, boundary: Tensor, reach: float) -> tuple[Tensor, Tensor]:
    """:func:`~morphable.render.silhouette._nearest_edge` on CPU tensors (same results).

    Args:
        a, b: ``(S, 2)`` segment end points (px); batch: ``(S,)`` int64 their image; boundary: ``(B, H, W)`` bool.
    Returns:
        packed ``(pix, index)``, both ``(N,)`` int64: flat pixel ids ``b·H·W + y·W + x`` (increasing) and the
        index into ``a`` of their nearest segment.
    """
    index = torch.from_numpy(_nearest_edge(a.detach().contiguous().numpy(), b.detach().contiguous().numpy(),
                                           batch.contiguous().numpy(), boundary.contiguous().numpy(), reach))
    pix = torch.from_numpy(np.flatnonzero(index.numpy() >= 0))
    return pix, index.index_select(0, pix)
