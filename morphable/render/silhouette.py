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
(one triangle). A background pixel near the silhouette is shaded by extrapolating the attributes of the
edge's triangle (Genova's negative barycentrics), returned as ``extended_id``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf
from torch import Tensor

from morphable.geometry.mesh import edge_topology
from morphable.render.rasterize import TRIANGLE_BITS, _EMPTY, _pow2_class, _sortable_key, pixel_coordinates

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
    """

    first: Tensor
    second: Tensor
    first_face: Tensor
    second_face: Tensor
    has_second: Tensor
    corners: Tensor

    @staticmethod
    def build(triangles: Tensor) -> "EdgeTopology":
        _, h2e, count = edge_topology(triangles)
        order = torch.argsort(h2e, stable=True)  # half-edges grouped by edge, increasing ids
        start = torch.cumsum(count, 0) - count
        first = order[start]
        second = torch.where(count > 1, order[(start + 1).clamp_max(order.numel() - 1)], -1)
        return EdgeTopology(first, second, first // 3, second.clamp_min(0) // 3, count > 1,
                            triangles.t().contiguous())


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
    c = covered[:, None].to(torch.float32)
    pad = nnf.pad(c, (1, 1, 1, 1), mode="replicate")[:, 0]
    center = pad[:, 1:-1, 1:-1]
    diff = ((pad[:, :-2, 1:-1] != center) | (pad[:, 2:, 1:-1] != center)
            | (pad[:, 1:-1, :-2] != center) | (pad[:, 1:-1, 2:] != center))
    return diff


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
    batch, edge = (f1 != f2).nonzero(as_tuple=True)  # boundary (f2 = 0) or a fold between front and back
    face1, face2 = t.first_face.index_select(0, edge), t.second_face.index_select(0, edge)
    keep1 = facing.index_select(0, face1 + batch * F) != 0
    keep2 = t.has_second.index_select(0, edge) & (facing.index_select(0, face2 + batch * F) != 0)
    half = torch.cat([t.first.index_select(0, edge)[keep1], t.second.index_select(0, edge)[keep2]])
    return torch.cat([batch[keep1], batch[keep2]]), half


def _edge_geometry(screen: Tensor, triangles: Tensor, batch: Tensor,
                   half_edge: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """End points ``a, b`` ``(S, 2)`` and the opposite corner ``c`` ``(S, 2)`` of half-edges (differentiable)."""
    f, i = half_edge // 3, half_edge % 3
    tri = triangles[f]  # (S, 3)
    ar = torch.arange(tri.shape[0], device=tri.device)
    ia, ib, ic = tri[ar, (i + 1) % 3], tri[ar, (i + 2) % 3], tri[ar, i]
    xy = screen[..., :2]
    return xy[batch, ia], xy[batch, ib], xy[batch, ic]


def _signed_distance(a: Tensor, b: Tensor, c: Tensor, p: Tensor) -> Tensor:
    """Signed distance (px) from ``p`` to the line ``ab``, positive on the side of ``c``. All ``(S, 2)``."""
    ab = b - a
    length = ab.norm(dim=-1).clamp_min(1e-12)  # clamp: zero-length edges are never silhouettes of valid faces
    cross_p = ab[:, 0] * (p[:, 1] - a[:, 1]) - ab[:, 1] * (p[:, 0] - a[:, 0])
    cross_c = ab[:, 0] * (c[:, 1] - a[:, 1]) - ab[:, 1] * (c[:, 0] - a[:, 0])
    return cross_p / length * torch.sign(cross_c).detach()


def _box_has_boundary(boundary: Tensor, batch: Tensor, x0: Tensor, y0: Tensor, x1: Tensor, y1: Tensor) -> Tensor:
    """Whether each pixel box ``[x0, x1] × [y0, y1]`` (int64, inclusive, inside the image) of image ``batch``
    holds a boundary pixel: four reads of the boundary mask's summed-area table. ``-> (S,)`` bool."""
    B, H, W = boundary.shape
    sat = nnf.pad(boundary.to(torch.int32).cumsum(1).cumsum(2), (1, 0, 1, 0)).reshape(-1)  # (B, H+1, W+1)
    row = batch * (H + 1)
    at = lambda y, x: sat.index_select(0, (row + y) * (W + 1) + x)  # noqa: E731
    return (at(y1 + 1, x1 + 1) - at(y0, x1 + 1) - at(y1 + 1, x0) + at(y0, x0)) > 0


