"""Texture extraction: sample a photo into a model's UV layout, using only the surface the camera sees.

Pipeline (the "texture from a fitted model" step of eos's ``extract_texture``, done per texel with a
z-buffer instead of per-triangle affine warps):

1. **Texel map** (pose independent, :func:`uv_texel_map`): rasterise the UV layout itself, so every
   texel inside it gets a triangle id and barycentric coordinates.
2. **Surface point**: those barycentrics applied to the triangle's 3D vertices give the model-space
   point a texel shows; the camera projects it to a pixel position and a depth.
3. **Visibility**: a texel is used only if its triangle faces the camera (cosine between the normal and
   the direction to the camera ≥ ``min_cosine``, which also drops grazing triangles whose texels are
   smeared) and it is not occluded: its depth is within ``tolerance_mm`` of the z-buffer of the posed
   mesh at that pixel.
4. **Sampling**: bilinear, at the projected position.
5. **Mirror fill** (models with a ``symmetry`` map): a texel that is hidden takes the colour of its
   mirror point (the same barycentrics on the mirrored vertices) when that point is visible; so does
   a texel seen only at a grazing angle when its mirror point faces the camera squarely.
6. **Hole fill** (optional): every remaining texel copies its nearest seen texel, so the texture has no
   black seams or holes when rendered with mip-mapping.

UV convention: :func:`morphable.render.texture.uv_to_pixels` (texel (row i, column j) of an ``S × S``
texture has its centre at ``u = (j + ½)/S``, ``v = 1 − (i + ½)/S``; ``texture[0]`` is the image file's top row).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from morphable.geometry.camera import Camera, Perspective
from morphable.models.base import MorphableModel
from morphable.render.rasterize import rasterize
from morphable.render.texture import sample_image, uv_to_pixels


@dataclass(frozen=True)
class TexelMap:
    """Which surface point every texel of a UV layout shows.

    Attributes:
        triangle_id: ``(S, S)`` int64 triangle index per texel, −1 outside the layout.
        barycentric: ``(S, S, 3)`` barycentric coordinates inside that triangle.
    """

    triangle_id: Tensor
    barycentric: Tensor

    @property
    def size(self) -> int:
        return self.triangle_id.shape[0]


@dataclass(frozen=True)
class ExtractedTexture:
    """Result of :func:`extract_texture`.

    Attributes:
        texture: ``(S, S, 3)`` uint8 RGB, row 0 = top of the image file (v = 1).
        visible: ``(S, S)`` bool, texels sampled directly from the photo.
        mirrored: ``(S, S)`` bool, texels filled from their mirror point (hidden or grazing ones).
        covered: ``(S, S)`` bool, texels inside the UV layout.
    """

    texture: np.ndarray
    visible: np.ndarray
    mirrored: np.ndarray
    covered: np.ndarray


def uv_texel_map(uv: Tensor, uv_triangles: Tensor, size: int = 512, selected: Tensor | None = None) -> TexelMap:
    """Rasterise a UV layout: the triangle and barycentrics under every texel centre of the unit tile.

    Args:
        uv: ``(T, 2)`` texture coordinates, the tile [0, 1]² is rasterised (v up).
        uv_triangles: ``(F, 3)`` int64 ids into ``uv``, one row per mesh triangle (same order).
        size: texture width = height, texels.
        selected: ``(F,)`` bool, the triangles to rasterise (default all); where UV triangles overlap,
            one of them wins arbitrarily, so overlapping parts (eyeballs over skin) must be left out.
    Returns:
        :class:`TexelMap` whose ids index the full ``uv_triangles``.
    """
    uv = uv.detach()
    ids = torch.arange(uv_triangles.shape[0], device=uv_triangles.device)
    if selected is not None:
        ids = ids[selected]
    pixels = uv_to_pixels(uv, size)
    screen = torch.cat([pixels, torch.zeros_like(pixels[:, :1])], -1)
    frags = rasterize(screen[None], uv_triangles[ids], (size, size))
    tid = frags.triangle_id[0]
    tid = torch.where(tid >= 0, ids[tid.clamp_min(0)], tid)
    return TexelMap(triangle_id=tid, barycentric=frags.barycentric[0].to(uv.dtype))


def textured_faces(model: MorphableModel, faces: list[list[int]] | Tensor,
                   uv_faces: list[list[int]] | Tensor | None) -> Tensor:
    """``(F,)`` bool: which faces (triangles or polygons) get texels in :func:`model_texel_map`.

    Those whose UVs all lie in the unit tile [0, 1]² (ICT FaceKit spreads its materials over UDIM-style
    tiles u ∈ [k, k + 1]), and, when the model names a ``"face"`` region, whose vertices all belong to
    it (ICT's eyeballs, sclera and irises reuse the face tile's UV square on top of the skin).

    Args:
        model: its ``uv`` and ``regions`` are used.
        faces: vertex ids per face (``(F, n)`` tensor or lists of any lengths).
        uv_faces: UV ids per face, or ``None`` for per-vertex UVs.
    """
    if model.uv is None:
        raise ValueError(f"model {model.name} has no UV layout to extract a texture into")
    device = model.uv.device
    lengths = torch.tensor([len(f) for f in faces], device=device)
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
    flat = lambda x: torch.as_tensor([i for f in x for i in f] if isinstance(x, list) else x.reshape(-1),  # noqa: E731
                                     dtype=torch.int64, device=device)
    vertex = flat(faces)
    corner_uv = model.uv[flat(uv_faces) if uv_faces is not None else vertex]
    bad = ~((corner_uv >= 0) & (corner_uv <= 1)).all(-1)
    face = model.regions.get("face")
    if face is not None:
        inside = torch.zeros(model.n_vertices, dtype=torch.bool, device=device)
        inside[face.to(device)] = True
        bad |= ~inside[vertex]
    return torch.zeros(len(lengths), dtype=torch.int64, device=device).index_add_(0, owner, bad.long()) == 0


def textured_triangles(model: MorphableModel) -> Tensor:
    """``(F,)`` bool: :func:`textured_faces` of the model's render triangles."""
    return textured_faces(model, model.triangles, model.uv_triangles)


