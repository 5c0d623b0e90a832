"""``Renderer``: camera → rasterise → interpolate → shade → composite (deferred shading).

Pipeline for a batch of meshes in model space (mm):

1. ``camera.transform`` gives view-frame vertices and ``camera.project_view`` screen vertices
   ``(u, v, depth)`` from them (one rotation for both);
2. :func:`~morphable.render.rasterize.rasterize_ids_facing` finds each pixel's triangle (no gradient)
   and each triangle's orientation;
3. :func:`~morphable.render.silhouette.soft_silhouette` gives the anti-aliased alpha and the triangles
   to extrapolate just outside the silhouette, reusing those orientations;
4. barycentrics are recomputed differentiably for the covered and near-silhouette pixels only
   (a packed list of pixels), vertex attributes (view-frame normals, albedo, UVs, positions) are
   interpolated there, and shaded: SH Lambertian, Phong point lights, or unlit albedo;
5. the packed colours are composited over the background on the packed pixels and scattered into the
   ``(B, H, W, 3)`` image (elsewhere the image is the background).

The tables that depend on the triangles only (edge pairing, sorted corners, vertex–face incidence) are
shared by every renderer of the same triangle list (:func:`~morphable.render.topology.mesh_topology`).

SH shading of per-vertex colours (or white), the common case, runs step 4's barycentrics, interpolation
and shading as one autograd node with a hand-written backward
(:func:`~morphable.render.deferred.sh_shade_packed`; other shading goes through plain autograd ops). The
buffers other than the image and alpha (depth, normals, barycentrics, albedo, UV, PNCC) are built the
first time they are read (:class:`RenderOutput`), so renders whose caller only needs the image skip them.

A mesh that does not move can be rasterised once and shaded many times with new albedo and SH light
(:meth:`Renderer.fix_geometry`, :class:`FixedGeometry`): steps 1–3, the barycentrics and the unit normals are
kept, and each shading is an interpolation and a ``(P, 9)`` matrix product (the photometric fit's albedo stage).

All buffers are differentiable where it makes sense (image, alpha, depth, normals, UV, PNCC) with
respect to vertices, camera parameters, albedo/texture and lights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor, nn

from morphable.geometry.camera import Camera, Perspective
from morphable.geometry.mesh import vertex_normals
from morphable.render.deferred import sh_shade_packed
from morphable.render.rasterize import (barycentric_at, compare, flat_nonzero, pixel_coordinates,
                                        rasterize_ids_facing)
from morphable.render.shading import phong_shade, sh_basis
from morphable.render.silhouette import soft_silhouette
from morphable.render.texture import sample_image
from morphable.render.topology import MeshTopology, mesh_topology
from morphable.render.visibility import visibility_from_ids


@dataclass(frozen=True)
class PointLights:
    """Phong point lights (Genova et al.): ``positions`` ``(B, L, 3)`` view frame mm, ``colors`` ``(B, L, 3)``
    RGB intensities, ``ambient`` factor, ``specular`` colour (scalar or ``(B, 1, 3)``), ``shininess``."""

    positions: Tensor
    colors: Tensor
    ambient: float | Tensor = 0.2
    specular: float | Tensor = 0.0
    shininess: float = 20.0


@dataclass(frozen=True)
class RenderOutput:
    """Rendered buffers (all ``(B, H, W, ...)``; background pixels hold 0 unless stated).

    ``image``, ``alpha``, ``triangle_id`` and ``screen`` are computed by the render; the other buffers
    are built (differentiably, from the same render) the first time they are read, so a render whose
    caller only needs the image does not pay for them.

    Attributes:
        image: ``(B, H, W, 3)`` shaded linear RGB composited over the background with ``alpha``.
        alpha: ``(B, H, W)`` soft coverage (``>= 0.5`` exactly on covered pixels).
        triangle_id: ``(B, H, W)`` int64, −1 on background.
        screen: ``(B, V, 3)`` the screen-space vertices ``(u, v, depth)``.
        visibility: ``(B, V)`` bool per-vertex visibility (front-facing, not self-occluded per the
            z-buffer; :func:`~morphable.render.visibility.vertex_visibility`), when requested.
        depth: ``(B, H, W)`` mm, larger is farther; ``inf`` on background.
        normals: ``(B, H, W, 3)`` unit view-frame normals (+z towards the viewer).
        barycentric: ``(B, H, W, 3)`` (perspective-correct for perspective cameras).
        albedo: ``(B, H, W, 3)`` interpolated/sampled albedo (``None`` when none was given).
        uv: ``(B, H, W, 2)`` texture coordinates in [0, 1]² (v up), or ``None`` without UVs.
        pncc: ``(B, H, W, 3)`` projected normalised coordinate code (Zhu et al. 2016, 3DDFA): the
            reference shape's coordinates normalised to [0, 1]³, or ``None`` without a reference.
    """

    image: Tensor
    alpha: Tensor
    triangle_id: Tensor
    screen: Tensor
    visibility: Tensor | None
    _buffers: "_CoveredBuffers" = field(repr=False, compare=False)

    @cached_property
    def depth(self) -> Tensor:
        return self._buffers.depth()

    @cached_property
    def normals(self) -> Tensor:
        return self._buffers.normals()

    @cached_property
    def barycentric(self) -> Tensor:
        return self._buffers.barycentric()

    @cached_property
    def albedo(self) -> Tensor | None:
        return self._buffers.albedo()

    @cached_property
    def uv(self) -> Tensor | None:
        return self._buffers.uv()

    @cached_property
    def pncc(self) -> Tensor | None:
        return self._buffers.pncc()


class _CoveredBuffers:
    """The covered-pixel buffers of one render, built on demand (differentiable; see :class:`RenderOutput`).

    Recomputes the packed barycentrics of the covered pixels (the shading path may have fused them away)
    and interpolates the requested attribute there."""

    def __init__(self, renderer: "Renderer", screen: Tensor, normals_v: Tensor, colors: Tensor | None,
                 texture: Tensor | None, ids: Tensor, perspective: bool):
        self.r, self.screen, self.normals_v, self.colors, self.texture = renderer, screen, normals_v, colors, texture
        self.ids, self.perspective = ids, perspective
        self._packed: tuple[Tensor, ...] | None = None

    def packed(self) -> tuple[Tensor, ...]:
        """Covered pixels: flat ids, batch, triangle, barycentrics ``(P, 3)``, depth ``(P,)``."""
        if self._packed is None:
            B, H, W = self.ids.shape
            flat = self.ids.reshape(-1)
            pix = flat_nonzero(compare(flat, ">=", 0))
            face = flat.index_select(0, pix)
            batch, centres = pixel_coordinates(pix, H, W)
            bary, depth = barycentric_at(self.screen, self.r.triangles, batch, face, centres, self.perspective)
            self._packed = (pix, batch, face, bary, depth)
        return self._packed

    def _scatter(self, values: Tensor, fill: float = 0.0) -> Tensor:
        B, H, W = self.ids.shape
        return _scatter(values, self.packed()[0], B * H * W, fill).view(B, H, W, *values.shape[1:])

    def depth(self) -> Tensor:
        return self._scatter(self.packed()[4], math.inf)

    def barycentric(self) -> Tensor:
        return self._scatter(self.packed()[3])

    def normals(self) -> Tensor:
        _, batch, face, bary, _ = self.packed()
        n = _gather_interpolate(self.normals_v, self.r.triangles, batch, face, bary)
        return self._scatter(n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12))  # clamp: zero normals stay 0

    def _uv_packed(self) -> Tensor | None:
        if self.r.uv is None:
            return None
        _, batch, face, bary, _ = self.packed()
        return _gather_interpolate(self.r.uv.to(self.screen.dtype), self.r.uv_triangles, batch, face, bary)

    def uv(self) -> Tensor | None:
        uv_p = self._uv_packed()
        return None if uv_p is None else self._scatter(uv_p)

    def albedo(self) -> Tensor | None:
        _, batch, face, bary, _ = self.packed()
        if self.colors is not None:
            return self._scatter(_gather_interpolate(self.colors, self.r.triangles, batch, face, bary))
        if self.texture is not None:
            return self._scatter(_texture_lookup(self.texture, self._uv_packed(), batch))
        return None

    def pncc(self) -> Tensor | None:
        if self.r.ncc is None:
            return None
        _, batch, face, bary, _ = self.packed()
        return self._scatter(_gather_interpolate(self.r.ncc.to(self.screen.dtype), self.r.triangles, batch, face, bary))


def _gather_interpolate(attributes: Tensor, table: Tensor, batch: Tensor, face: Tensor, bary: Tensor) -> Tensor:
    """Packed interpolation ``Σ_i λ_i attr[table[face, i]]``.

    Args:
        attributes: ``(B, N, C)`` or ``(N, C)`` (shared).
        table: ``(F, 3)`` ids into the attribute rows.
        batch, face: ``(P,)``; bary: ``(P, 3)``.
    Returns: ``(P, C)``.
    """
    ids = table.index_select(0, face)  # (P, 3)
    if attributes.dim() == 3:
        N = attributes.shape[1]
        flat = attributes.reshape(-1, attributes.shape[-1])
        ids = ids + (batch * N)[:, None]
    else:
        flat = attributes
    bary = bary.to(flat.dtype)
    # three row gathers and a weighted sum (a reduction over a middle axis of size 3 is slow on CPU)
    out = flat.index_select(0, ids[:, 0]) * bary[:, 0:1]
    out = out + flat.index_select(0, ids[:, 1]) * bary[:, 1:2]
    return out + flat.index_select(0, ids[:, 2]) * bary[:, 2:3]


def _composite(color_p: Tensor, alpha_p: Tensor, pix: Tensor, background: Tensor | float, shape: tuple[int, int, int],
               like: Tensor) -> Tensor:
    """``α c + (1 − α) bg`` as ``(B, H, W, 3)``, computed on the packed pixels only (``α = 0`` elsewhere, where
    the image is the background).

    Args:
        color_p: ``(P, 3)`` shaded colours of the packed pixels ``pix`` ``(P,)`` (flat ids into ``B·H·W``).
        alpha_p: ``(P, 1)`` their coverage.
        background: scalar, or a tensor broadcastable to ``(B, H, W, 3)``; ``(B, 3)`` means per image.
        like: dtype and device of the result.
    """
    B, H, W = shape
    if isinstance(background, Tensor):
        bg = background.to(like.dtype)
        bg = bg[:, None, None, :] if bg.dim() == 2 else bg
        base = bg.expand(B, H, W, 3).reshape(B * H * W, 3)  # differentiable copy: d image / d bg = 1 − α
        bg_p = base.index_select(0, pix)
        return base.index_put((pix,), alpha_p * color_p + (1 - alpha_p) * bg_p).view(B, H, W, 3)
    bg = float(background)
    values = alpha_p * color_p if bg == 0.0 else alpha_p * color_p + (1 - alpha_p) * bg
    # in place on a fresh tensor (no copy of the image; autograd records the packed values)
    return like.new_full((B * H * W, 3), bg).index_put_((pix,), values).view(B, H, W, 3)


def _scatter(values: Tensor, pix: Tensor, total: int, fill: float = 0.0) -> Tensor:
    """Packed ``(P, C)`` (or ``(P,)``) values -> ``(total, C)`` with ``fill`` elsewhere (differentiable)."""
    out = values.new_full((total, *values.shape[1:]), fill)
    return out.index_put((pix,), values)


@dataclass(frozen=True)
class _Coverage:
    """What a render's geometry decides (steps 1–3): view ``(B, V, 3)`` and screen ``(B, V, 3)`` vertices,
    triangle ids and soft alpha ``(B, H, W)``, and the packed pixels to shade: flat ids, triangle, batch
    ``(P,)`` and centres ``(P, 2)``."""

    view: Tensor
    screen: Tensor
    ids: Tensor
    alpha: Tensor
    pix: Tensor
    face: Tensor
    batch: Tensor
    centres: Tensor
    perspective: bool
    topology: MeshTopology


class Renderer(nn.Module):
    """Differentiable renderer for one mesh topology (the configuration lives here; maths in functions).

    Args:
        triangles: ``(F, 3)`` int64.
        image_size: ``(H, W)``.
        uv: ``(T, 2)`` texture coordinates in [0, 1]² (v up) or ``None``.
        uv_triangles: ``(F, 3)`` ids into ``uv`` (``None``: UVs are per vertex).
        reference: ``(V, 3)`` reference shape (e.g. the model mean) for the PNCC buffer, or ``None``.
        cull_backfaces: skip triangles seen from behind (closed heads: the faster choice).
        soft_silhouette: anti-aliased alpha with silhouette gradients (off: hard 0/1 coverage).
        near: near-plane distance in mm (perspective cameras).
    """

    def __init__(self, triangles: Tensor, image_size: tuple[int, int], *, uv: Tensor | None = None,
                 uv_triangles: Tensor | None = None, reference: Tensor | None = None,
                 cull_backfaces: bool = True, soft_silhouette: bool = True, near: float = 1.0):
        super().__init__()
        triangles = torch.as_tensor(triangles, dtype=torch.int64)
        self.register_buffer("triangles", triangles)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.register_buffer("uv", None if uv is None else torch.as_tensor(uv, dtype=torch.float32))
        self.register_buffer("uv_triangles", None if uv_triangles is None and uv is None else
                             (triangles if uv_triangles is None else torch.as_tensor(uv_triangles, dtype=torch.int64)))
        if reference is not None:
            reference = torch.as_tensor(reference, dtype=torch.float32)
            lo, hi = reference.amin(0), reference.amax(0)
            reference = (reference - lo) / (hi - lo).clamp_min(1e-12)  # clamp: flat axis -> 0, no nan
        self.register_buffer("ncc", reference)
        self.cull_backfaces = cull_backfaces
        self.soft_silhouette = soft_silhouette
        self.near = near
        self._topology: tuple[tuple, MeshTopology] | None = None  # (buffer key, shared per-topology tables)

    @classmethod
    def from_model(cls, model, image_size: tuple[int, int], **kwargs) -> "Renderer":
        """A renderer for a :class:`~morphable.models.base.MorphableModel` (its triangles, UVs and mean)."""
        return cls(model.triangles, image_size, uv=model.uv, uv_triangles=model.uv_triangles,
                   reference=model.mean, **kwargs)

    def forward(self, vertices: Tensor, camera: Camera, *, colors: Tensor | None = None,
                texture: Tensor | None = None, sh: Tensor | None = None, lights: PointLights | None = None,
                background: Tensor | float = 0.0, visibility: bool = False,
                visibility_tolerance_mm: float = 1.0) -> RenderOutput:
        """Render.

        Args:
            vertices: ``(B, V, 3)`` model-space vertices (mm).
            camera: a ``ScaledOrthographic`` or ``Perspective`` camera with batch ``B``.
            colors: ``(B, V, 3)`` per-vertex albedo in [0, 1] (linear RGB).
            texture: ``(B, Ht, Wt, 3)`` albedo texture over the UV square (row 0 = v = 1, the top), used
                when ``colors`` is None (needs ``uv``).
            sh: ``(B, 9, 3)`` SH lighting (:mod:`~morphable.render.shading`); or ``lights`` for Phong;
                neither: unlit albedo (white when no albedo is given).
            background: RGB ``(B, 3)``, ``(B, H, W, 3)`` or a scalar.
            visibility: also return per-vertex visibility (from this render's z-buffer).
            visibility_tolerance_mm: its depth slack (see ``vertex_visibility``).
        """
        g = self._rasterize(vertices, camera)
        H, W = self.image_size
        tri, perspective, B = self.triangles, g.perspective, vertices.shape[0]
        ids, alpha, pix, face, batch, centres = g.ids, g.alpha, g.pix, g.face, g.batch, g.centres
        screen, view = g.screen, g.view

        normals_v = vertex_normals(view, tri, incidence=g.topology.incidence(view.shape[1]))
        if texture is not None and self.uv is None:
            raise ValueError("Renderer: a texture needs UV coordinates (give uv to the Renderer)")
        if sh is not None and lights is None and (colors is not None or texture is None):
            if sh.dim() != 3 or sh.shape[1:] != (9, 3):
                raise ValueError(f"Renderer: expected sh of shape (B, 9, 3), got {tuple(sh.shape)}")
            # the common case in one fused autograd node (barycentrics, interpolation, SH shading)
            color_p = sh_shade_packed(screen, normals_v, colors, sh, tri, batch, face, centres, perspective)
        else:
            color_p = self._shade_unfused(screen, view, normals_v, colors, texture, sh, lights, batch, face, centres,
                                          perspective)

        image = _composite(color_p, alpha.reshape(-1).index_select(0, pix)[:, None], pix, background,
                           (B, H, W), vertices)
        vis = None
        if visibility:
            vis = visibility_from_ids(screen, tri, ids, tolerance_mm=visibility_tolerance_mm, perspective=perspective)
        buffers = _CoveredBuffers(self, screen, normals_v, colors, texture, ids, perspective)
        return RenderOutput(image, alpha, ids, screen, vis, buffers)

    def _rasterize(self, vertices: Tensor, camera: Camera) -> "_Coverage":
        """Steps 1–3 of the pipeline: view and screen vertices, triangle ids, soft alpha and the packed pixels
        to shade (covered ones and those extrapolated just outside the silhouette)."""
        if vertices.dim() != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"Renderer: expected vertices (B, V, 3), got {tuple(vertices.shape)}")
        H, W = self.image_size
        perspective = isinstance(camera, Perspective)
        tri = self.triangles
        view = camera.transform(vertices)  # view frame (mm; orthographic: rotation only)
        screen = camera.project_view(view)  # = camera.project_with_depth(vertices), without rotating twice

        key = (tri.data_ptr(), tri._version, tuple(tri.shape), tri.device)  # looked up again if the buffer changes
        if self._topology is None or self._topology[0] != key:
            self._topology = (key, mesh_topology(tri))
        topology = self._topology[1]
        ids, facing = rasterize_ids_facing(screen, tri, (H, W), cull_backfaces=self.cull_backfaces,
                                           perspective=perspective, near=self.near, corners=topology.sorted_corners)
        if self.soft_silhouette:
            sil = soft_silhouette(screen, tri, ids, topology.edges, perspective=perspective, facing=facing)
            # extended ids are −1 on covered pixels, ids −1 off them
            alpha, shade_ids = sil.alpha, torch.maximum(ids, sil.extended_id)
        else:
            alpha, shade_ids = compare(ids, ">=", 0).to(vertices.dtype), ids
        flat = shade_ids.reshape(-1)
        pix = flat_nonzero(compare(flat, ">=", 0))
        batch, centres = pixel_coordinates(pix, H, W)
        return _Coverage(view, screen, ids, alpha, pix, flat.index_select(0, pix), batch, centres, perspective, topology)

    def fix_geometry(self, vertices: Tensor, camera: Camera) -> "FixedGeometry":
        """Rasterise once for SH shading of changing albedo and light on a mesh that does not move
        (no gradient reaches ``vertices`` or ``camera``): see :class:`FixedGeometry`."""
        with torch.no_grad():
            g = self._rasterize(vertices, camera)
            normals_v = vertex_normals(g.view, self.triangles, incidence=g.topology.incidence(g.view.shape[1]))
        return FixedGeometry(self, g, normals_v)

    def _shade_unfused(self, screen: Tensor, view: Tensor, normals_v: Tensor, colors: Tensor | None,
                       texture: Tensor | None, sh: Tensor | None, lights: PointLights | None, batch: Tensor,
                       face: Tensor, centres: Tensor, perspective: bool) -> Tensor:
        """Packed colours ``(P, 3)`` through plain autograd ops (textures, Phong, unlit albedo)."""
        tri = self.triangles
        bary, _ = barycentric_at(screen, tri, batch, face, centres, perspective)
        n_p = _gather_interpolate(normals_v, tri, batch, face, bary)
        n_p = n_p / n_p.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # clamp: zero normals stay 0, no nan
        albedo_p = _gather_interpolate(colors, tri, batch, face, bary) if colors is not None else None
        if albedo_p is None and texture is not None:
            uv_p = _gather_interpolate(self.uv.to(screen.dtype), self.uv_triangles, batch, face, bary)
            albedo_p = _texture_lookup(texture, uv_p, batch)
        base = albedo_p if albedo_p is not None else torch.ones_like(n_p)
        if sh is not None:
            return _sh_packed(n_p, base, sh, batch)
        if lights is not None:
            pos_p = _gather_interpolate(view, tri, batch, face, bary)
            eye = torch.zeros(screen.shape[0], 3, dtype=screen.dtype, device=screen.device) if perspective else None
            return _phong_packed(n_p, pos_p, base, lights, batch, eye)
        return base


def _texture_lookup(texture: Tensor, uv_p: Tensor, batch: Tensor) -> Tensor:
    """Albedo of packed pixels from a ``(B, Ht, Wt, 3)`` texture at UVs ``(P, 2)`` (texel centres at integer
    coordinates: u = 0 -> x = 0, u = 1 -> x = Wt − 1; v up)."""
    Ht, Wt = texture.shape[1:3]
    pts = torch.stack([uv_p[:, 0] * (Wt - 1), (1 - uv_p[:, 1]) * (Ht - 1)], dim=-1)
    return _sample_packed(texture, batch, pts)


def _sh_packed(normals: Tensor, albedo: Tensor, sh: Tensor, batch: Tensor) -> Tensor:
    """SH shading ``ρ ⊙ (Lᵀ φ(n))`` of packed pixels (unit normals ``(P, 3)``, batch index ``(P,)``)."""
    if sh.dim() != 3 or sh.shape[1:] != (9, 3):
        raise ValueError(f"Renderer: expected sh of shape (B, 9, 3), got {tuple(sh.shape)}")
    return albedo * _sh_radiance(sh_basis(normals), sh, batch)  # the normals are unit already


def _sh_radiance(phi: Tensor, sh: Tensor, batch: Tensor) -> Tensor:
    """``Lᵀ φ`` of packed pixels: SH basis ``(P, 9)``, light ``(1|B, 9, 3)``, batch index ``(P,)`` -> ``(P, 3)``."""
    if int(sh.shape[0]) == 1:
        return phi @ sh[0]
    return torch.einsum("pk,pkc->pc", phi, sh.index_select(0, batch))  # Σ_k φ[p,k] L[b(p),k,c]


def _phong_packed(normals: Tensor, positions: Tensor, albedo: Tensor, lights: PointLights, batch: Tensor,
                  eye: Tensor | None) -> Tensor:
    """Phong shading of packed pixels (lights indexed per pixel's batch element)."""
    sel = lambda t: t.index_select(0, batch) if isinstance(t, Tensor) and t.dim() == 3 else t  # noqa: E731
    return phong_shade(normals[:, None], positions[:, None], albedo[:, None], sel(lights.positions),
                       sel(lights.colors), ambient=sel(lights.ambient), specular=sel(lights.specular),
                       shininess=lights.shininess, eye=None if eye is None else eye.index_select(0, batch))[:, 0]


def _sample_packed(texture: Tensor, batch: Tensor, points: Tensor) -> Tensor:
    """Bilinear texture lookup for packed points ``(P, 2)`` px of batch elements ``batch``."""
    if texture.shape[0] == 1:
        return sample_image(texture, points[None])[0]
    out = texture.new_zeros(points.shape[0], texture.shape[-1])
    for b in range(texture.shape[0]):
        m = (batch == b).nonzero(as_tuple=True)[0]
        out = out.index_put((m,), sample_image(texture[b:b + 1], points[m][None])[0])
    return out


class FixedGeometry:
    """A render whose geometry is held fixed, shaded again and again with new per-vertex albedo and SH light
    (:meth:`Renderer.fix_geometry`).

    Rasterisation, silhouette, barycentrics and unit normals depend on the vertices and the camera only, so
    they are computed once; each :meth:`render` then costs an interpolation of the albedo and a ``(P, 9)``
    matrix product, differentiable in ``colors`` and ``sh``. It gives what :class:`Renderer` gives for the same
    mesh, camera, albedo and light (tested against it), at a fraction of the cost: the photometric fit's
    albedo stage holds the geometry fixed for all its steps.
    """

    def __init__(self, renderer: Renderer, coverage: _Coverage, normals_v: Tensor):
        g = coverage
        self.renderer, self.coverage, self.normals_v = renderer, g, normals_v
        self.bary, _ = barycentric_at(g.screen, renderer.triangles, g.batch, g.face, g.centres, g.perspective)
        n = _gather_interpolate(normals_v, renderer.triangles, g.batch, g.face, self.bary)
        self.phi = sh_basis(n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12))  # (P, 9); zero normals stay 0
        self.alpha_p = g.alpha.reshape(-1).index_select(0, g.pix)[:, None]

    def render(self, *, colors: Tensor | None = None, sh: Tensor,
               background: Tensor | float = 0.0) -> RenderOutput:
        """Shade the fixed geometry.

        Args:
            colors: ``(B, V, 3)`` or ``(1, V, 3)`` per-vertex albedo (``None``: white).
            sh: ``(B, 9, 3)`` or ``(1, 9, 3)`` SH lighting.
            background: as in :meth:`Renderer.forward`.
        Returns:
            a :class:`RenderOutput` (no visibility) whose image is differentiable in ``colors`` and ``sh``.
        """
        g = self.coverage
        B, V = g.screen.shape[:2]
        H, W = self.renderer.image_size
        if colors is None:
            albedo_p = torch.ones_like(self.bary)
        else:
            if colors.dim() != 3 or colors.shape[1:] != (V, 3) or colors.shape[0] not in (1, B):
                raise ValueError(f"FixedGeometry: expected colors (B, {V}, 3), got {tuple(colors.shape)}")
            colors = colors.expand(B, V, 3)
            albedo_p = _gather_interpolate(colors, self.renderer.triangles, g.batch, g.face, self.bary)
        if sh.dim() != 3 or sh.shape[1:] != (9, 3) or sh.shape[0] not in (1, B):
            raise ValueError(f"FixedGeometry: expected sh (B, 9, 3), got {tuple(sh.shape)}")
        color_p = albedo_p * _sh_radiance(self.phi.to(albedo_p.dtype), sh, g.batch)
        image = _composite(color_p, self.alpha_p.to(color_p.dtype), g.pix, background, (B, H, W), color_p)
        buffers = _CoveredBuffers(self.renderer, g.screen, self.normals_v, colors, None, g.ids, g.perspective)
        return RenderOutput(image, g.alpha, g.ids, g.screen, None, buffers)
