"""``Renderer``: camera → rasterise → interpolate → shade → composite (deferred shading).

Pipeline for a batch of meshes in model space (mm):

1. ``camera.project_with_depth`` gives screen vertices ``(u, v, depth)``;
2. :func:`~morphable.render.rasterize.rasterize_ids` finds each pixel's triangle (no gradient);
3. :func:`~morphable.render.silhouette.soft_silhouette` gives the anti-aliased alpha and the triangles
   to extrapolate just outside the silhouette;
4. barycentrics are recomputed differentiably for the covered and near-silhouette pixels only
   (a packed list of pixels), vertex attributes (view-frame normals, albedo, UVs, positions) are
   interpolated there, and shaded: SH Lambertian, Phong point lights, or unlit albedo;
5. the packed results are scattered into ``(B, H, W, C)`` buffers and composited over the background.

All buffers are differentiable where it makes sense (image, alpha, depth, normals, UV, PNCC) with
respect to vertices, camera parameters, albedo/texture and lights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from morphable.geometry.camera import Camera, Perspective
from morphable.geometry.mesh import VertexFaceIncidence, vertex_normals
from morphable.render.rasterize import barycentric_at, pixel_coordinates, rasterize_ids
from morphable.render.shading import phong_shade, sh_basis
from morphable.render.silhouette import EdgeTopology, soft_silhouette
from morphable.render.texture import sample_image
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

    Attributes:
        image: ``(B, H, W, 3)`` shaded linear RGB composited over the background with ``alpha``.
        alpha: ``(B, H, W)`` soft coverage (``>= 0.5`` exactly on covered pixels).
        depth: ``(B, H, W)`` mm, larger is farther; ``inf`` on background.
        normals: ``(B, H, W, 3)`` unit view-frame normals (+z towards the viewer).
        triangle_id: ``(B, H, W)`` int64, −1 on background.
        barycentric: ``(B, H, W, 3)`` (perspective-correct for perspective cameras).
        albedo: ``(B, H, W, 3)`` interpolated/sampled albedo (``None`` when none was given).
        uv: ``(B, H, W, 2)`` texture coordinates in [0, 1]² (v up), or ``None`` without UVs.
        pncc: ``(B, H, W, 3)`` projected normalised coordinate code (Zhu et al. 2016, 3DDFA): the
            reference shape's coordinates normalised to [0, 1]³, or ``None`` without a reference.
        screen: ``(B, V, 3)`` the screen-space vertices ``(u, v, depth)``.
        visibility: ``(B, V)`` bool per-vertex visibility (front-facing, not self-occluded per the
            z-buffer; :func:`~morphable.render.visibility.vertex_visibility`), when requested.
    """

    image: Tensor
    alpha: Tensor
    depth: Tensor
    normals: Tensor
    triangle_id: Tensor
    barycentric: Tensor
    albedo: Tensor | None
    uv: Tensor | None
    pncc: Tensor | None
    screen: Tensor
    visibility: Tensor | None = None


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