def model_texel_map(model: MorphableModel, size: int = 512) -> TexelMap:
    """:func:`uv_texel_map` of a model's layout, over its :func:`textured_triangles`.

    Per-vertex UVs are used when the model has no ``uv_triangles``.
    """
    keep = textured_triangles(model)
    uv_tris = model.uv_triangles if model.uv_triangles is not None else model.triangles
    return uv_texel_map(model.uv, uv_tris, size, selected=keep)


def _facing_cosine(camera: Camera, points_view: Tensor, normals_view: Tensor) -> Tensor:
    """Cosine between outward normals and the direction towards the camera, in the view frame.

    The scaled-orthographic viewer looks along −z (towards it is +z); a perspective camera sits at the
    origin of its frame, so the direction towards it from ``X`` is ``−X``.
    """
    if isinstance(camera, Perspective):
        to_camera = -points_view / points_view.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        return (normals_view * to_camera).sum(-1)
    return normals_view[..., 2]


def _surface(vertices: Tensor, tri: Tensor, bary: Tensor) -> tuple[Tensor, Tensor]:
    """Points ``Σ_k b_k X[tri_k]`` and unit (unnormalised-area) normals of the triangles ``tri`` (N, 3)."""
    a, b, c = vertices[tri[:, 0]], vertices[tri[:, 1]], vertices[tri[:, 2]]
    points = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c
    normals = torch.linalg.cross(b - a, c - a, dim=-1)
    return points, normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class DepthBuffer:
    """A z-buffer of the posed mesh over the bounding box of its projection, possibly downscaled.

    Pixel ``(x, y)`` of the photo falls on buffer cell ``round(k · (x − x0)), round(k · (y − y0))``.

    Attributes:
        depth: ``(h, w)`` mm, inf on background.
        origin: ``(x0, y0)`` photo pixel of cell ``(0, 0)``.
        factor: ``k`` ≤ 1, buffer cells per photo pixel.
    """

    depth: Tensor
    origin: tuple[int, int]
    factor: float

    def lookup(self, pixels: Tensor) -> Tensor:
        """Depth at the cells nearest to photo positions ``(N, 2)`` px (clamped to the buffer)."""
        h, w = self.depth.shape
        col = torch.round((pixels[:, 0] - self.origin[0]) * self.factor).long().clamp(0, w - 1)
        row = torch.round((pixels[:, 1] - self.origin[1]) * self.factor).long().clamp(0, h - 1)
        return self.depth[row, col]

    def unoccluded(self, screen: Tensor, image_size: tuple[int, int], tolerance_mm: float | Tensor = 3.0) -> Tensor:
        """``(N, 3)`` ``(u, v, depth)`` points -> ``(N,)`` bool: inside the photo and not behind the surface.

        ``tolerance_mm`` is a scalar or ``(N,)``. Back-facing is not tested here (a vertex on a back face
        passes if nothing else is in front).
        """
        H, W = image_size
        u, v, depth = screen.unbind(-1)
        inside = (u > -0.5) & (u < W - 0.5) & (v > -0.5) & (v < H - 0.5) & torch.isfinite(depth)
        return inside & (depth <= self.lookup(screen[:, :2]) + tolerance_mm)


