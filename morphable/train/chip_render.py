"""Render model instances straight into dlib-aligned face chips (Genova et al. 2018, Sec. 3.2–3.3).

The regressors read faces through dlib's recognition network, whose input is a 150 × 150 chip aligned by
a similarity transform of the 68 landmarks onto a mean-face template
(:func:`morphable.identity.alignment.chip_template`). A photo needs :func:`extract_face_chips`; a
*rendered* face does not: a similarity of a scaled-orthographic projection is again one, so the camera
can place the model's own landmarks on the template and the renderer draws the chip directly, at chip
resolution and differentiably in the vertices, albedo and lights.

Camera (Umeyama on the template points): with view-frame landmarks ``q = F Π R X`` (``F`` flips y into
the image), the least-squares similarity ``c ≈ a Rot(φ) q + t`` onto the template ``c`` gives the chip
camera ``s = a``, ``R' = R_z(−φ) R`` (an image-plane rotation by ``φ`` is a rotation by ``−φ`` about the
view axis, since ``F Rot(φ) F = Rot(−φ)``), translation ``t``.

Lighting is Genova's: two Phong point lights a few metres from the face, coloured by a random black-body
colour temperature of common indoor/outdoor sources with a small per-channel perturbation, a little
ambient light and a specular term derived from the diffuse colour's brightness.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle
from morphable.identity.alignment import chip_template, similarity_transform
from morphable.identity.dlib_resnet import CHIP_PADDING
from morphable.models.base import MorphableModel
from morphable.render.renderer import PointLights, Renderer
from morphable.render.shading import color_temperature_rgb

CHIP = 150
# Regions of a model drawn in a chip (ICT names): skin, eye sockets and eyeballs; the mouth interior,
# teeth, eyelashes and tear films are hidden behind the lips/lids or are not skin.
VISIBLE_REGIONS = ("face", "head_neck", "eye_socket_left", "eye_socket_right", "eyeball_left", "eyeball_right")
EYE_REGIONS = {"sclera_left": (0.78, 0.74, 0.70), "sclera_right": (0.78, 0.74, 0.70),
               "iris_left": (0.12, 0.08, 0.06), "iris_right": (0.12, 0.08, 0.06)}
# Colour temperatures of common light sources (K): candle-ish tungsten, tungsten, halogen, warm/cool
# fluorescent, flash, daylight, overcast sky.
LIGHT_KELVIN = (2700.0, 3000.0, 3200.0, 3500.0, 4100.0, 5000.0, 5500.0, 6500.0, 7500.0)


@dataclass(frozen=True)
class Lighting:
    """Two-point-light Phong lighting for a batch (see :class:`~morphable.render.renderer.PointLights`)."""

    positions: Tensor  # (B, 2, 3) view frame, mm
    colors: Tensor  # (B, 2, 3)
    ambient: Tensor  # (B, 1, 3)
    specular: Tensor  # (B, 1, 1)


def random_lighting(batch: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Lighting:
    """Genova's lights: two point lights 2–4 m from the face in the frontal hemisphere (azimuth ±75°,
    elevation −30°…60°), colour = a random :data:`LIGHT_KELVIN` temperature ± 5 % per channel, powers
    0.4–1.0 (and 0.1–0.6 for the second), ambient 0.15–0.4 of the same colour, specular 0.03–0.2."""
    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=torch.float64)

    az, el = torch.deg2rad(u(-75, 75, batch, 2)), torch.deg2rad(u(-30, 60, batch, 2))
    dist = u(2000, 4000, batch, 2)[..., None]
    direction = torch.stack([torch.sin(az) * torch.cos(el), torch.sin(el), torch.cos(az) * torch.cos(el)], -1)
    kelvin = torch.tensor(LIGHT_KELVIN, dtype=torch.float64)[
        torch.randint(len(LIGHT_KELVIN), (batch,), generator=generator)]
    tint = color_temperature_rgb(kelvin).double() * u(0.95, 1.05, batch, 3)
    power = torch.stack([u(0.4, 1.0, batch), u(0.1, 0.6, batch)], 1)[..., None]
    ambient = u(0.15, 0.4, batch, 1, 1) * tint[:, None]
    return Lighting((direction * dist).to(dtype), (power * tint[:, None]).to(dtype), ambient.to(dtype),
                    u(0.03, 0.2, batch, 1, 1).to(dtype))


def random_rotation(batch: int, generator: torch.Generator, *, max_yaw_deg: float = 40.0, max_pitch_deg: float = 15.0,
                    max_roll_deg: float = 10.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Rotation matrices ``(B, 3, 3)`` with yaw/pitch/roll uniform in the given ranges (degrees)."""
    limits = torch.tensor([max_yaw_deg, max_pitch_deg, max_roll_deg], dtype=torch.float64)
    ypr = (2 * torch.rand(batch, 3, generator=generator, dtype=torch.float64) - 1) * torch.deg2rad(limits)
    return euler_to_matrix(ypr).to(dtype)


