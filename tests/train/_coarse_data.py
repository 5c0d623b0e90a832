"""Synthetic stand-ins for photometric fits of photos (no detector, no optimisation): a known face rendered
into a "photo", and the record :func:`morphable.train.inverse_rendered.fit_photo` would return for it."""
from __future__ import annotations

import numpy as np
import torch

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
from morphable.nets.coarse import albedo_basis
from morphable.render.renderer import Renderer
from morphable.train.inverse_rendered import region_triangles
from morphable.train.synthetic import random_light


def striped_albedo(points: torch.Tensor, period_mm: float = 18.0) -> torch.Tensor:
    """``(V, 3)`` high-contrast albedo (stripes across x and y): a misplaced pixel shows."""
    s = torch.sin(2 * torch.pi * points[:, 0] / period_mm) * torch.sin(2 * torch.pi * points[:, 1] / period_mm)
    return torch.stack([0.5 + 0.35 * s, 0.4 + 0.3 * s, 0.35 + 0.25 * s], -1)


def synthetic_fit(model, seed: int, size: int = 160) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """A fit record (identity, expression, albedo on the fit's region, SH light, camera, landmarks) and the
    ``(size, size, 3)`` uint8 photo it renders to over a smooth random background."""
    g = torch.Generator().manual_seed(seed)
    _, region = albedo_basis(model)
    identity = 0.7 * torch.randn(model.n_identity, generator=g)
    expression = 0.3 * torch.rand(model.n_expression, generator=g)
    verts = model(identity=identity[None], expression=expression[None]).vertices
    albedo = striped_albedo(verts[0, region])
    light = random_light(np.random.default_rng(seed))[0]
    ypr = torch.tensor([0.3, -0.1, 0.05]) * (2 * torch.rand(3, generator=g) - 1)
    camera = ScaledOrthographic(torch.tensor([0.55 * size / 160]), matrix_to_axis_angle(euler_to_matrix(ypr)[None]),
                                torch.tensor([[size / 2 + 3.0, size / 2 + 5.0]]))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    background = torch.stack([0.3 + 0.4 * xx, 0.5 - 0.2 * yy, 0.4 + 0.2 * xx * yy], -1)[None]
    renderer = Renderer(region_triangles(model, region), (size, size))
    with torch.no_grad():
        image = renderer(verts[:, region], camera, colors=albedo[None], sh=light[None], background=background).image
    photo = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    fit = {"identity": identity, "expression": expression, "albedo": albedo, "region_vertices": region,
           "light": light, "scale": camera.scale, "rotation": camera.rotation[0],
           "translation": camera.translation[0], "landmarks": camera.project(model.landmarks(verts))[0],
           "photometric": torch.tensor([0.0])}
    return fit, photo