def depth_buffer(screen: Tensor, triangles: Tensor, image_size: tuple[int, int], *, perspective: bool = False,
                 max_side: int = 512) -> DepthBuffer:
    """Rasterise the depth of a posed mesh's front faces over its projected bounding box (in the image).

    The box is downscaled so its longer side has at most ``max_side`` cells: a z-buffer for visibility
    needs no more, and a face filling a 4000-pixel photo would otherwise cost seconds.

    Args:
        screen: ``(V, 3)`` ``(u px, v px, depth mm)`` of the posed mesh.
        triangles: ``(F, 3)`` int64.
        image_size: ``(H, W)`` of the photo.
        perspective: ``screen`` comes from a perspective camera.
        max_side: largest buffer side, cells.
    """
    H, W = image_size
    finite = screen[torch.isfinite(screen).all(-1)]
    if len(finite) == 0:
        return DepthBuffer(torch.full((1, 1), float("inf"), dtype=screen.dtype), (0, 0), 1.0)
    x0 = int(max(0, np.floor(float(finite[:, 0].min())) - 1))
    y0 = int(max(0, np.floor(float(finite[:, 1].min())) - 1))
    x1 = int(min(W - 1, np.ceil(float(finite[:, 0].max())) + 1))
    y1 = int(min(H - 1, np.ceil(float(finite[:, 1].max())) + 1))
    if x1 < x0 or y1 < y0:
        return DepthBuffer(torch.full((1, 1), float("inf"), dtype=screen.dtype), (0, 0), 1.0)
    k = min(1.0, max_side / max(x1 - x0 + 1, y1 - y0 + 1))
    cells = screen.detach() - screen.new_tensor([x0, y0, 0.0])
    cells = cells * cells.new_tensor([k, k, 1.0])
    size = (int(np.ceil((y1 - y0) * k)) + 1, int(np.ceil((x1 - x0) * k)) + 1)
    # back faces are culled: on a closed surface the front faces hide them, and visibility is only
    # ever asked of front-facing points (halves the work)
    frags = rasterize(cells[None], triangles, size, perspective=perspective, cull_backfaces=True)
    return DepthBuffer(frags.depth[0].detach(), (x0, y0), k)


def _visible(camera: Camera, points: Tensor, normals: Tensor, zbuf: DepthBuffer, image_size: tuple[int, int],
             tolerance_mm: float) -> tuple[Tensor, Tensor, Tensor]:
    """Project surface points: in the image and passing the depth test; how squarely they face the camera.

    The depth test compares a point with the buffer at the nearest cell centre, up to ``√½`` cell away
    on the surface; on a surface inclined at θ the depth there differs by up to ``√½ · cell · tan θ``,
    which is added to ``tolerance_mm`` (cell size in mm: ``1 / (k · pixels per mm)``).

    Returns ``(N,)`` bool visibility (facing not tested), ``(N,)`` cosines and ``(N, 2)`` pixel positions.
    """
    screen = camera.project_with_depth(points[None])[0]
    R = camera.rotation_matrix[0]
    view_points = camera.transform(points[None])[0]
    cosine = _facing_cosine(camera, view_points, normals @ R.T)
    if isinstance(camera, Perspective):
        px_per_mm = camera.focal[0] / screen[:, 2].clamp_min(1e-6)
    else:
        px_per_mm = camera.scale[0].expand(screen.shape[0])
    cos = cosine.abs().clamp(0.1, 1.0)  # grazing points are rejected by the cosine test anyway
    slack = tolerance_mm + 0.71 / (zbuf.factor * px_per_mm) * torch.sqrt(1 - cos**2) / cos
    return zbuf.unoccluded(screen, image_size, slack), cosine, screen[:, :2]


