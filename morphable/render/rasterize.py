"""Pure-PyTorch triangle rasteriser: per-pixel triangle id, barycentrics and depth (a z-buffer).

Deferred shading (Genova et al. 2018, "Unsupervised Training for 3D Morphable Model Regression", §3.2,
after tf_mesh_renderer): a non-differentiable search picks each pixel's triangle, then the pixel's
barycentric coordinates are recomputed *differentiably* from the screen-space vertex positions of that
triangle, so attribute interpolation (:func:`interpolate`) carries gradients to vertex positions.
Pixels just beyond a silhouette (:mod:`morphable.render.silhouette`) are shaded from the edge's triangle
with its barycentrics clamped to the triangle (:func:`barycentric_at`; Genova's extension extrapolates them,
which diverges on the nearly edge-on triangles that make silhouettes).

Screen space (see ``geometry/camera.py``): ``screen[..., 0:2]`` = ``(u, v)`` pixels, x right, y down,
pixel centres at integer coordinates; ``screen[..., 2]`` = depth in mm, larger is farther.

* ``perspective=False`` (scaled orthographic): barycentrics and depth are affine in screen space.
* ``perspective=True``: ``depth`` is the camera-space distance ``d`` along the view axis; barycentrics
  are perspective-correct, ``λ_i = (b_i / d_i) / Σ_j (b_j / d_j)`` with ``b`` the screen-space ones, and
  pixel depth is ``1 / Σ_j (b_j / d_j)``. Those formulas are the 2-D homogeneous rasterisation of Olano &
  Greer (1997) and stay exact for triangles that cross the camera plane (vertices with ``d < 0`` project
  mirrored but consistently), so near-plane clipping is a per-pixel test ``depth >= near``: the same set
  of pixels a clipped triangle would cover. Vertices with ``d == 0`` or non-finite ``(u, v)`` drop
  their triangles.

Coverage rule: a pixel centre is inside a triangle when all three barycentrics are ``>= 0`` (pixels
exactly on a shared edge belong to both triangles). Among the triangles covering a pixel the nearest
wins (depth compared as float32); exact depth ties go to the lowest triangle id. Results are therefore
deterministic and independent of thread count.

On CPU tensors the search runs as a compiled loop (:mod:`morphable.render.cpu_kernels`, numba) that
computes the very same ids as the tensor search described next, which other devices use.

Tensor search (:func:`rasterize` with ``compiled=False``): every triangle's pixel bounding box is cut into 2 × 2 blocks of pixel
centres, one scan item each (:func:`box_cells`); two scans (every triangle's first block, the other
blocks of the larger boxes) evaluate the edge functions on the four cells of every item as one
broadcast tensor op each (edges evaluated in a canonical direction, so shared edges leave no holes:
watertight), in chunks of at most ``max_candidates`` (item, pixel) pairs, so memory stays bounded for
large or close-up triangles. The z-test is one ``scatter_reduce``
(``amin``) of int64 keys holding the float32 depth bits (made order-preserving) in the high bits and
the triangle id + 1 in the low 24 bits. :func:`rasterize_reference` is the slow, obvious version (a Python
loop over triangles and pixels in float64) kept to test it against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

TRIANGLE_BITS = 24  # low bits of the z-buffer key hold the triangle id + 1: at most 2**24 − 2 triangles
_EMPTY = 2**62  # z-buffer fill: above every key (< 2**56), low bits 0 (id + 1 = 0: no triangle)


@dataclass(frozen=True)
class Fragments:
    """Per-pixel rasterisation result.

    Attributes:
        triangle_id: ``(B, H, W)`` int64 id of the visible triangle, −1 on background.
        barycentric: ``(B, H, W, 3)`` barycentric coordinates of the pixel centre in that triangle
            (perspective-correct for perspective cameras), 0 on background. Differentiable with
            respect to the screen-space vertex positions.
        depth: ``(B, H, W)`` depth in mm (larger is farther), ``inf`` on background; differentiable.
        perspective: whether the barycentrics are perspective-correct (how they were computed).
    """

    triangle_id: Tensor
    barycentric: Tensor
    depth: Tensor
    perspective: bool = False

    @property
    def mask(self) -> Tensor:
        """``(B, H, W)`` bool coverage."""
        return self.triangle_id >= 0

    def detach(self) -> "Fragments":
        """The same fragments with gradients stopped."""
        return Fragments(self.triangle_id, self.barycentric.detach(), self.depth.detach(), self.perspective)


def _check_inputs(screen: Tensor, triangles: Tensor, image_size: tuple[int, int]) -> tuple[int, int]:
    if screen.dim() != 3 or screen.shape[-1] != 3:
        raise ValueError(f"rasterize: expected screen of shape (B, V, 3), got {tuple(screen.shape)}")
    if triangles.dim() != 2 or triangles.shape[-1] != 3 or triangles.dtype != torch.int64:
        raise ValueError(f"rasterize: expected triangles (F, 3) int64, got {tuple(triangles.shape)} {triangles.dtype}")
    if triangles.shape[0] >= 2**TRIANGLE_BITS - 1:
        raise ValueError(f"rasterize: at most {2**TRIANGLE_BITS - 2} triangles, got {triangles.shape[0]}")
    H, W = int(image_size[0]), int(image_size[1])
    if H <= 0 or W <= 0:
        raise ValueError(f"rasterize: image_size must be positive, got {image_size}")
    return H, W


# ---------------------------------------------------------------------------------------------------
# differentiable barycentrics (the deferred part)
# ---------------------------------------------------------------------------------------------------

def barycentric_at(screen: Tensor, triangles: Tensor, batch: Tensor, triangle_id: Tensor, pixels: Tensor,
                   perspective: bool) -> tuple[Tensor, Tensor]:
    """Differentiable barycentrics and depth of given pixel centres in given triangles.

    Inside the triangle these are the (perspective-correct) barycentrics. Outside it (the pixels shaded just
    beyond the silhouette) they are clamped to the triangle: ``λ_i = max(s w_i / d_i, 0) / Σ_j max(s w_j / d_j, 0)``
    with ``w_i`` the signed areas, ``s`` the triangle's orientation and ``d_i = 1`` for orthographic cameras,
    which equals ``w_i / d_i / Σ_j w_j / d_j`` inside and never divides by the triangle's area. Genova et al.'s
    unclamped extension (negative barycentrics) grows like ``distance / height``: silhouette triangles are
    nearly edge-on, and their extrapolated colours were unbounded (NaN where one was exactly edge-on). The
    depth is the triangle plane's, extrapolated.

    Args:
        screen: ``(B, V, 3)`` screen-space vertices ``(u, v, depth)``.
        triangles: ``(F, 3)`` int64.
        batch, triangle_id: ``(P,)`` int64 batch index and triangle id of each query.
        pixels: ``(P, 2)`` pixel-centre coordinates ``(x, y)``.
        perspective: perspective-correct barycentrics and hyperbolic depth (see module docstring).
    Returns:
        barycentric ``(P, 3)`` and depth ``(P,)``.
    """
    B, V = screen.shape[:2]
    cols = screen.reshape(B * V, 3).t()  # (3, B·V) views: x, y, depth rows
    corner = triangles.index_select(0, triangle_id) + (batch * V)[:, None]  # (P, 3) flat vertex ids
    x, y, d = ([cols[c].index_select(0, corner[:, i]) for i in range(3)] for c in range(3))
    px, py = pixels[:, 0].to(screen.dtype), pixels[:, 1].to(screen.dtype)
    # w_i = cross(v_k − v_j, p − v_j), (j, k) = (i + 1, i + 2): twice the signed area opposite corner i
    w = [(x[(i + 2) % 3] - x[(i + 1) % 3]) * (py - y[(i + 1) % 3])
         - (y[(i + 2) % 3] - y[(i + 1) % 3]) * (px - x[(i + 1) % 3]) for i in range(3)]
    area2 = w[0] + w[1] + w[2]
    sign = torch.where(area2 < 0, -1.0, 1.0).to(screen.dtype)
    c = [(sign * w[i] / d[i] if perspective else sign * w[i]).clamp_min(0) for i in range(3)]
    bary = torch.stack(c, dim=-1) / (c[0] + c[1] + c[2]).clamp_min(torch.finfo(screen.dtype).tiny)[:, None]
    if perspective:
        inv_depth = (w[0] / d[0] + w[1] / d[1] + w[2] / d[2]) / area2  # Σ b_i / d_i, affine in screen space
        return bary, 1.0 / inv_depth
    b = [w[i] / area2 for i in range(3)]
    return bary, (b[0] * d[0] + b[1] * d[1] + b[2] * d[2])


def interpolate(attributes: Tensor, fragments: Fragments, triangles: Tensor) -> Tensor:
    """Interpolate per-vertex attributes at the pixels: ``out[p] = Σ_i λ_i(p) · attr[tri(p)_i]``.

    Args:
        attributes: ``(B, V, C)`` (or ``(V, C)``, shared by the batch).
        fragments: from :func:`rasterize`.
        triangles: ``(F, 3)`` int64 (the ones rasterised).
    Returns:
        ``(B, H, W, C)``, 0 on background; differentiable in the attributes and (through the
        barycentrics) in the vertex positions.
    """
    tri = fragments.triangle_id
    B, H, W = tri.shape
    if attributes.dim() == 2:
        attributes = attributes.expand(B, *attributes.shape)
    if attributes.dim() != 3 or attributes.shape[0] != B:
        raise ValueError(f"interpolate: expected attributes (B={B}, V, C), got {tuple(attributes.shape)}")
    mask = tri >= 0
    corners = triangles[tri.clamp_min(0)]  # (B, H, W, 3)
    batch = torch.arange(B, device=tri.device)[:, None, None, None]
    values = attributes[batch, corners]  # (B, H, W, 3, C)
    out = (fragments.barycentric.unsqueeze(-1).to(values.dtype) * values).sum(dim=-2)
    return out * mask.unsqueeze(-1).to(out.dtype)


# ---------------------------------------------------------------------------------------------------
# fast non-differentiable search
# ---------------------------------------------------------------------------------------------------

_NUMPY_COMPARE = {">=": np.greater_equal, ">": np.greater, "<=": np.less_equal, "<": np.less, "==": np.equal,
                  "!=": np.not_equal}
_TORCH_COMPARE = {">=": torch.ge, ">": torch.gt, "<=": torch.le, "<": torch.lt, "==": torch.eq, "!=": torch.ne}


def compare(x: Tensor, op: str, other: Tensor | float) -> Tensor:
    """``x <op> other`` (``op`` one of ``>= > <= < == !=``) as a bool tensor, without gradient.

    On CPU through numpy: torch's CPU comparisons cost about 1.5 ns per entry here, twelve times numpy's
    (110k floats: 160 µs against 13 µs), and the renderer tests every triangle, window cell and pixel."""
    if x.device.type == "cpu":
        rhs = other.detach().numpy() if isinstance(other, Tensor) else other
        return torch.from_numpy(_NUMPY_COMPARE[op](x.detach().numpy(), rhs))
    return _TORCH_COMPARE[op](x, other)


def flat_nonzero(mask: Tensor) -> Tensor:
    """Indices ``(N,)`` int64 of the true entries of ``mask`` flattened (``mask.reshape(-1).nonzero()``).

    On CPU through numpy's ``flatnonzero``: torch's CPU ``nonzero`` costs 3–10 ns per entry here (0.7 ms for
    the 110k window cells of a 35k-vertex render, measured against 0.13 ms), and the renderer compacts a few
    such masks per frame."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero(as_tuple=True)[0]