def random_background(batch: int, generator: torch.Generator, size: int = CHIP,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Backgrounds ``(B, size, size, 3)`` in [0, 1]: a random colour plus a low-frequency random field
    (a 4 × 4 grid of colours upsampled bicubically) of random strength, and mild pixel noise."""
    base = torch.rand(batch, 1, 1, 3, generator=generator, dtype=dtype)
    grid = torch.rand(batch, 3, 4, 4, generator=generator, dtype=dtype)
    field = torch.nn.functional.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)
    strength = torch.rand(batch, 1, 1, 1, generator=generator, dtype=dtype)
    noise = 0.02 * torch.randn(batch, size, size, 3, generator=generator, dtype=dtype)
    return (base * (1 - strength) + field.permute(0, 2, 3, 1) * strength + noise).clamp(0, 1)


def decimate_to_subset(vertices: Tensor, triangles: Tensor, target: int) -> Tensor:
    """Quadric-error decimation (Garland & Heckbert 1997, via ``fast_simplification``) whose vertices are a
    *subset* of the input's, so a linear model stays exact on them: each decimated vertex is replaced by
    the nearest of the original vertices that collapsed into it. Degenerate triangles are dropped.

    Args:
        vertices: ``(V, 3)`` reference shape (e.g. the model mean); triangles: ``(F, 3)``; target: triangles wanted.
    Returns:
        ``(F', 3)`` int64 triangles indexing ``vertices`` (F' ≈ target).
    """
    import fast_simplification
    import numpy as np

    points = vertices.detach().double().cpu().numpy()
    faces = triangles.cpu().numpy().astype(np.int64)
    used = np.unique(faces)
    local = np.full(len(points), -1, dtype=np.int64)
    local[used] = np.arange(len(used))
    sub_points, sub_faces = points[used], local[faces]
    _, _, collapses = fast_simplification.simplify(sub_points, sub_faces, target_count=target, return_collapses=True)
    dec_points, dec_faces, mapping = fast_simplification.replay_simplification(sub_points, sub_faces, collapses)
    # representative original vertex of each decimated vertex: the nearest one that maps to it
    dist = np.linalg.norm(sub_points - dec_points[np.clip(mapping, 0, None)], axis=1)
    dist[mapping < 0] = np.inf
    order = np.lexsort((dist, mapping))
    first = np.ones(len(order), dtype=bool)
    first[1:] = mapping[order][1:] != mapping[order][:-1]
    rep = np.full(len(dec_points), -1, dtype=np.int64)
    chosen = order[first & (mapping[order] >= 0)]
    rep[mapping[chosen]] = chosen
    out = used[rep[dec_faces]]
    good = (out[:, 0] != out[:, 1]) & (out[:, 1] != out[:, 2]) & (out[:, 0] != out[:, 2])
    return torch.as_tensor(out[good], dtype=torch.int64, device=triangles.device)


class ChipRenderer:
    """Draw a model's visible head into dlib-aligned chips.

    Args:
        model: a :class:`MorphableModel` with iBUG-68 landmarks (at least 8 of the chip template's 33
            points; missing ones are left out of the alignment, e.g. for SFM). Models whose regions include :data:`VISIBLE_REGIONS` are drawn without their mouth
            interior; others are drawn whole.
        size: chip side (px); 150 for dlib's network.
        max_triangles: meshes with more drawn triangles are decimated (:func:`decimate_to_subset`) to about
            this many; a 150 px chip shows ~12k face pixels, so 8k triangles lose nothing visible and
            rasterise several times faster than ICT's 30k. ``None`` keeps every triangle.
    Attributes:
        vertex_ids: ``(Vr,)`` model vertices drawn; ``triangles``: ``(Fr, 3)`` indices into them.
        eye_colors: ``(Vr, 3)`` fixed albedo of eye vertices, ``eye_mask`` ``(Vr,)`` which vertices use it.
    """

    def __init__(self, model: MorphableModel, size: int = CHIP, max_triangles: int | None = 8000):
        dev = model.mean.device
        if all(r in model.regions for r in VISIBLE_REGIONS):
            keep = torch.zeros(model.n_vertices, dtype=torch.bool, device=dev)
            for r in VISIBLE_REGIONS:
                keep[model.regions[r]] = True
        else:
            keep = torch.ones(model.n_vertices, dtype=torch.bool, device=dev)
        tri = model.triangles
        tri = tri[keep[tri].all(1)]
        if max_triangles is not None and len(tri) > max_triangles:
            tri = decimate_to_subset(model.mean, tri, max_triangles)
        used = torch.zeros_like(keep)
        used[tri.reshape(-1)] = True
        self.vertex_ids = used.nonzero().squeeze(1)
        local = torch.full((model.n_vertices,), -1, dtype=torch.int64, device=dev)
        local[self.vertex_ids] = torch.arange(len(self.vertex_ids), device=dev)
        self.triangles = local[tri]
        self.eye_mask = torch.zeros(len(self.vertex_ids), dtype=torch.bool, device=dev)
        self.eye_colors = torch.zeros(len(self.vertex_ids), 3, device=dev)
        for region, rgb in EYE_REGIONS.items():
            if region in model.regions:
                ids = local[model.regions[region]]
                ids = ids[ids >= 0]
                self.eye_mask[ids] = True
                self.eye_colors[ids] = torch.tensor(rgb, device=dev)
        ids, template = chip_template(68, size, CHIP_PADDING)
        defined = model.landmark_mask.cpu()[ids]
        if int(defined.sum()) < 8:
            raise ValueError(f"ChipRenderer: model {model.name!r} defines only {int(defined.sum())} of the chip "
                             "template's 33 landmarks (need at least 8)")
        # a model missing some template points (SFM) is aligned on the ones it has
        self.template_ids = [i for i, ok in zip(ids, defined.tolist()) if ok]
        self.template = template[defined].to(dev)
        self.model = model
        self.size = size
        # hard coverage: Genova's deferred renderer has no silhouette gradients either, and it is cheaper
        self.renderer = Renderer(self.triangles, (size, size), soft_silhouette=False)

    def camera(self, vertices: Tensor, rotation: Tensor) -> ScaledOrthographic:
        """The chip camera for full-model vertices ``(B, V, 3)`` seen under rotation ``(B, 3, 3)``."""
        lm = self.model.landmarks(vertices)[:, self.template_ids]  # (B, 33, 3) model space
        view = lm @ rotation.transpose(1, 2)
        q = torch.stack([view[..., 0], -view[..., 1]], -1)  # F Π R X, y down
        Mt = similarity_transform(q, self.template.to(q).expand(q.shape[0], -1, -1))  # (B, 2, 3) = [a −b; b a | t]
        a, b, t = Mt[:, 0, 0], Mt[:, 1, 0], Mt[:, :, 2]
        scale = torch.sqrt(a * a + b * b)
        phi = torch.atan2(b, a)
        zero = torch.zeros_like(phi)
        rz = axis_angle_to_matrix(torch.stack([zero, zero, -phi], -1))
        return ScaledOrthographic(scale, matrix_to_axis_angle(rz @ rotation), t)

    def albedo(self, skin: Tensor, eyes: Tensor | None = None) -> Tensor:
        """Per-drawn-vertex albedo ``(B, Vr, 3)`` from a skin albedo ``(B, Vr, 3)``: eyes get their colours
        (in the faces where ``eyes`` ``(B,)`` bool is true; default all), else they stay skin-coloured, as on
        an untextured scan or a statue."""
        coloured = self.eye_mask[None, :, None] if eyes is None else self.eye_mask[None, :, None] & eyes[:, None, None]
        return torch.where(coloured, self.eye_colors.to(skin), skin)

    def __call__(self, vertices: Tensor, rotation: Tensor, skin_albedo: Tensor, lighting: Lighting,
                 background: Tensor, eyes: Tensor | None = None) -> Tensor:
        """Chips ``(B, S, S, 3)`` in [0, 1].

        Args:
            vertices: ``(B, V, 3)`` full-model vertices (mm).
            rotation: ``(B, 3, 3)`` head pose (model → view).
            skin_albedo: ``(B, Vr, 3)`` albedo of the drawn vertices (linear RGB).
            lighting: :class:`Lighting`; background: ``(B, S, S, 3)``.
            eyes: ``(B,)`` bool, which faces get coloured eyes (default all; see :meth:`albedo`).
        """
        camera = self.camera(vertices, rotation)
        albedo = self.albedo(skin_albedo, eyes)
        lights = PointLights(lighting.positions, lighting.colors, ambient=lighting.ambient,
                             specular=lighting.specular * albedo.mean(-1, keepdim=True).mean(1, keepdim=True) * 2,
                             shininess=20.0)
        out = self.renderer(vertices[:, self.vertex_ids], camera, colors=albedo, lights=lights, background=background)
        return out.image.clamp(0, 1)


