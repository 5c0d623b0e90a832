"""Soft (anti-aliased) silhouette coverage, so that losses on the alpha mask or the image move geometry.

Hard rasterisation has no gradient with respect to where a silhouette lies. Here the pixels on either
side of the rendered silhouette (covered pixels with a background 4-neighbour and vice versa) get a
box-filter coverage from their signed distance ``s`` (pixels, positive inside) to the nearest
*silhouette edge* of the mesh:

    ``alpha = clamp(0.5 + s, 0.5, 1)`` on covered pixels,  ``alpha = clamp(0.5 + s, 0, 0.5)`` on background,

which is the covered fraction of a pixel cut by a straight edge parallel to an axis, continuous as the
edge sweeps across a pixel centre, and keeps ``alpha >= 0.5`` exactly on the hard coverage. ``s`` is
recomputed differentiably from the screen positions of the chosen edge's end points (the choice itself,
like the triangle ids, is not differentiated), so gradients reach the vertices on the contour. The idea
is the one of anti-aliasing-based silhouette gradients (Laine et al. 2020, nvdiffrast) in a simpler
per-pixel form.

A silhouette edge is a mesh edge between a front- and a back-facing triangle, or a boundary edge
(one triangle). A background pixel near the silhouette is shaded from the attributes of the edge's
triangle (returned as ``extended_id``), at the pixel's barycentrics clamped to that triangle
(:func:`~morphable.render.rasterize.barycentric_at`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import Tensor

from morphable.geometry.mesh import edge_topology
from morphable.render.rasterize import TRIANGLE_BITS, _sortable_key, box_cells, compare, flat_nonzero, pixel_coordinates

REACH = 1.0  # px: boundary pixels lie within one pixel of the silhouette they border


@dataclass(frozen=True)
class EdgeTopology:
    """The two half-edges of every edge of a triangle list (compute once per mesh with :meth:`build`).

    Half-edge ``3 f + i`` is the edge of triangle ``f`` joining its corners ``i + 1`` and ``i + 2``.

    Attributes:
        first, second: ``(E,)`` int64 half-edges of each edge; ``second`` is −1 on the mesh boundary.
            Non-manifold edges (three or more triangles) keep their two lowest half-edges.
        first_face, second_face: ``(E,)`` their triangles (``second_face`` 0 where ``second`` is −1).
        has_second: ``(E,)`` bool.
        corners: ``(3, F)`` int64 the triangles' corner ids as contiguous rows (for fast gathers).
        half_vertices: ``(3, 3F)`` int64 rows ``a, b, c`` of every half-edge: its end points (corners
            ``i + 1``, ``i + 2``) and the opposite corner ``i`` (1-D gathers, no ``% 3`` per call).
    """

    first: Tensor
    second: Tensor
    first_face: Tensor
    second_face: Tensor
    has_second: Tensor
    corners: Tensor
    half_vertices: Tensor

    @staticmethod
    def build(triangles: Tensor) -> "EdgeTopology":
        _, h2e, count = edge_topology(triangles)
        order = torch.argsort(h2e, stable=True)  # half-edges grouped by edge, increasing ids
        start = torch.cumsum(count, 0) - count
        first = order[start]
        second = torch.where(count > 1, order[(start + 1).clamp_max(order.numel() - 1)], -1)
        abc = torch.stack([triangles[:, [1, 2, 0]], triangles[:, [2, 0, 1]], triangles], 0)  # (3, F, 3): i = 0, 1, 2
        return EdgeTopology(first, second, first // 3, second.clamp_min(0) // 3, count > 1,
                            triangles.t().contiguous(), abc.reshape(3, -1).contiguous())


@dataclass(frozen=True)
class Silhouette:
    """Attributes:
        alpha: ``(B, H, W)`` soft coverage in [0, 1], differentiable w.r.t. the screen positions.
        extended_id: ``(B, H, W)`` int64: for background pixels with ``alpha > 0`` the triangle to
            extrapolate their colour from, −1 elsewhere.
    """

    alpha: Tensor
    extended_id: Tensor


def _boundary(covered: Tensor) -> Tensor:
    """Pixels whose coverage differs from one of their 4-neighbours. ``(B, H, W)`` bool."""
    out = torch.zeros_like(covered)
    across = covered[:, :, 1:] ^ covered[:, :, :-1]  # (B, H, W − 1): the pair (x, x + 1) differs
    down = covered[:, 1:] ^ covered[:, :-1]
    out[:, :, 1:] |= across
    out[:, :, :-1] |= across
    out[:, 1:] |= down
    out[:, :-1] |= down
    return out


def triangle_facing(screen: Tensor, topology: EdgeTopology, perspective: bool) -> Tensor:
    """Orientation of every triangle of every mesh ``(B·F,)`` int8: −1 front-facing (counter-clockwise in
    model space, see rasterize.py), +1 back-facing, 0 unusable (zero area, non-finite corners, or, for
    perspective, a corner at or behind the camera plane). The rasteriser returns the same array
    (:func:`~morphable.render.rasterize.rasterize_ids_facing`); this is for callers without one."""
    B, V = screen.shape[:2]
    cols = screen.detach().reshape(B * V, 3).t()
    corner = list(topology.corners.unbind(0))
    if B > 1:
        corner = [(c[None] + (torch.arange(B, device=screen.device) * V)[:, None]).reshape(-1) for c in corner]
    x, y = ([cols[c].index_select(0, corner[i]) for i in range(3)] for c in range(2))  # (B·F,) each
    area2 = (x[2] - x[1]) * (y[0] - y[1]) - (y[2] - y[1]) * (x[0] - x[1])
    valid = torch.isfinite(area2) & (area2 != 0)
    if perspective:
        d = [cols[2].index_select(0, corner[i]) for i in range(3)]
        valid &= (d[0] > 0) & (d[1] > 0) & (d[2] > 0)  # triangles reaching behind the camera: no usable edges
    return (torch.sign(area2) * valid).to(torch.int8)


def silhouette_edges(screen: Tensor, triangles: Tensor, topology: EdgeTopology, perspective: bool,
                     facing: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Silhouette half-edges of each mesh in the batch: boundary edges of usable triangles, and both
    half-edges of edges whose two triangles face opposite ways (or only one of which is usable).

    Args:
        facing: ``(B·F,)`` int8 triangle orientations (:func:`triangle_facing`; the rasteriser's when given).
    Returns:
        batch ``(S,)`` and half-edge id ``(S,)`` (``3 f + i``) of every silhouette half-edge.
    """
    B = screen.shape[0]
    F = triangles.shape[0]
    if facing is None:
        facing = triangle_facing(screen, topology, perspective)
    t = topology
    # facing of the edges' two triangles, (B, E) (1-D gathers are the fast ones on CPU)
    pick = lambda faces: (facing.index_select(0, faces)[None] if B == 1  # noqa: E731
                          else facing.view(B, F).index_select(1, faces))
    f1, f2 = pick(t.first_face), pick(t.second_face) * t.has_second
    # boundary (f2 = 0) or a fold between front and back: at least one side usable; one compaction for both
    fold = flat_nonzero(compare(f1, "!=", f2))
    f1, f2 = f1.reshape(-1).index_select(0, fold), f2.reshape(-1).index_select(0, fold)
    # the usable triangles' half-edges
    sides = [fold.index_select(0, flat_nonzero(compare(f, "!=", 0))) for f in (f1, f2)]
    E = t.first.shape[0]
    if B == 1:
        (e1, e2), batch = sides, fold.new_zeros(sides[0].numel() + sides[1].numel())
    else:  # flat index b·E + e, divided in float64 (exact here; integer division is not vectorised on CPU)
        b1, b2 = (torch.floor(i.to(torch.float64) / E).to(torch.int64) for i in sides)
        e1, e2 = sides[0] - b1 * E, sides[1] - b2 * E
        batch = torch.cat([b1, b2])
    return batch, torch.cat([t.first.index_select(0, e1), t.second.index_select(0, e2)])