@torch.no_grad()
def _nearest_edge(a: Tensor, b: Tensor, batch: Tensor, boundary: Tensor, max_candidates: int = 2**22) -> Tensor:
    """For every boundary pixel, the index (into the half-edge list) of the nearest silhouette segment
    within :data:`REACH`, or −1. Bounding-box scan like the rasteriser's, over the segments whose box holds
    a boundary pixel (a head mesh has thousands of fold edges inside its rendered silhouette, hidden behind
    the front surface). ``-> (B·H·W,)`` int64."""
    B, H, W = boundary.shape
    dev = a.device
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    x0 = torch.ceil(lo[:, 0] - REACH).clamp_min(0)
    y0 = torch.ceil(lo[:, 1] - REACH).clamp_min(0)
    x1 = torch.floor(hi[:, 0] + REACH).clamp_max(W - 1)
    y1 = torch.floor(hi[:, 1] + REACH).clamp_max(H - 1)
    ok = ((x1 >= x0) & (y1 >= y0)).nonzero(as_tuple=True)[0]
    x0, y0, x1, y1 = (t.index_select(0, ok).to(torch.int64) for t in (x0, y0, x1, y1))
    near = _box_has_boundary(boundary, batch.index_select(0, ok), x0, y0, x1, y1).nonzero(as_tuple=True)[0]
    ok, x0, y0, x1, y1 = (t.index_select(0, near) for t in (ok, x0, y0, x1, y1))
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    base = (batch[ok] * H + y0) * W + x0
    ab = b[ok] - a[ok]
    ab2 = (ab * ab).sum(-1).clamp_min(1e-12)
    rel = torch.stack([x0.to(a.dtype) - a[ok, 0], y0.to(a.dtype) - a[ok, 1]], -1)  # anchor pixel − a
    cx, cy = _pow2_class(nx), _pow2_class(ny)
    flat_boundary = boundary.reshape(-1)
    nearest = torch.full((B * H * W,), _EMPTY, dtype=torch.int64, device=dev)
    if ok.numel() == 0:
        return nearest.fill_(-1)
    # grouped by window size like the rasteriser (one window for all would scan the largest one for every edge)
    cls = cx * 64 + cy
    groups = [((cls == c).nonzero(as_tuple=True)[0], 2 ** (c // 64), 2 ** (c % 64))
              for c in torch.bincount(cls).nonzero(as_tuple=True)[0].tolist()]
    for members, kx, ky in groups:
        dx = torch.arange(kx, device=dev).repeat(ky)[:, None]  # (K, 1); work arrays are (K, M)
        dy = torch.arange(ky, device=dev).repeat_interleave(kx)[:, None]
        step = max(1, max_candidates // (kx * ky))
        for start in range(0, members.numel(), step):
            m = members[start:start + step]
            abx, aby, l2 = ab[m, 0], ab[m, 1], ab2[m]
            px = rel[m, 0] + dx.to(rel.dtype)  # pixel − a
            py = rel[m, 1] + dy.to(rel.dtype)
            t = ((px * abx + py * aby) / l2).clamp(0, 1)
            ex, ey = px - t * abx, py - t * aby
            dist = (ex * ex + ey * ey).sqrt()
            pix = base[m] + (dy * W + dx)
            hit = (dx < nx[m]) & (dy < ny[m]) & (dist <= REACH)
            hit &= flat_boundary[pix.clamp_max(B * H * W - 1)]
            hit = hit.view(-1).nonzero(as_tuple=True)[0]  # one compaction for the three reads
            key = (_sortable_key(dist.view(-1).index_select(0, hit)) << TRIANGLE_BITS) | (
                ok[m].expand_as(dist).reshape(-1).index_select(0, hit))
            nearest.scatter_reduce_(0, pix.view(-1).index_select(0, hit), key, reduce="amin")
    return torch.where(nearest == _EMPTY, -1, nearest & (2**TRIANGLE_BITS - 1))


@torch.no_grad()
def nearest_edge_reference(a: Tensor, b: Tensor, batch: Tensor, boundary: Tensor) -> tuple[Tensor, Tensor]:
    """Brute force of :func:`_nearest_edge`: every boundary pixel against every segment of its image, in float64.

    Returns:
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
                    perspective: bool = False, facing: Tensor | None = None) -> Silhouette:
    """Anti-aliased coverage (see module docstring).

    Args:
        screen: ``(B, V, 3)`` screen-space vertices, as given to :func:`~morphable.render.rasterize.rasterize`.
        triangles: ``(F, 3)`` int64.
        triangle_id: ``(B, H, W)`` hard rasterisation result.
        topology: ``EdgeTopology.build(triangles)`` (cache it per mesh: :func:`edge_topology_of`).
        perspective: whether ``screen`` comes from a perspective camera.
        facing: ``(B·F,)`` int8 triangle orientations from the rasteriser
            (:func:`~morphable.render.rasterize.rasterize_ids_facing`), or ``None`` to compute them.
    """
    B, H, W = triangle_id.shape
    if triangles.shape[0] * 3 >= 2**TRIANGLE_BITS:
        raise ValueError(f"soft_silhouette: at most {(2**TRIANGLE_BITS - 1) // 3} triangles")
    covered = triangle_id >= 0
    alpha = covered.to(screen.dtype).reshape(-1)
    extended = torch.full((B * H * W,), -1, dtype=torch.int64, device=screen.device)
    boundary = _boundary(covered)
    sb, sh = silhouette_edges(screen, triangles, topology, perspective, facing)
    if sh.numel() == 0 or not bool(boundary.any()):
        return Silhouette(alpha.view(B, H, W), extended.view(B, H, W))
    a, b, _ = _edge_geometry(screen.detach(), triangles, sb, sh)
    nearest = _nearest_edge(a, b, sb, boundary)
    pix = (nearest >= 0).nonzero(as_tuple=True)[0]
    e = nearest.index_select(0, pix)
    half = sh.index_select(0, e)
    # the chosen edge of each pixel, differentiably (one gather per pixel, not per silhouette edge)
    a, b, c = _edge_geometry(screen, triangles, sb.index_select(0, e), half)
    p = pixel_coordinates(pix, H, W)[1].to(screen.dtype)
    sd = _signed_distance(a, b, c, p)
    inside = covered.reshape(-1)[pix]
    soft = torch.where(inside, (0.5 + sd).clamp(0.5, 1.0), (0.5 + sd).clamp(0.0, 0.5))
    alpha = alpha.index_put((pix,), soft)
    extended[pix[~inside]] = half[~inside] // 3
    return Silhouette(alpha.view(B, H, W), extended.view(B, H, W))