def extract_texture(model: MorphableModel, vertices: Tensor, camera: Camera, image: np.ndarray, *,
                    size: int = 512, texel_map: TexelMap | None = None, tolerance_mm: float = 3.0,
                    min_cosine: float = 0.1, good_cosine: float = 0.35, mirror: bool = True, fill: bool = True,
                    zbuffer_size: int = 320) -> ExtractedTexture:
    """Sample a photo into the model's UV layout, masking back-facing and occluded surface.

    Args:
        model: the model (its ``triangles``, ``uv``/``uv_triangles`` and optional ``symmetry``).
        vertices: ``(V, 3)`` or ``(1, V, 3)`` fitted vertices, mm, model space.
        camera: the fitted camera (batch of one) mapping model space to the photo.
        image: ``(H, W, 3)`` uint8 RGB photo.
        size: texture width = height in texels (ignored when ``texel_map`` is given).
        texel_map: a precomputed :func:`model_texel_map` (pose independent; reuse it across photos).
        tolerance_mm: depth slack of the z-buffer test, mm (plus the slope term of the coarse buffer).
        zbuffer_size: longest side of the (downscaled) z-buffer, cells (:func:`depth_buffer`).
        min_cosine: minimum cosine between a triangle's normal and the direction to the camera.
        good_cosine: a texel seen at a cosine below this (smeared, near a silhouette where a small fit
            error samples the background) takes its mirror point's colour when that one is seen at
            ``good_cosine`` or more.
        mirror: fill hidden (and grazing, see ``good_cosine``) texels from their mirror point where the
            model has ``symmetry``.
        fill: give every remaining texel the colour of its nearest seen texel.
    Returns:
        :class:`ExtractedTexture`.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"extract_texture: expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    vertices = vertices.detach()
    if vertices.dim() == 3:
        if vertices.shape[0] != 1:
            raise ValueError(f"extract_texture: expected one mesh, got a batch of {vertices.shape[0]}")
        vertices = vertices[0]
    texel_map = texel_map if texel_map is not None else model_texel_map(model, size)
    S = texel_map.size
    H, W = image.shape[:2]
    dtype = vertices.dtype
    triangles = model.triangles.to(vertices.device)

    tid = texel_map.triangle_id.reshape(-1).to(vertices.device)
    covered = tid >= 0
    texel_ids = torch.nonzero(covered).squeeze(-1)
    tri = triangles[tid[texel_ids]]
    bary = texel_map.barycentric.reshape(-1, 3)[texel_ids].to(device=vertices.device, dtype=dtype)

    screen = camera.project_with_depth(vertices[None])[0].detach()
    zbuf = depth_buffer(screen, triangles, (H, W), perspective=isinstance(camera, Perspective), max_side=zbuffer_size)
    photo = torch.from_numpy(np.array(image)).to(dtype=dtype, device=vertices.device)[None] / 255.0

    points, normals = _surface(vertices, tri, bary)
    unoccluded, cosine, pixels = _visible(camera, points, normals, zbuf, (H, W), tolerance_mm)
    direct = unoccluded & (cosine >= min_cosine)
    use_mirror = torch.zeros_like(direct)
    if mirror and model.symmetry is not None:
        mirror_tri = model.symmetry.to(vertices.device)[tri]
        m_points, m_normals = _surface(vertices, mirror_tri, bary)
        # mirroring reverses a triangle's winding, so its outward normal is minus the cross product
        m_unoccluded, m_cosine, m_pixels = _visible(camera, m_points, -m_normals, zbuf, (H, W), tolerance_mm)
        m_ok = m_unoccluded & (m_cosine >= min_cosine)
        # the mirror point replaces a hidden texel, and a grazing one when it faces the camera squarely
        grazing = direct & (cosine < good_cosine) & m_ok & (m_cosine >= good_cosine)
        use_mirror = (m_ok & ~direct) | grazing
        direct &= ~grazing
        pixels = torch.where(use_mirror[:, None], m_pixels, pixels)
    used = direct | use_mirror
    colors = torch.zeros(S * S, 3, dtype=dtype, device=vertices.device)
    if used.any():
        colors[texel_ids[used]] = sample_image(photo, pixels[used][None])[0]
    visible = torch.zeros(S * S, dtype=torch.bool, device=vertices.device)
    visible[texel_ids[direct]] = True
    mirrored = torch.zeros_like(visible)
    mirrored[texel_ids[use_mirror]] = True

    texture = (colors.clamp(0, 1) * 255).round().to(torch.uint8).reshape(S, S, 3).cpu().numpy()
    visible = visible.reshape(S, S).cpu().numpy()
    mirrored = mirrored.reshape(S, S).cpu().numpy()
    if fill:
        texture = _nearest_fill(texture, visible | mirrored)
    return ExtractedTexture(texture=texture, visible=visible, mirrored=mirrored,
                            covered=covered.reshape(S, S).cpu().numpy())


def _nearest_fill(texture: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Copy into every unknown texel the colour of its nearest known texel (Euclidean, in texels)."""
    if known.all() or not known.any():
        return texture
    from scipy.ndimage import distance_transform_edt

    _, (rows, cols) = distance_transform_edt(~known, return_indices=True)
    return texture[rows, cols]