def _edge_geometry(screen: Tensor, topology: EdgeTopology, batch: Tensor,
                   half_edge: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """End points ``a, b`` ``(S, 2)`` and the opposite corner ``c`` ``(S, 2)`` of half-edges (differentiable)."""
    B, V = screen.shape[:2]
    offset = batch * V
    ids = torch.cat([row.index_select(0, half_edge) + offset for row in topology.half_vertices])
    # one gather of whole rows (its backward: one scatter into a (B·V, 3) zero buffer)
    abc = screen.reshape(B * V, 3).index_select(0, ids)[:, :2]
    return abc.split(half_edge.shape[0])


def _signed_distance(a: Tensor, b: Tensor, c: Tensor, p: Tensor) -> Tensor:
    """Signed distance (px) from ``p`` to the line ``ab``, positive on the side of ``c``. All ``(S, 2)``."""
    ab = b - a
    length = ab.norm(dim=-1).clamp_min(1e-12)  # clamp: zero-length edges are never silhouettes of valid faces
    cross_p = ab[:, 0] * (p[:, 1] - a[:, 1]) - ab[:, 1] * (p[:, 0] - a[:, 0])
    cross_c = ab[:, 0] * (c[:, 1] - a[:, 1]) - ab[:, 1] * (c[:, 0] - a[:, 0])
    return cross_p / length * torch.sign(cross_c).detach()


TILE = 4  # px: cell of the coarse boundary grid that prunes the silhouette edges


def _coarse_boundary_table(boundary: Tensor) -> Tensor:
    """Summed-area table ``(B, Hc + 1, Wc + 1)`` int32 of the boundary mask pooled into :data:`TILE` × :data:`TILE`
    cells (a cell counts when it holds a boundary pixel)."""
    coarse = nnf.max_pool2d(boundary[:, None].to(torch.float32), TILE, ceil_mode=True)[:, 0]
    return nnf.pad(coarse.to(torch.int32).cumsum(1).cumsum(2), (1, 0, 1, 0))


@torch.no_grad()
def _nearest_edge(a: Tensor, b: Tensor, batch: Tensor, boundary: Tensor,
                  max_candidates: int = 2**22) -> tuple[Tensor, Tensor]:
    """For every boundary pixel, the nearest silhouette segment within :data:`REACH` (ties: the lowest index).

    Each segment's pixel box (grown by :data:`REACH`) is kept when the coarse boundary grid holds a boundary
    cell under it (a head mesh has thousands of fold edges inside its rendered silhouette, hidden behind the
    front surface); the boxes' pixels are then listed in one flat pass (:func:`box_cells`, chunks of at most
    ``max_candidates``), tested against the boundary mask and the distance, and reduced per pixel to the
    smallest ``(squared distance, index)`` key.

    Args:
        a, b: ``(S, 2)`` segment end points (px); batch: ``(S,)`` their image.
        boundary: ``(B, H, W)`` bool.
    Returns:
        packed ``(pix, index)``, both ``(N,)`` int64: flat pixel ids ``b·H·W + y·W + x`` (each once, in no
        particular order) and the index into ``a`` of their nearest segment.
    """
    B, H, W = boundary.shape
    # pixel boxes as (S, 2) columns (x, y): origin lo, last cell hi, size hi − lo + 1 (< 1 or nan: empty)
    lo = torch.ceil(torch.minimum(a, b) - REACH).clamp_min_(0)
    hi = torch.minimum(torch.floor(torch.maximum(a, b) + REACH), a.new_tensor([W - 1, H - 1]))
    size = hi - lo + 1
    # coarse test: the box's TILE cells hold a boundary pixel (four reads of the coarse summed-area table)
    sat = _coarse_boundary_table(boundary)
    Hc, Wc = sat.shape[1] - 1, sat.shape[2] - 1
    c0, c1 = torch.floor(lo / TILE), torch.floor(hi / TILE) + 1
    ys = torch.stack([c1[:, 1], c0[:, 1], c1[:, 1], c0[:, 1]]).to(torch.float64)  # (4, S) float64: nan-safe ids
    xs = torch.stack([c1[:, 0], c1[:, 0], c0[:, 0], c0[:, 0]]).to(torch.float64)
    ids = ((batch.to(torch.float64) * (Hc + 1) + ys) * (Wc + 1) + xs).nan_to_num_(0).clamp_(0, sat.numel() - 1)
    corner = sat.reshape(-1).index_select(0, ids.to(torch.int64).view(-1)).view(4, -1)
    cells = (corner[0] - corner[1] - corner[2] + corner[3]).to(a.dtype)
    keep = flat_nonzero(compare(torch.minimum(size.amin(1), cells), ">=", 1.0))  # (a nan size fails too)
    lo, size = lo.index_select(0, keep), size.index_select(0, keep).to(torch.int64)
    nx, ny = size[:, 0], size[:, 1]
    x0, y0 = lo[:, 0].to(torch.int64), lo[:, 1].to(torch.int64)
    base = (batch.index_select(0, keep) * H + y0) * W + x0
    a = a.index_select(0, keep)
    ab = b.index_select(0, keep) - a
    abx, aby = ab[:, 0], ab[:, 1]
    ab2 = (ab * ab).sum(1).clamp_min_(1e-12)
    rel = lo - a  # box origin − a
    rx, ry = rel[:, 0], rel[:, 1]
    flat_boundary = boundary.reshape(-1)
    pixels, keys = [], []
    for first, end in _chunks(nx * ny, max_candidates):
        item, dx, dy = box_cells(nx[first:end], ny[first:end])
        item = item + first
        pix = base.index_select(0, item) + (dy * W + dx).to(torch.int64)
        on = flat_nonzero(flat_boundary.index_select(0, pix))  # boundary pixels only
        item, pix, dx, dy = (t.index_select(0, on) for t in (item, pix, dx, dy))
        sx, sy = abx.index_select(0, item), aby.index_select(0, item)
        px = rx.index_select(0, item) + dx.to(a.dtype)  # pixel − a
        py = ry.index_select(0, item) + dy.to(a.dtype)
        t = ((px * sx + py * sy) / ab2.index_select(0, item)).clamp(0, 1)
        ex, ey = px - t * sx, py - t * sy
        dist2 = ex * ex + ey * ey  # squared: no square root, whose rounding differs between libraries
        hit = flat_nonzero(compare(dist2, "<=", REACH * REACH))
        pixels.append(pix.index_select(0, hit))
        edge = keep.index_select(0, item.index_select(0, hit))
        keys.append((_sortable_key(dist2.index_select(0, hit)) << TRIANGLE_BITS) | edge)
    pix, key = (torch.cat(pixels), torch.cat(keys)) if len(pixels) > 1 else (pixels[0], keys[0])
    # per-pixel minimum key; only the entries written are read back
    best = torch.full((B * H * W,), 2**62, dtype=torch.int64, device=a.device)  # above every key
    best.scatter_reduce_(0, pix, key, reduce="amin")  # (faster on CPU than include_self=False on an empty buffer)
    won = flat_nonzero(compare(best.index_select(0, pix), "==", key))  # keys are unique per pixel
    return pix.index_select(0, won), key.index_select(0, won) & (2**TRIANGLE_BITS - 1)


def _chunks(sizes: Tensor, limit: int) -> list[tuple[int, int]]:
    """Consecutive ``[first, end)`` ranges of items whose ``sizes`` ``(M,)`` sum to at most ``limit`` (an item
    larger than ``limit`` alone); ``[(0, M)]`` when all fit (the common case: no host round trip per item)."""
    total = int(sizes.sum()) if sizes.numel() else 0
    if total <= limit:
        return [(0, sizes.numel())]
    ends = torch.cumsum(sizes, 0).tolist()
    out, first, base = [], 0, 0
    for i, e in enumerate(ends):
        if e - base > limit and i > first:
            out.append((first, i))
            first, base = i, ends[i - 1]
    out.append((first, len(ends)))
    return out


@torch.no_grad()
def nearest_edge_reference(a: Tensor, b: Tensor, batch: Tensor, boundary: Tensor) -> tuple[Tensor, Tensor]:
    """Brute force of :func:`_nearest_edge`: every boundary pixel against every segment of its image, in float64.

    Returns (as full images, not packed):
        the nearest segment's index ``(B·H·W,)`` (−1 where none lies within :data:`REACH`, and off the
        boundary) and the gap between its distance and the runner-up's (``inf`` without a runner-up), to
        recognise near ties, which the fast search may break differently.
    """
    B, H, W = boundary.shape
    pix = boundary.reshape(-1).nonzero(as_tuple=True)[0]
    nearest = torch.full((B * H * W,), -1, dtype=torch.int64)
    gap = torch.full((B * H * W,), float("inf"), dtype=torch.float64)
    for q in pix.tolist():
        img, rest = divmod(q, H * W)
        p = torch.tensor([rest % W, rest // W], dtype=torch.float64)
        ids = (batch == img).nonzero(as_tuple=True)[0]
        if ids.numel() == 0:
            continue
        a_, b_ = a[ids].double(), b[ids].double()
        ab = b_ - a_
        t = (((p - a_) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)).clamp(0, 1)
        dist = (p - (a_ + t[:, None] * ab)).norm(dim=-1)
        order = torch.argsort(dist, stable=True)
        if dist[order[0]] <= REACH:
            nearest[q] = ids[order[0]]
            if order.numel() > 1:
                gap[q] = dist[order[1]] - dist[order[0]]
    return nearest, gap


def soft_silhouette(screen: Tensor, triangles: Tensor, triangle_id: Tensor, topology: EdgeTopology, *,
                    perspective: bool = False, facing: Tensor | None = None,
                    compiled: bool | None = None) -> Silhouette:
    """Anti-aliased coverage (see module docstring).

    Args:
        screen: ``(B, V, 3)`` screen-space vertices, as given to :func:`~morphable.render.rasterize.rasterize`.
        triangles: ``(F, 3)`` int64.
        triangle_id: ``(B, H, W)`` hard rasterisation result.
        topology: ``EdgeTopology.build(triangles)`` (cache it per mesh: :func:`edge_topology_of`).
        perspective: whether ``screen`` comes from a perspective camera.
        facing: ``(B·F,)`` int8 triangle orientations from the rasteriser
            (:func:`~morphable.render.rasterize.rasterize_ids_facing`), or ``None`` to compute them.
        compiled: find the silhouette edges and each boundary pixel's nearest one with the compiled CPU kernel
            (:func:`~morphable.render.cpu_kernels.silhouette_search_cpu`, the same result) instead of
            :func:`silhouette_edges` and :func:`_nearest_edge`; ``None``: on CPU tensors.
    """
    B, H, W = triangle_id.shape
    if triangles.shape[0] * 3 >= 2**TRIANGLE_BITS:
        raise ValueError(f"soft_silhouette: at most {(2**TRIANGLE_BITS - 1) // 3} triangles")
    covered = compare(triangle_id, ">=", 0)
    alpha = covered.to(screen.dtype).reshape(-1)
    extended = torch.full((B * H * W,), -1, dtype=torch.int64, device=screen.device)
    boundary = _boundary(covered)
    if not bool(boundary.any()):
        return Silhouette(alpha.view(B, H, W), extended.view(B, H, W))
    if screen.device.type == "cpu" if compiled is None else compiled:
        from morphable.render.cpu_kernels import silhouette_search_cpu  # numba: imported on first render

        if facing is None:
            facing = triangle_facing(screen, topology, perspective)
        pix, half = silhouette_search_cpu(screen, facing, topology, boundary, REACH)
        batch = torch.floor(pix.to(torch.float64) / (H * W)).to(torch.int64)  # exact (integer division is slow)
    else:
        sb, sh = silhouette_edges(screen, triangles, topology, perspective, facing)
        if sh.numel() == 0:
            return Silhouette(alpha.view(B, H, W), extended.view(B, H, W))
        a, b, _ = _edge_geometry(screen.detach(), topology, sb, sh)
        pix, e = _nearest_edge(a, b, sb, boundary)
        half, batch = sh.index_select(0, e), sb.index_select(0, e)
    # the chosen edge of each pixel, differentiably (one gather per pixel, not per silhouette edge)
    a, b, c = _edge_geometry(screen, topology, batch, half)
    p = pixel_coordinates(pix, H, W)[1].to(screen.dtype)
    sd = _signed_distance(a, b, c, p)
    inside = covered.reshape(-1).index_select(0, pix)
    soft = torch.where(inside, (0.5 + sd).clamp(0.5, 1.0), (0.5 + sd).clamp(0.0, 0.5))
    alpha.index_put_((pix,), soft)  # in place: alpha is a fresh tensor (autograd records the soft values)
    out = flat_nonzero(~inside)
    extended.index_put_((pix.index_select(0, out),), half.index_select(0, out) // 3)
    return Silhouette(alpha.view(B, H, W), extended.view(B, H, W))