def _scatter(values: Tensor, pix: Tensor, total: int, fill: float = 0.0) -> Tensor:
    """Packed ``(P, C)`` (or ``(P,)``) values -> ``(total, C)`` with ``fill`` elsewhere (differentiable)."""
    out = values.new_full((total, *values.shape[1:]), fill)
    return out.index_put((pix,), values)


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
        self._topology = EdgeTopology.build(triangles) if soft_silhouette else None
        self._incidence: VertexFaceIncidence | None = None

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
        if vertices.dim() != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"Renderer: expected vertices (B, V, 3), got {tuple(vertices.shape)}")
        B = vertices.shape[0]
        H, W = self.image_size
        perspective = isinstance(camera, Perspective)
        tri = self.triangles
        screen = camera.project_with_depth(vertices)
        view = camera.transform(vertices)  # view frame (mm; orthographic: rotation only)

        ids = rasterize_ids(screen, tri, (H, W), cull_backfaces=self.cull_backfaces, perspective=perspective,
                            near=self.near)
        covered = ids >= 0
        if self.soft_silhouette:
            sil = soft_silhouette(screen, tri, ids, self._topology, perspective=perspective)
            alpha, shade_ids = sil.alpha, torch.where(covered, ids, sil.extended_id)
        else:
            alpha, shade_ids = covered.to(vertices.dtype), ids

        # packed pixels to shade: covered + extrapolated just outside the silhouette
        flat = shade_ids.reshape(-1)
        pix = (flat >= 0).nonzero(as_tuple=True)[0]
        face = flat.index_select(0, pix)
        batch, centres = pixel_coordinates(pix, H, W)
        bary, depth_p = barycentric_at(screen, tri, batch, face, centres, perspective)

        if self._incidence is None or self._incidence.num_vertices != view.shape[1]:
            self._incidence = VertexFaceIncidence(tri, view.shape[1])  # built once per vertex count
        normals_v = vertex_normals(view, tri, incidence=self._incidence)
        attrs = [normals_v]
        if colors is not None:
            attrs.append(colors)
        if lights is not None:
            attrs.append(view)
        packed = _gather_interpolate(torch.cat(attrs, dim=-1), tri, batch, face, bary)
        n_p = packed[:, :3]
        n_p = n_p / n_p.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # clamp: zero normals stay 0, no nan
        albedo_p = packed[:, 3:6] if colors is not None else None
        uv_p = None
        if self.uv is not None:
            uv_p = _gather_interpolate(self.uv.to(vertices.dtype), self.uv_triangles, batch, face, bary)
            if albedo_p is None and texture is not None:
                Ht, Wt = texture.shape[1:3]
                # texel centres at integer coordinates: u = 0 -> x = 0, u = 1 -> x = Wt − 1; v up
                pts = torch.stack([uv_p[:, 0] * (Wt - 1), (1 - uv_p[:, 1]) * (Ht - 1)], dim=-1)
                albedo_p = _sample_packed(texture, batch, pts)
        elif texture is not None:
            raise ValueError("Renderer: a texture needs UV coordinates (give uv to the Renderer)")

        base = albedo_p if albedo_p is not None else torch.ones_like(n_p)
        if sh is not None:
            color_p = _sh_packed(n_p, base, sh, batch)
        elif lights is not None:
            pos_p = packed[:, -3:]
            eye = torch.zeros(B, 3, dtype=vertices.dtype, device=vertices.device) if perspective else None
            color_p = _phong_packed(n_p, pos_p, base, lights, batch, eye)
        else:
            color_p = base

        total = B * H * W
        color = _scatter(color_p, pix, total).view(B, H, W, 3)
        if isinstance(background, Tensor):
            bg = background.to(vertices.dtype)
            bg = bg[:, None, None, :] if bg.dim() == 2 else bg
        else:
            bg = torch.as_tensor(float(background), dtype=vertices.dtype, device=vertices.device)
        image = alpha.unsqueeze(-1) * color + (1 - alpha.unsqueeze(-1)) * bg

        # the other buffers hold covered pixels only (no extrapolation beyond the silhouette)
        keep = covered.reshape(-1).index_select(0, pix).nonzero(as_tuple=True)[0]
        pix_c = pix.index_select(0, keep)
        sel = lambda t: t.index_select(0, keep)  # noqa: E731
        depth = _scatter(sel(depth_p), pix_c, total, math.inf).view(B, H, W)
        normals = _scatter(sel(n_p), pix_c, total).view(B, H, W, 3)
        barycentric = _scatter(sel(bary), pix_c, total).view(B, H, W, 3)
        albedo = None if albedo_p is None else _scatter(sel(albedo_p), pix_c, total).view(B, H, W, 3)
        uv = None if uv_p is None else _scatter(sel(uv_p), pix_c, total).view(B, H, W, 2)
        pncc = None
        if self.ncc is not None:
            ncc_p = _gather_interpolate(self.ncc.to(vertices.dtype), tri, sel(batch), sel(face), sel(bary))
            pncc = _scatter(ncc_p, pix_c, total).view(B, H, W, 3)
        vis = None
        if visibility:
            vis = visibility_from_ids(screen, tri, ids, tolerance_mm=visibility_tolerance_mm, perspective=perspective)
        return RenderOutput(image, alpha, depth, normals, ids, barycentric, albedo, uv, pncc, screen, vis)


def _sh_packed(normals: Tensor, albedo: Tensor, sh: Tensor, batch: Tensor) -> Tensor:
    """SH shading ``ρ ⊙ (Lᵀ φ(n))`` of packed pixels (unit normals ``(P, 3)``, batch index ``(P,)``)."""
    if sh.dim() != 3 or sh.shape[1:] != (9, 3):
        raise ValueError(f"Renderer: expected sh of shape (B, 9, 3), got {tuple(sh.shape)}")
    phi = sh_basis(normals)  # (P, 9); the normals are unit already
    if int(sh.shape[0]) == 1:
        return albedo * (phi @ sh[0])
    return albedo * torch.einsum("pk,pkc->pc", phi, sh.index_select(0, batch))  # Σ_k φ[p,k] L[b(p),k,c]


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
