"""Synthetic faces with known geometry, albedo, light and pose: rendered images and their landmarks.

Used by the photometric benchmark and tests (ground truth for inverse rendering), and as a training-data
generator. Everything is drawn from a ``numpy.random.Generator`` so a seed reproduces a set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
from morphable.models.base import MorphableModel
from morphable.render.renderer import Renderer
from morphable.render.shading import sh_directional


def random_albedo(points: Tensor, mirror: Tensor | None, rng: np.random.Generator) -> Tensor:
    """Skin-like random per-vertex albedo ``(V, 3)``: a random base skin colour × (1 + a few random
    low-frequency waves over the surface (wavelengths 25–60 mm), made left-right symmetric through
    ``mirror`` as facial albedo largely is, + independent per-vertex noise (σ = 2 %, not symmetric))."""
    base = torch.tensor([0.75, 0.55, 0.45]) * rng.uniform(0.7, 1.1)
    field = torch.zeros(points.shape[0], 3)
    for _ in range(4):
        k = torch.as_tensor(rng.normal(size=3), dtype=torch.float32) / rng.uniform(25, 60)
        phase = rng.uniform(0, 2 * math.pi)
        amp = torch.as_tensor(rng.uniform(0.03, 0.08, size=3), dtype=torch.float32)
        field += amp * torch.cos(points.float() @ k + phase)[:, None]
    if mirror is not None:
        paired = mirror >= 0
        field[paired] = 0.5 * (field[paired] + field[mirror[paired]])
    noise = torch.as_tensor(rng.normal(scale=0.02, size=field.shape), dtype=torch.float32)
    return (base * (1 + field + noise)).clamp(0.05, 1.0)


def random_light(rng: np.random.Generator) -> Tensor:
    """SH light ``(1, 9, 3)``: ambient + one directional light from the frontal hemisphere, slightly coloured."""
    d = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.5, 0.7), 1.0])
    d = torch.as_tensor(d / np.linalg.norm(d), dtype=torch.float32)[None]
    irr = torch.as_tensor(rng.uniform(1.2, 2.2) * rng.uniform(0.9, 1.1, size=3), dtype=torch.float32)[None]
    return sh_directional(d, irr, ambient=rng.uniform(0.35, 0.6)).float()


@dataclass(frozen=True)
class SyntheticFace:
    """One rendered synthetic face and its ground truth.

    Attributes:
        image: ``(1, S, S, 3)`` rendering + Gaussian noise, in [0, 1].
        landmarks: ``(1, 68, 2)`` projected model landmarks + noise (px; NaN where the model has none).
        identity, expression: the coefficients; vertices: ``(1, V, 3)`` mm.
        albedo: ``(1, V, 3)``; light: ``(1, 9, 3)``; camera: the :class:`ScaledOrthographic` camera.
    """

    image: Tensor
    landmarks: Tensor
    identity: Tensor
    expression: Tensor
    vertices: Tensor
    albedo: Tensor
    light: Tensor
    camera: ScaledOrthographic


def random_expression(model: MorphableModel, rng: np.random.Generator, active: int = 3,
                      max_weight: float = 0.4) -> Tensor:
    """``(1, E)`` expression coefficients with ``active`` random components at weights uniform in
    [0, ``max_weight``] (blendshape weights; zeros ``(1, 0)`` for a model without expressions)."""
    expr = torch.zeros(1, model.n_expression)
    if model.n_expression:
        chosen = rng.choice(model.n_expression, size=min(active, model.n_expression), replace=False)
        expr[0, chosen] = torch.as_tensor(rng.uniform(0, max_weight, size=len(chosen)), dtype=torch.float32)
    return expr


def synthetic_face(model: MorphableModel, rng: np.random.Generator, *, size: int = 224, identity_scale: float = 1.0,
                   max_yaw_deg: float = 30.0, image_noise: float = 0.01, landmark_noise_px: float = 1.0,
                   identity: Tensor | None = None) -> SyntheticFace:
    """Draw and render a face: identity ~ N(0, identity_scale²) (or the given one), three random active
    expression components (blendshape weights in [0, 0.4]), :func:`random_albedo`, :func:`random_light`,
    yaw/pitch/roll uniform in ±max_yaw/±15°/±10°, the face filling ~80 % of a ``size``² image over a random
    uniform background."""
    ident = (torch.as_tensor(rng.normal(size=(1, model.n_identity)) * identity_scale, dtype=torch.float32)
             if identity is None else identity)
    expr = random_expression(model, rng)
    verts = model(identity=ident, expression=expr if model.n_expression else None).vertices
    ypr = torch.tensor([[math.radians(rng.uniform(-max_yaw_deg, max_yaw_deg)), math.radians(rng.uniform(-15, 15)),
                         math.radians(rng.uniform(-10, 10))]])
    width = float(model.mean[:, 0].max() - model.mean[:, 0].min())
    camera = ScaledOrthographic(torch.tensor([rng.uniform(0.75, 0.9) * size / width]),
                                matrix_to_axis_angle(euler_to_matrix(ypr)),
                                torch.tensor([[size / 2 + rng.uniform(-6, 6), size / 2 + rng.uniform(-6, 6)]]))
    albedo = random_albedo(model.mean, model.symmetry, rng)[None]
    light = random_light(rng)
    background = torch.as_tensor(rng.uniform(0.1, 0.9, size=(1, 3)), dtype=torch.float32)
    render = Renderer(model.triangles, (size, size))(verts, camera, colors=albedo, sh=light, background=background)
    image = (render.image + torch.as_tensor(rng.normal(scale=image_noise, size=render.image.shape),
                                            dtype=torch.float32)).clamp(0, 1)
    lmk = camera.project(model.landmarks(verts))
    lmk = lmk + torch.as_tensor(rng.normal(scale=landmark_noise_px, size=lmk.shape), dtype=torch.float32)
    lmk[:, ~model.landmark_mask] = float("nan")
    return SyntheticFace(image, lmk, ident, expr, verts, albedo, light, camera)


class ShapeWarp:
    """Faces off the model's span: random smooth displacement fields, and the model coefficients that
    best explain them (an augmentation beyond Genova et al., who render model faces only).

    A regressor trained on model samples alone learns to read cues that only model samples have; real
    faces are not in any model's span. Here a face is ``model(identity) + d`` with ``d`` a sum of
    ``waves`` random plane waves over the surface (wavelengths ``wavelength_mm``, random 3D directions,
    amplitudes U(0, ``amplitude_mm``) each, averaged with its mirror image so the field is left-right
    symmetric as faces largely are), and the training target is the least-squares model approximation of
    the drawn face on ``region``: ``identity + P d``, ``P = (EᵀE + εI)⁻¹ Eᵀ`` with ``E`` the model's
    identity basis on the region's vertices ``(3V_r, K)`` and ε = 1e-3 (standardised units).

    Args:
        model: a linear :class:`MorphableModel`; region: the vertex set the target is fitted on ("face"
            where the model has it, else every vertex).
    """

    def __init__(self, model: MorphableModel, region: str = "face", ridge: float = 1e-3):
        self.points = model.mean.detach().double()
        self.mirror = model.symmetry
        self.ids = model.region_ids(region)
        basis = model.identity_basis.detach()[self.ids].permute(2, 0, 1)  # (K, V_r, 3)
        E = basis.reshape(model.n_identity, -1).double()  # rows: coefficient k's displacement
        self.projection = torch.linalg.solve(E @ E.T + ridge * torch.eye(len(E), dtype=torch.float64), E)  # (K, 3V_r)

    def displacement(self, batch: int, generator: torch.Generator, amplitude_mm: float, *, waves: int = 5,
                     wavelength_mm: tuple[float, float] = (40.0, 120.0)) -> Tensor:
        """``(B, V, 3)`` mm: the random symmetric smooth fields described in the class docstring."""
        P = self.points
        B, dt = batch, torch.float64
        lo, hi = wavelength_mm
        k = torch.randn(B, waves, 3, generator=generator, dtype=dt)
        length = lo + (hi - lo) * torch.rand(B, waves, 1, generator=generator, dtype=dt)
        k = k / k.norm(dim=-1, keepdim=True) * (2 * math.pi / length)
        phase = 2 * math.pi * torch.rand(B, waves, generator=generator, dtype=dt)
        direction = torch.randn(B, waves, 3, generator=generator, dtype=dt)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        amplitude = amplitude_mm * torch.rand(B, waves, 1, generator=generator, dtype=dt)
        waves_at = torch.cos(torch.einsum("vc,bwc->bwv", P, k) + phase[..., None])  # (B, W, V)
        d = torch.einsum("bwv,bwc->bvc", waves_at, amplitude * direction)
        if self.mirror is not None:
            paired = self.mirror >= 0
            mirrored = d[:, self.mirror.clamp_min(0)] * torch.tensor([-1.0, 1.0, 1.0], dtype=dt)
            d = torch.where(paired[None, :, None], 0.5 * (d + mirrored), d)
        return d

    def coefficients(self, displacement: Tensor) -> Tensor:
        """``(B, V, 3)`` displacements → ``(B, K)``: their least-squares identity coefficients on the region."""
        return displacement[:, self.ids].reshape(len(displacement), -1).double() @ self.projection.T


@dataclass(frozen=True)
class SyntheticChips:
    """A batch of Genova-style synthetic faces rendered straight into dlib-aligned chips.

    Attributes:
        chips: ``(B, 150, 150, 3)`` in [0, 1]; identity: ``(B, K)``; albedo: ``(B, A)`` standardised
        low-frequency albedo coefficients (:class:`~morphable.fitting.albedo.LowFrequencyAlbedo`);
        expression: ``(B, Ke)``; rotation: ``(B, 3, 3)``; landmarks: ``(B, 68, 2)`` chip px (exact).
    """

    chips: Tensor
    identity: Tensor
    albedo: Tensor
    expression: Tensor
    rotation: Tensor
    landmarks: Tensor


def draw_synthetic_chips(renderer, albedo_space, batch: int, generator: torch.Generator, *,
                         max_yaw_deg: float = 40.0, expression_scale: float = 0.3,
                         image_noise: float = 0.01, plain_eyes: float = 0.0, shape_warp: ShapeWarp | None = None,
                         shape_warp_mm: float = 0.0) -> SyntheticChips:
    """Genova et al.'s synthetic faces (Sec. 3.4, stage 1): identity and albedo ~ N(0, I), a random pose
    (yaw ±``max_yaw_deg``, pitch ±15°, roll ±10°), two coloured Phong point lights, a random background;
    as an augmentation beyond the paper (which renders neutral faces), a mild random expression (three
    blendshapes with weights U(0, ``expression_scale``), or PCA coefficients N(0, ``expression_scale``²)),
    with probability ``plain_eyes``, skin-coloured eyes (the look of untextured scans and statues), and with
    ``shape_warp_mm > 0`` faces off the model's span (:class:`ShapeWarp`; ``identity`` is then the model's
    least-squares approximation of the drawn neutral face). Deterministic given ``generator``.

    Args:
        renderer: a :class:`~morphable.train.chip_render.ChipRenderer`.
        albedo_space: a :class:`~morphable.fitting.albedo.LowFrequencyAlbedo` on the drawn vertices.
    """
    from morphable.train.chip_render import random_background, random_lighting, random_rotation

    model = renderer.model
    identity = torch.randn(batch, model.n_identity, generator=generator)
    albedo = torch.randn(batch, albedo_space.size, generator=generator)
    expression = torch.zeros(batch, model.n_expression)
    if model.n_expression:
        if model.expression_kind == "blendshapes":
            for b in range(batch):
                active = torch.randperm(model.n_expression, generator=generator)[:3]
                expression[b, active] = expression_scale * torch.rand(len(active), generator=generator)
        else:
            expression = expression_scale * torch.randn(batch, model.n_expression, generator=generator)
    rotation = random_rotation(batch, generator, max_yaw_deg=max_yaw_deg)
    lighting = random_lighting(batch, generator)
    background = random_background(batch, generator, size=renderer.size)
    eyes = torch.rand(batch, generator=generator) >= plain_eyes if plain_eyes > 0 else None
    with torch.no_grad():
        vertices = model(identity=identity, expression=expression if model.n_expression else None).vertices
        if shape_warp_mm > 0:
            warper = shape_warp if shape_warp is not None else ShapeWarp(model)
            warp = warper.displacement(batch, generator, shape_warp_mm)
            vertices = vertices + warp.to(vertices)
            identity = identity + warper.coefficients(warp).to(identity)
        chips = renderer(vertices, rotation, albedo_space(albedo), lighting, background, eyes)
        landmarks = renderer.camera(vertices, rotation).project(model.landmarks(vertices))
    chips = (chips + image_noise * torch.randn(chips.shape, generator=generator)).clamp(0, 1)
    return SyntheticChips(chips, identity, albedo, expression, rotation, landmarks)