def _sortable_key(depth: Tensor) -> Tensor:
    """float32 depth -> int64 in [0, 2**32) with the same order (sign-magnitude -> two's complement)."""
    bits = depth.float().view(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse their order (int32 ops, no select)
    return bits.to(torch.int64) + 2**31


def _sorted_corners(triangles: Tensor) -> tuple[list[Tensor], Tensor]:
    """Corner ids in increasing order (three ``(F,)`` int32 vectors) and ``±1`` (``(F,)``, +1 when that order
    is a rotation of the triangle's own, i.e. keeps its orientation). int32: vectorised min/max on CPU."""
    t0, t1, t2 = triangles.to(torch.int32).t().unbind(0)
    lo = torch.minimum(torch.minimum(t0, t1), t2)
    hi = torch.maximum(torch.maximum(t0, t1), t2)
    mid = t0 + t1 + t2 - lo - hi
    # a rotation of (lo, mid, hi) has exactly two cyclic ascents (distinct ids; repeated ids make no area)
    ascents = (t0 < t1).to(torch.int8) + (t1 < t2).to(torch.int8) + (t2 < t0).to(torch.int8)
    return [lo, mid, hi], torch.where(ascents == 2, 1.0, -1.0)


WINDOW = 2  # px: every scan tests a WINDOW × WINDOW block of pixel centres per item
_DX = torch.tensor([0.0, 1.0, 0.0, 1.0])[:, None]  # (4, 1) the block's cell offsets, row-major
_DY = torch.tensor([0.0, 0.0, 1.0, 1.0])[:, None]


@dataclass(frozen=True)
class _Setup:
    """Per-item data for the scan: an item is one ``WINDOW × WINDOW`` block of a triangle's pixel box (items
    flattened over the batch).

    Each triangle's corners are taken in increasing vertex-id order ``A < B < C`` and its three edges
    evaluated in that canonical direction, ``w_PQ(p) = (x_Q − x_P)(p_y − y_P) − (y_Q − y_P)(p_x − x_P)``, so
    two triangles sharing an edge compute the very same float for it and a pixel centre on it can never
    fall between them (watertight). The edge vectors are stored times ``s = ±1``, the sign of the scale
    ``q`` that turns ``w`` into the barycentric plane of the opposite corner (``b_C = q_AB w_AB`` with
    ``q = ±1 / area``, or ``b / d`` for perspective): negating both factors of a product and a difference is
    exact, so ``s w`` is computed bit-identically too, and inside ⇔ all three ``s w >= 0``.
    """

    base: Tensor  # (M,) int64 flat pixel id b·H·W + y0·W + x0 of the block's first cell
    tri: Tensor  # (M,) int64 triangle id + 1 (the z-buffer key's low bits; 0 marks an empty pixel)
    x0: Tensor  # (M,) float block origin (pixel centre, exact integer)
    y0: Tensor
    box: Tensor  # (4, M) float >= 0 where the block's cell lies in the triangle's pixel box, −1 elsewhere
    ox: tuple[Tensor, Tensor]  # start points of the edges: A (edges AB, AC) and B (edge BC), (M,) each
    oy: tuple[Tensor, Tensor]
    ux: tuple[Tensor, Tensor, Tensor]  # s × edge vectors AB, AC, BC
    uy: tuple[Tensor, Tensor, Tensor]
    q: tuple[Tensor, Tensor, Tensor]  # |q| of each edge (perspective), or |q| × the opposite corner's depth


def _setup(screen: Tensor, triangles: Tensor, H: int, W: int, cull_backfaces: bool, perspective: bool,
           near: float, corners: tuple[list[Tensor], Tensor] | None = None) -> tuple[list[_Setup], Tensor]:
    """Scan items of the triangles that can cover a pixel; ``-> ([setup of every triangle's first block, setup
    of the other blocks of the larger ones], facing)``.

    Back-facing, degenerate, non-finite and off-screen triangles, and triangles whose box holds no pixel
    centre, are dropped. ``facing`` ``(B·F,)`` int8 is −1 for front-facing, +1 for back-facing and 0 for
    unusable triangles (zero area, non-finite corners, or, for perspective, a corner at or behind the
    camera plane): the orientation :func:`~morphable.render.silhouette.silhouette_edges` needs, from the
    corner gathers done here."""
    B, V = screen.shape[:2]
    F = triangles.shape[0]
    if B * V >= 2**31:
        raise ValueError(f"rasterize: at most 2**31 vertices in a batch, got {B * V}")
    corner, parity = _sorted_corners(triangles) if corners is None else corners
    # corner coordinates as contiguous (B·F,) vectors (corners A, B, C): index_select on 1-D tensors and
    # elementwise ops only (much faster on CPU than strided views and reductions)
    cols = screen.reshape(B * V, 3).t()  # (3, B·V) strided views: index_select reads them as fast
    if B > 1:
        offset = (torch.arange(B, device=screen.device, dtype=torch.int32) * V)[:, None]
        corner = [(c[None] + offset).reshape(-1) for c in corner]
        parity = parity.repeat(B)
    xa, xb, xc = (cols[0].index_select(0, corner[i]) for i in range(3))
    ya, yb, yc = (cols[1].index_select(0, corner[i]) for i in range(3))
    area2 = (xc - xb) * (ya - yb) - (yc - yb) * (xa - xb)  # of (A, B, C); the triangle's own: × parity
    if perspective:
        da, db, dc = (cols[2].index_select(0, corner[i]) for i in range(3))
        ok = (da != 0) & (db != 0) & (dc != 0) & (torch.maximum(torch.maximum(da, db), dc) >= near)
        if cull_backfaces:
            # a perspective triangle's orientation flips once per vertex behind the camera
            ok &= (area2 * parity * (da * db * dc)) < 0
        else:
            ok &= area2 != 0
    elif cull_backfaces:
        # front-facing = counter-clockwise in model space = negative signed area in y-down pixels
        ok = compare(area2 * parity, "<", 0.0)
    else:
        ok = compare(area2, "!=", 0.0)
    facing = torch.sign(area2 * parity)  # the triangle's own orientation (nan for non-finite corners)
    if perspective:
        facing = facing * (torch.minimum(torch.minimum(da, db), dc) > 0)
    facing = facing.nan_to_num_(0.0).to(torch.int8)
    if not bool(torch.isfinite(screen.sum())):  # vertices with nan/inf coordinates drop their triangles
        bad = ~torch.isfinite(cols).all(0)
        bad = bad.index_select(0, corner[0]) | bad.index_select(0, corner[1]) | bad.index_select(0, corner[2])
        ok &= ~bad
        facing.masked_fill_(bad, 0)
    xmin, xmax = torch.minimum(torch.minimum(xa, xb), xc), torch.maximum(torch.maximum(xa, xb), xc)
    ymin, ymax = torch.minimum(torch.minimum(ya, yb), yc), torch.maximum(torch.maximum(ya, yb), yc)
    if perspective:
        behind = torch.minimum(torch.minimum(da, db), dc) <= 0  # unbounded image: scan the whole image
        xmin, ymin = xmin.masked_fill(behind, 0.0), ymin.masked_fill(behind, 0.0)
        xmax, ymax = xmax.masked_fill(behind, W - 1.0), ymax.masked_fill(behind, H - 1.0)
    # pixel-centre bounding box, still in floating point; boxes without a pixel centre (tiny triangles
    # between centres, off screen) are dropped with the culled triangles
    x0, y0 = torch.ceil(xmin).clamp_min_(0), torch.ceil(ymin).clamp_min_(0)
    nx = torch.floor(xmax).clamp_max_(W - 1) - x0  # box width − 1
    ny = torch.floor(ymax).clamp_max_(H - 1) - y0
    ok &= compare(torch.minimum(nx, ny), ">=", 0.0)
    keep = flat_nonzero(ok)
    vectors = dict(xa=xa, xb=xb, xc=xc, ya=ya, yb=yb, yc=yc, area2=area2, x0=x0, y0=y0, nx=nx, ny=ny)
    if perspective:
        vectors.update(da=da, db=db, dc=dc)
    # every triangle's first block (its box test limits it to the box), then the other blocks of larger boxes
    setups = [_items(keep, vectors, corner, cols, B, F, H, W, perspective)]
    nx, ny = nx.index_select(0, keep), ny.index_select(0, keep)
    large = flat_nonzero(compare(torch.maximum(nx, ny), ">=", WINDOW))
    if large.numel():
        blocks_x = torch.floor(nx.index_select(0, large) / WINDOW).to(torch.int64) + 1
        blocks_y = torch.floor(ny.index_select(0, large) / WINDOW).to(torch.int64) + 1
        item, bx, by = box_cells(blocks_x, blocks_y, skip_first=True)
        setups.append(_items(keep.index_select(0, large.index_select(0, item)), vectors, corner, cols, B, F, H, W,
                             perspective, WINDOW * bx, WINDOW * by))
    return setups, facing


def _items(idx: Tensor, vectors: dict[str, Tensor], corner: list[Tensor], cols: Tensor, B: int, F: int, H: int,
           W: int, perspective: bool, sx: Tensor | None = None, sy: Tensor | None = None) -> _Setup:
    """The :class:`_Setup` of items ``idx`` (ids into the ``(B·F,)`` vectors), shifted by ``(sx, sy)`` blocks."""
    v = {k: t.index_select(0, idx) for k, t in vectors.items()}
    x0, y0, nx, ny = v["x0"], v["y0"], v["nx"], v["ny"]
    if sx is not None:
        x0, y0, nx, ny = x0 + sx, y0 + sy, nx - sx, ny - sy
    if perspective:
        da, db, dc = v["da"], v["db"], v["dc"]
    else:
        da, db, dc = (cols[2].index_select(0, corner[i].index_select(0, idx)) for i in range(3))
    xa, xb, xc, ya, yb, yc = (v[k] for k in ("xa", "xb", "xc", "ya", "yb", "yc"))
    inv = 1.0 / v["area2"]
    # b_C = w_AB / area2, b_B = −w_AC / area2, b_A = w_BC / area2 (perspective: also / the corner's depth)
    q = [inv, -inv, inv]
    if perspective:
        q = [q[0] / dc, q[1] / db, q[2] / da]
    s = [torch.sign(t) for t in q]
    ux = (s[0] * (xb - xa), s[1] * (xc - xa), s[2] * (xc - xb))
    uy = (s[0] * (yb - ya), s[1] * (yc - ya), s[2] * (yc - yb))
    # box test of the block's cells (0, 0), (1, 0), (0, 1), (1, 1): cell (0, 0) is always in the box
    box = torch.stack([torch.zeros_like(nx), nx - 1, ny - 1, torch.minimum(nx, ny) - 1])
    if B > 1:  # idx = b·F + f, divided in float64 (exact here; integer division is not vectorised on CPU)
        batch = torch.floor(idx.to(torch.float64) / F).to(torch.int64)
        tri = idx - batch * F + 1
    else:
        batch, tri = 0, idx + 1
    base = (batch * H + y0.to(torch.int64)) * W + x0.to(torch.int64)
    q = [t.abs() for t in q]
    if not perspective:  # the depth weights |q_i| d_i of the opposite corners C, B, A
        q = [q[0] * dc, q[1] * db, q[2] * da]
    return _Setup(base, tri, x0, y0, box, (xa, xb), (ya, yb), ux, uy, tuple(q))


def _scan(s: _Setup, a: int, b: int, W: int, perspective: bool, near: float) -> tuple[Tensor, Tensor]:
    """Test the ``WINDOW × WINDOW`` block of items ``a:b``; return (flat pixel id, z-buffer key) of the hits.

    Work arrays are ``(4, M)``: block cell outermost, items innermost (contiguous, vectorised). Only
    floating-point arithmetic runs on them (CPU comparisons and int64 arithmetic cost several times more
    per element): the box test is one more term of the minimum whose sign decides coverage; the triangle,
    pixel and depth of the hits are computed after the compaction, from the hits' (cell, item) indices."""
    dtype = s.x0.dtype
    M = b - a
    dx, dy = _DX.to(device=s.x0.device, dtype=dtype), _DY.to(device=s.x0.device, dtype=dtype)
    px = s.x0[a:b] + dx  # (4, M) pixel centres, exact integers
    py = s.y0[a:b] + dy
    # edges AB and AC both start at A: their pixel offsets are shared
    rx, ry = px - s.ox[0][a:b], py - s.oy[0][a:b]
    rx2, ry2 = px - s.ox[1][a:b], py - s.oy[1][a:b]
    ux, uy = [t[a:b] for t in s.ux], [t[a:b] for t in s.uy]
    w = [ux[0] * ry - uy[0] * rx, ux[1] * ry - uy[1] * rx, ux[2] * ry2 - uy[2] * rx2]  # s × canonical edge functions
    # inside ⇔ all s·w >= 0 and the cell lies in the triangle's box (a nan anywhere fails the test)
    inside = compare(torch.minimum(torch.minimum(torch.minimum(w[0], w[1]), w[2]), s.box[:, a:b]), ">=", 0.0)
    q = [t[a:b] for t in s.q]
    if perspective:
        e = [w[i] * q[i] for i in range(3)]  # b_i / d_i
        inv = e[0] + e[1] + e[2]  # Σ b_i / d_i = 1 / depth
        inside &= (inv > 0) & (inv * near <= 1)  # in front of the camera and beyond the near plane
    hit = flat_nonzero(inside)  # one compaction for every output
    # hit = k·M + m: block cell k, item m (float64 division: exact here, integer division is slow)
    hf = hit.to(torch.float64)
    k = torch.floor(hf / M)
    m = (hf - k * M).to(torch.int64)
    k = k.to(torch.int64)
    if perspective:
        depth = 1.0 / (e[0].view(-1).index_select(0, hit) + e[1].view(-1).index_select(0, hit)
                       + e[2].view(-1).index_select(0, hit))
    else:  # Σ b_i d_i with b_i = |q_i| s_i w_i
        hw = [t.view(-1).index_select(0, hit) for t in w]
        depth = hw[0] * q[0].index_select(0, m) + hw[1] * q[1].index_select(0, m) + hw[2] * q[2].index_select(0, m)
    cell = torch.tensor([0, 1, W, W + 1], device=hit.device)  # flat pixel offsets of the block's cells
    pix = s.base[a:b].index_select(0, m) + cell.index_select(0, k)
    key = (_sortable_key(depth) << TRIANGLE_BITS) | s.tri[a:b].index_select(0, m)
    return pix, key


def pixel_coordinates(pix: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """Flat pixel indices ``b·H·W + y·W + x`` -> batch index ``(P,)`` and centres ``(P, 2)`` ``(x, y)`` int64.

    Divides in float64 (exact below 2**52; integer division is not vectorised on CPU)."""
    f = pix.to(torch.float64)
    batch = torch.floor(f / (H * W))
    row = torch.floor(f / W)  # b·H + y
    centres = torch.empty(pix.shape[0], 2, dtype=torch.int64, device=pix.device)
    centres[:, 0].copy_(f - row * W)  # column writes (an interleaving stack is several times slower on CPU)
    centres[:, 1].copy_(row - batch * H)
    return batch.to(torch.int64), centres


def box_cells(nx: Tensor, ny: Tensor, skip_first: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Every cell of a list of boxes, flattened: box ``m`` of ``nx[m] × ny[m]`` cells (``(M,)`` int64, >= 1)
    contributes its cells in row-major order (without its first cell ``(0, 0)`` when ``skip_first``).

    Returns:
        item ``(N,)`` int64 (the box of each cell, non-decreasing), and the cell's column and row inside its
        box, ``(N,)`` float32 each (exact integers: the within-box index is divided in float32, exact far
        beyond any box here; integer division is not vectorised on CPU). ``N = Σ nx·ny`` (``− M``).
    """
    counts = nx * ny - int(skip_first)
    item = torch.repeat_interleave(counts)
    start = counts.cumsum(0) - counts - int(skip_first)
    local = (torch.arange(item.numel(), device=nx.device) - start.index_select(0, item)).to(torch.float32)
    width = nx.to(torch.float32).index_select(0, item)
    row = torch.floor(local / width)
    return item, local - row * width, row


@torch.no_grad()
def rasterize_ids(screen: Tensor, triangles: Tensor, image_size: tuple[int, int], *, cull_backfaces: bool = False,
                  perspective: bool = False, near: float = 1.0, max_candidates: int = 2**22,
                  corners: tuple[list[Tensor], Tensor] | None = None, compiled: bool | None = None) -> Tensor:
    """Visible triangle id per pixel (the non-differentiable half of :func:`rasterize`). ``-> (B, H, W)`` int64.

    ``corners``: ``_sorted_corners(triangles)``, which depends on the mesh only (callers may cache it)."""
    return rasterize_ids_facing(screen, triangles, image_size, cull_backfaces=cull_backfaces, perspective=perspective,
                                near=near, max_candidates=max_candidates, corners=corners, compiled=compiled)[0]


@torch.no_grad()
def rasterize_ids_facing(screen: Tensor, triangles: Tensor, image_size: tuple[int, int], *,
                         cull_backfaces: bool = False, perspective: bool = False, near: float = 1.0,
                         max_candidates: int = 2**22, corners: tuple[list[Tensor], Tensor] | None = None,
                         compiled: bool | None = None) -> tuple[Tensor, Tensor]:
    """:func:`rasterize_ids` and each triangle's orientation ``(B·F,)`` int8 (−1 front, +1 back, 0 unusable;
    see ``_setup``), which the soft silhouette reuses instead of gathering the corners again.

    ``compiled``: use the compiled CPU kernel (:mod:`morphable.render.cpu_kernels`, the same results in a
    fraction of the time) instead of the tensor search; ``None``: on CPU tensors."""
    H, W = _check_inputs(screen, triangles, image_size)
    B = screen.shape[0]
    if screen.device.type == "cpu" if compiled is None else compiled:
        from morphable.render.cpu_kernels import rasterize_ids_facing_cpu  # numba: imported on first render

        return rasterize_ids_facing_cpu(screen, _sorted_corners(triangles) if corners is None else corners, (H, W),
                                        cull_backfaces=cull_backfaces, perspective=perspective, near=near)
    setups, facing = _setup(screen.detach(), triangles, H, W, cull_backfaces, perspective, near, corners)
    pixels, keys = [], []
    step = max(1, max_candidates // (WINDOW * WINDOW))
    for s in setups:
        for start in range(0, s.tri.numel(), step):
            pix, key = _scan(s, start, min(start + step, s.tri.numel()), W, perspective, near)
            pixels.append(pix)
            keys.append(key)
    # (a full fill and the default reduction: several times faster on CPU than include_self=False)
    zbuf = torch.full((B * H * W,), _EMPTY, dtype=torch.int64, device=screen.device)
    if pixels:
        pix, key = (torch.cat(pixels), torch.cat(keys)) if len(pixels) > 1 else (pixels[0], keys[0])
        zbuf.scatter_reduce_(0, pix, key, reduce="amin")
    tri = (zbuf & (2**TRIANGLE_BITS - 1)).sub_(1)  # (id + 1) − 1; empty: 0 − 1
    return tri.view(B, H, W), facing


def fragments_from_ids(screen: Tensor, triangles: Tensor, triangle_id: Tensor, perspective: bool) -> Fragments:
    """Differentiable barycentrics and depth for a triangle-id image (the deferred half of :func:`rasterize`)."""
    B, H, W = triangle_id.shape
    flat = triangle_id.reshape(-1)
    pix = flat_nonzero(compare(flat, ">=", 0))
    batch, pixels = pixel_coordinates(pix, H, W)
    bary_p, depth_p = barycentric_at(screen, triangles, batch, flat[pix], pixels, perspective)
    bary = screen.new_zeros(B * H * W, 3).index_put((pix,), bary_p)
    depth = screen.new_full((B * H * W,), math.inf).index_put((pix,), depth_p)
    return Fragments(triangle_id, bary.view(B, H, W, 3), depth.view(B, H, W), perspective)


def rasterize(screen: Tensor, triangles: Tensor, image_size: tuple[int, int], *, cull_backfaces: bool = False,
              perspective: bool = False, near: float = 1.0, max_candidates: int = 2**22,
              compiled: bool | None = None) -> Fragments:
    """Rasterise a batch of meshes given in screen space.

    Args:
        screen: ``(B, V, 3)`` vertices as ``(u px, v px, depth mm)`` (``camera.project_with_depth``).
        triangles: ``(F, 3)`` int64 vertex ids, shared by the batch (fewer than 2**24).
        image_size: ``(H, W)`` pixels.
        cull_backfaces: drop triangles seen from behind (front = counter-clockwise in model space, i.e.
            whose right-hand normal points towards the camera).
        perspective: ``screen`` comes from a perspective camera: perspective-correct barycentrics,
            hyperbolic depth, and clipping at ``near``.
        near: near-plane distance in mm (perspective only).
        max_candidates: most (triangle, pixel) pairs the tensor search tests at once; bounds its memory.
        compiled: the compiled CPU search instead of the tensor one (same ids; ``None``: on CPU).
    Returns:
        :class:`Fragments`; barycentrics and depth are differentiable w.r.t. ``screen``.
    """
    tri = rasterize_ids(screen, triangles, image_size, cull_backfaces=cull_backfaces, perspective=perspective,
                        near=near, max_candidates=max_candidates, compiled=compiled)
    return fragments_from_ids(screen, triangles, tri, perspective)


# ---------------------------------------------------------------------------------------------------
# slow obvious reference
# ---------------------------------------------------------------------------------------------------

def rasterize_reference(screen: Tensor, triangles: Tensor, image_size: tuple[int, int], *,
                        cull_backfaces: bool = False, perspective: bool = False,
                        near: float = 1.0) -> tuple[Tensor, Tensor]:
    """Brute force: loop over triangles and the pixels of their bounding box, point-in-triangle test in
    float64, keep the nearest (ties: lowest id). Same conventions as :func:`rasterize`.

    Returns:
        triangle_id ``(B, H, W)`` int64 and the smallest ``|b_i|`` of the winning test, ``(B, H, W)``
        float64 (how close the pixel centre is to an edge, to recognise exact edge ties).
    """
    H, W = _check_inputs(screen, triangles, image_size)
    pts = screen.detach().double().cpu().tolist()
    tris = triangles.cpu().tolist()
    out = torch.full((len(pts), H, W), -1, dtype=torch.int64)
    margin = torch.full((len(pts), H, W), math.inf, dtype=torch.float64)
    for b, verts in enumerate(pts):
        zbuf = [[math.inf] * W for _ in range(H)]
        for t, (i0, i1, i2) in enumerate(tris):
            (xa, ya, da), (xb, yb, db), (xc, yc, dc) = verts[i0], verts[i1], verts[i2]
            area2 = (xc - xb) * (ya - yb) - (yc - yb) * (xa - xb)
            if area2 == 0 or not all(map(math.isfinite, (xa, ya, da, xb, yb, db, xc, yc, dc))):
                continue
            if perspective and (da == 0 or db == 0 or dc == 0 or max(da, db, dc) < near):
                continue
            if cull_backfaces:
                flips = sum(1 for dd in (da, db, dc) if dd < 0) if perspective else 0
                if area2 * (-1) ** flips >= 0:
                    continue
            if perspective and min(da, db, dc) <= 0:
                cols, rows = range(W), range(H)
            else:
                cols = range(max(0, math.ceil(min(xa, xb, xc))), min(W - 1, math.floor(max(xa, xb, xc))) + 1)
                rows = range(max(0, math.ceil(min(ya, yb, yc))), min(H - 1, math.floor(max(ya, yb, yc))) + 1)
            for py in rows:
                for px in cols:
                    ba = ((xc - xb) * (py - yb) - (yc - yb) * (px - xb)) / area2
                    bb = ((xa - xc) * (py - yc) - (ya - yc) * (px - xc)) / area2
                    bc = ((xb - xa) * (py - ya) - (yb - ya) * (px - xa)) / area2
                    if perspective:
                        ba, bb, bc = ba / da, bb / db, bc / dc
                        inv = ba + bb + bc
                        if not (inv > 0 and inv * near <= 1):
                            continue
                        depth = 1 / inv
                    else:
                        depth = ba * da + bb * db + bc * dc
                    if min(ba, bb, bc) < 0:
                        continue
                    if depth < zbuf[py][px]:
                        zbuf[py][px] = depth
                        out[b, py, px] = t
                        margin[b, py, px] = min(abs(ba), abs(bb), abs(bc)) * (depth if perspective else 1)
    return out, margin
