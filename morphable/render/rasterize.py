"""Pure-PyTorch triangle rasteriser: per-pixel triangle id, barycentrics and depth (a z-buffer).

Deferred shading (Genova et al. 2018, "Unsupervised Training for 3D Morphable Model Regression", §3.2,
after tf_mesh_renderer): a non-differentiable search picks each pixel's triangle, then the pixel's
barycentric coordinates are recomputed *differentiably* from the screen-space vertex positions of that
triangle, so attribute interpolation (:func:`interpolate`) carries gradients to vertex positions.
The formulas stay valid outside a triangle (negative barycentrics: Genova's extension), which
:mod:`morphable.render.silhouette` uses for pixels just beyond a silhouette.

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

Fast path (:func:`rasterize`): triangles are grouped by the size of their pixel bounding box (powers of
two per axis); each group evaluates its edge functions on a fixed ``kx × ky`` window of pixel centres
per triangle as one broadcast tensor op (edges evaluated in a canonical direction, so shared edges leave
no holes: watertight), in chunks of at most ``max_candidates`` (triangle, pixel)
pairs, so memory stays bounded for large or close-up triangles. The z-test is one ``scatter_reduce``
(``amin``) of int64 keys holding the float32 depth bits (made order-preserving) in the high bits and
the triangle id in the low 24 bits. :func:`rasterize_reference` is the slow, obvious version (a Python
loop over triangles and pixels in float64) kept to test it against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

TRIANGLE_BITS = 24  # low bits of the z-buffer key hold the triangle id: at most 2**24 triangles
_EMPTY = torch.iinfo(torch.int64).max


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
    if triangles.shape[0] >= 2**TRIANGLE_BITS:
        raise ValueError(f"rasterize: at most {2**TRIANGLE_BITS - 1} triangles, got {triangles.shape[0]}")
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

    Valid inside and outside the triangle (Genova's extension to negative barycentrics).

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
    if perspective:
        q = [w[i] / (area2 * d[i]) for i in range(3)]  # b_i / d_i, affine in screen space
        inv_depth = q[0] + q[1] + q[2]
        return torch.stack(q, dim=-1) / inv_depth[:, None], 1.0 / inv_depth
    b = torch.stack(w, dim=-1) / area2[:, None]
    return b, (b[:, 0] * d[0] + b[:, 1] * d[1] + b[:, 2] * d[2])


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

def _sortable_key(depth: Tensor) -> Tensor:
    """float32 depth -> int64 in [0, 2**32) with the same order (sign-magnitude -> two's complement)."""
    bits = depth.float().view(torch.int32).to(torch.int64)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: reverse their order
    return bits + 2**31


@dataclass(frozen=True)
class _Setup:
    """Per-triangle data for the scan (flattened over the batch): bounding box and edge functions.

    Each triangle's corners are taken in increasing vertex-id order ``A < B < C`` and its three edges
    evaluated in that canonical direction, ``w_PQ(p) = (x_Q − x_P)(p_y − y_P) − (y_Q − y_P)(p_x − x_P)``, so
    two triangles sharing an edge compute the very same float for it and a pixel centre on it can never
    fall between them (watertight). ``q`` turns them into barycentric planes ``e = q · w`` (``b``, or
    ``b / d`` for perspective) of the corners opposite: ``b_C ∝ w_AB``, ``b_B ∝ −w_AC``, ``b_A ∝ w_BC``;
    inside ⇔ all ``e >= 0``.
    """

    batch: Tensor  # (T,) batch index
    tri: Tensor  # (T,) triangle id
    x0: Tensor  # (T,) int64 first pixel column of the bounding box
    y0: Tensor
    nx: Tensor  # (T,) int64 box width/height in pixels (>= 1)
    ny: Tensor
    ox: Tensor  # (3, T) start points of the edges AB, AC, BC
    oy: Tensor
    ux: Tensor  # (3, T) edge vectors
    uy: Tensor
    q: Tensor  # (3, T) scale of each edge function into the opposite corner's barycentric plane
    d: Tensor  # (3, T) depths of the opposite corners C, B, A (orthographic depth interpolation)


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


def _setup(screen: Tensor, triangles: Tensor, H: int, W: int, cull_backfaces: bool, perspective: bool,
           near: float, corners: tuple[list[Tensor], Tensor] | None = None
           ) -> tuple[_Setup, list[tuple[int, int, int, int]], Tensor]:
    """Triangles that can cover a pixel, sorted by window class; ``-> (setup, [(kx, ky, start, end)], facing)``.

    Back-facing, degenerate and non-finite triangles are dropped first (signed area of the projected
    corners), so the bounding boxes and edge functions are built for the survivors only. ``facing``
    ``(B·F,)`` int8 is −1 for front-facing, +1 for back-facing and 0 for unusable triangles (zero area,
    non-finite corners, or, for perspective, a corner at or behind the camera plane): the orientation
    :func:`~morphable.render.silhouette.silhouette_edges` needs, from the corner gathers done here."""
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
        ok = (area2 * parity) < 0
    else:
        ok = area2 != 0
    facing = torch.sign(area2 * parity)  # the triangle's own orientation (nan for non-finite corners)
    if perspective:
        facing = facing * (torch.minimum(torch.minimum(da, db), dc) > 0)
    facing = facing.nan_to_num_(0.0).to(torch.int8)
    if not bool(torch.isfinite(screen.sum())):  # vertices with nan/inf coordinates drop their triangles
        bad = ~torch.isfinite(cols).all(0)
        bad = bad.index_select(0, corner[0]) | bad.index_select(0, corner[1]) | bad.index_select(0, corner[2])
        ok &= ~bad
        facing.masked_fill_(bad, 0)
    keep = ok.nonzero(as_tuple=True)[0]
    sel = lambda t: t.index_select(0, keep)  # noqa: E731
    xa, xb, xc, ya, yb, yc, area2 = (sel(t) for t in (xa, xb, xc, ya, yb, yc, area2))
    xmin, xmax = torch.minimum(torch.minimum(xa, xb), xc), torch.maximum(torch.maximum(xa, xb), xc)
    ymin, ymax = torch.minimum(torch.minimum(ya, yb), yc), torch.maximum(torch.maximum(ya, yb), yc)
    if perspective:
        da, db, dc = sel(da), sel(db), sel(dc)
        behind = torch.minimum(torch.minimum(da, db), dc) <= 0  # unbounded image: scan the whole image
        xmin, ymin = xmin.masked_fill(behind, 0.0), ymin.masked_fill(behind, 0.0)
        xmax, ymax = xmax.masked_fill(behind, W - 1.0), ymax.masked_fill(behind, H - 1.0)
    # pixel-centre bounding box, still in floating point
    x0, y0 = torch.ceil(xmin).clamp_min_(0), torch.ceil(ymin).clamp_min_(0)
    x1, y1 = torch.floor(xmax).clamp_max_(W - 1), torch.floor(ymax).clamp_max_(H - 1)
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    # size classes: windows of 2**cx × 2**cy pixels (at least 2 × 2: fewer, fuller passes); empty boxes
    # (off screen) get class 0 and are dropped; the rest are sorted by class so each class is a slice
    on = (nx >= 1) & (ny >= 1)
    cls = torch.where(on, _pow2_class(nx.clamp_min(1)).clamp_min(1) * 64 + _pow2_class(ny.clamp_min(1)).clamp_min(1), 0)
    counts = torch.bincount(cls).tolist()
    # (class ids < 2**11 fit int16, which sorts faster)
    order = torch.sort(cls.to(torch.int16), stable=True)[1][counts[0]:] if len(counts) > 1 else keep[:0]
    sel = lambda t: t.index_select(0, order)  # noqa: E731
    xa, xb, xc, ya, yb, yc, area2, x0, y0, nx, ny, keep = (
        sel(t) for t in (xa, xb, xc, ya, yb, yc, area2, x0, y0, nx, ny, keep))
    if perspective:
        da, db, dc = sel(da), sel(db), sel(dc)
    else:
        corner_kept = [c.index_select(0, keep) for c in corner]
        da, db, dc = (cols[2].index_select(0, corner_kept[i]) for i in range(3))
    classes, start = [], 0
    for c, n in enumerate(counts):
        if c and n:
            classes.append((2 ** (c // 64), 2 ** (c % 64), start, start + n))
            start += n
    return _make_setup(keep, F, B, x0, y0, nx, ny, xa, xb, xc, ya, yb, yc, da, db, dc, 1.0 / area2,
                       perspective), classes, facing


def _make_setup(keep: Tensor, F: int, B: int, ax, ay, nx, ny, xa, xb, xc, ya, yb, yc, da, db, dc, inv,
                perspective: bool) -> _Setup:
    # edges AB, AC, BC (start, vector) and the corners opposite them: C, B, A
    ox = torch.stack([xa, xa, xb])
    oy = torch.stack([ya, ya, yb])
    ux = torch.stack([xb - xa, xc - xa, xc - xb])
    uy = torch.stack([yb - ya, yc - ya, yc - yb])
    d = torch.stack([dc, db, da])
    q = torch.stack([inv, -inv, inv])  # b_C = w_AB / area2, b_B = −w_AC / area2, b_A = w_BC / area2
    if perspective:
        q = q / d
    batch, tri = (keep // F, keep % F) if B > 1 else (torch.zeros_like(keep), keep)
    return _Setup(batch, tri, ax.to(torch.int64), ay.to(torch.int64), nx.to(torch.int64), ny.to(torch.int64),
                  ox, oy, ux, uy, q, d)


def _scan(s: _Setup, a: int, b: int, kx: int, ky: int, H: int, W: int, perspective: bool,
          near: float) -> tuple[Tensor, Tensor]:
    """Test a ``kx × ky`` window of pixel centres for triangles ``a:b`` of the setup; return (pixel, key) of hits.

    Work arrays are ``(K, M)``: window offset outermost, triangles innermost (contiguous, vectorised). Only
    floating-point arithmetic runs on them (CPU comparisons and int64 arithmetic cost several times more
    per element): the box test is one more term of the minimum whose sign decides coverage; the triangle,
    pixel and depth of the hits are computed after the compaction, from the hits' (window offset, triangle)
    indices."""
    dev = s.x0.device
    dtype = s.q.dtype
    M = b - a
    dx = torch.arange(kx, device=dev).repeat(ky)[:, None]  # (K, 1) window offsets, row-major
    dy = torch.arange(ky, device=dev).repeat_interleave(kx)[:, None]
    dxf, dyf = dx.to(dtype), dy.to(dtype)
    x0, y0 = s.x0[a:b], s.y0[a:b]  # (M,)
    px = x0.to(dtype) + dxf  # pixel centres, exact integers
    py = y0.to(dtype) + dyf
    ox, oy, ux, uy, q = (t[:, a:b] for t in (s.ox, s.oy, s.ux, s.uy, s.q))  # (3, M)
    # edges AB and AC both start at A (see _make_setup): their pixel offsets are shared
    rx, ry = px - ox[0], py - oy[0]
    rx2, ry2 = px - ox[2], py - oy[2]
    e = [(ux[0] * ry - uy[0] * rx) * q[0], (ux[1] * ry - uy[1] * rx) * q[1],
         (ux[2] * ry2 - uy[2] * rx2) * q[2]]  # canonical edge functions (see _Setup) times q
    # inside ⇔ all e_i >= 0 and the pixel lies in the triangle's box (a nan anywhere fails the test)
    box = torch.minimum((s.nx[a:b].to(dtype) - 1) - dxf, (s.ny[a:b].to(dtype) - 1) - dyf)
    inside = torch.minimum(torch.minimum(torch.minimum(e[0], e[1]), e[2]), box) >= 0
    if perspective:
        inv = e[0] + e[1] + e[2]  # Σ b_i / d_i = 1 / depth
        inside &= (inv > 0) & (inv * near <= 1)  # in front of the camera and beyond the near plane
    hit = inside.view(-1).nonzero(as_tuple=True)[0]  # one compaction for every output
    # hit = k·M + m: window offset k, triangle m (float64 division: exact here, integer division is slow)
    hf = hit.to(torch.float64)
    k = torch.floor(hf / M)
    m = (hf - k * M).to(torch.int64)
    k = k.to(torch.int64)
    eh = [t.view(-1).index_select(0, hit) for t in e]
    if perspective:
        depth = 1.0 / (eh[0] + eh[1] + eh[2])
    else:
        d = s.d[:, a:b]
        depth = eh[0] * d[0].index_select(0, m) + eh[1] * d[1].index_select(0, m) + eh[2] * d[2].index_select(0, m)
    base = (s.batch[a:b] * H + y0) * W + x0  # (M,)
    pix = base.index_select(0, m) + (dy * W + dx).view(-1).index_select(0, k)
    key = (_sortable_key(depth) << TRIANGLE_BITS) | s.tri[a:b].index_select(0, m)
    return pix, key


def pixel_coordinates(pix: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """Flat pixel indices ``b·H·W + y·W + x`` -> batch index ``(P,)`` and centres ``(P, 2)`` ``(x, y)`` int64.

    Divides in float64 (exact below 2**52; integer division is not vectorised on CPU)."""
    f = pix.to(torch.float64)
    batch = torch.floor(f / (H * W))
    row = torch.floor(f / W)  # b·H + y
    x = f - row * W
    y = row - batch * H
    return batch.to(torch.int64), torch.stack([x, y], dim=-1).to(torch.int64)


def box_cells(nx: Tensor, ny: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every cell of a list of boxes, flattened: box ``m`` of ``nx[m] × ny[m]`` cells (``(M,)`` int64, >= 1)
    contributes its cells in row-major order.

    Returns:
        item ``(N,)`` int64 (the box of each cell, non-decreasing), and the cell's column and row inside its
        box, ``(N,)`` float32 each (exact integers: the within-box index is divided in float32, exact far
        beyond any box here; integer division is not vectorised on CPU). ``N = Σ nx·ny``.
    """
    counts = nx * ny
    item = torch.repeat_interleave(counts)
    start = counts.cumsum(0) - counts
    local = (torch.arange(item.numel(), device=nx.device) - start.index_select(0, item)).to(torch.float32)
    width = nx.to(torch.float32).index_select(0, item)
    row = torch.floor(local / width)
    return item, local - row * width, row


def _pow2_class(n: Tensor) -> Tensor:
    """Smallest power-of-two exponent ``c`` with ``2**c >= n`` (n >= 1)."""
    return torch.ceil(torch.log2(n.to(torch.float32))).to(torch.int64).clamp_min(0)


@torch.no_grad()
def rasterize_ids(screen: Tensor, triangles: Tensor, image_size: tuple[int, int], *, cull_backfaces: bool = False,
                  perspective: bool = False, near: float = 1.0, max_candidates: int = 2**22,
                  corners: tuple[list[Tensor], Tensor] | None = None) -> Tensor:
    """Visible triangle id per pixel (the non-differentiable half of :func:`rasterize`). ``-> (B, H, W)`` int64.

    ``corners``: ``_sorted_corners(triangles)``, which depends on the mesh only (callers may cache it)."""
    return rasterize_ids_facing(screen, triangles, image_size, cull_backfaces=cull_backfaces, perspective=perspective,
                                near=near, max_candidates=max_candidates, corners=corners)[0]


@torch.no_grad()
def rasterize_ids_facing(screen: Tensor, triangles: Tensor, image_size: tuple[int, int], *,
                         cull_backfaces: bool = False, perspective: bool = False, near: float = 1.0,
                         max_candidates: int = 2**22, corners: tuple[list[Tensor], Tensor] | None = None
                         ) -> tuple[Tensor, Tensor]:
    """:func:`rasterize_ids` and each triangle's orientation ``(B·F,)`` int8 (−1 front, +1 back, 0 unusable;
    see ``_setup``), which the soft silhouette reuses instead of gathering the corners again."""
    H, W = _check_inputs(screen, triangles, image_size)
    B = screen.shape[0]
    s, classes, facing = _setup(screen.detach(), triangles, H, W, cull_backfaces, perspective, near, corners)
    pixels, keys = [], []
    for kx, ky, first, end in classes:
        step = max(1, max_candidates // (kx * ky))
        for start in range(first, end, step):
            pix, key = _scan(s, start, min(start + step, end), kx, ky, H, W, perspective, near)
            pixels.append(pix)
            keys.append(key)
    zbuf = torch.full((B * H * W,), _EMPTY, dtype=torch.int64, device=screen.device)
    if pixels:
        zbuf.scatter_reduce_(0, torch.cat(pixels), torch.cat(keys), reduce="amin")
    tri = torch.where(zbuf == _EMPTY, -1, zbuf & (2**TRIANGLE_BITS - 1))
    return tri.view(B, H, W), facing


def fragments_from_ids(screen: Tensor, triangles: Tensor, triangle_id: Tensor, perspective: bool) -> Fragments:
    """Differentiable barycentrics and depth for a triangle-id image (the deferred half of :func:`rasterize`)."""
    B, H, W = triangle_id.shape
    flat = triangle_id.reshape(-1)
    pix = (flat >= 0).nonzero(as_tuple=True)[0]
    batch, pixels = pixel_coordinates(pix, H, W)
    bary_p, depth_p = barycentric_at(screen, triangles, batch, flat[pix], pixels, perspective)
    bary = screen.new_zeros(B * H * W, 3).index_put((pix,), bary_p)
    depth = screen.new_full((B * H * W,), math.inf).index_put((pix,), depth_p)
    return Fragments(triangle_id, bary.view(B, H, W, 3), depth.view(B, H, W), perspective)


def rasterize(screen: Tensor, triangles: Tensor, image_size: tuple[int, int], *, cull_backfaces: bool = False,
              perspective: bool = False, near: float = 1.0, max_candidates: int = 2**22) -> Fragments:
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
        max_candidates: most (triangle, pixel) pairs tested at once; bounds the memory used.
    Returns:
        :class:`Fragments`; barycentrics and depth are differentiable w.r.t. ``screen``.
    """
    tri = rasterize_ids(screen, triangles, image_size, cull_backfaces=cull_backfaces, perspective=perspective,
                        near=near, max_candidates=max_candidates)
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
