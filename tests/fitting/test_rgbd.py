"""RGB-D fitting (morphable/fitting/rgbd.py) on synthetic RGB-D: our renderer's depth buffer of a known face
seen by a pinhole camera, with sensor-like noise (σ 0.5 mm) and holes (scattered and a missing block)."""
from __future__ import annotations

import functools

import numpy as np
import torch

from morphable.fitting.landmarks import fit_landmarks
from morphable.fitting.rgbd import back_project, depth_normals, fit_rgbd
from morphable.geometry.align import umeyama
from morphable.geometry.camera import Perspective
from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
from morphable.render.renderer import Renderer
from tests.fitting._synthetic import angle_error_deg, face_model

SIZE, FOCAL = 240, 520.0
CENTRE = ((SIZE - 1) / 2, (SIZE - 1) / 2)


@functools.lru_cache(maxsize=None)
def scene(seed: int = 5):
    """Noisy depth ``(S, S)`` mm with holes, noisy landmarks ``(68, 2)``, the camera and the true coefficients."""
    model = face_model()
    g = torch.Generator().manual_seed(seed)
    identity = torch.randn(model.n_identity, generator=g, dtype=torch.float64)
    expression = torch.tensor([0.4, 0.1, 0.6], dtype=torch.float64)
    R = euler_to_matrix(torch.tensor([[20.0, -8.0, 5.0]], dtype=torch.float64).deg2rad())
    cam = Perspective(torch.tensor([FOCAL], dtype=torch.float64), torch.tensor([CENTRE], dtype=torch.float64),
                      matrix_to_axis_angle(R), torch.tensor([[4.0, -6.0, -600.0]], dtype=torch.float64))
    vertices = model(identity=identity[None], expression=expression[None]).vertices
    depth = Renderer.from_model(model, (SIZE, SIZE), soft_silhouette=False)(vertices, cam).depth[0].clone()
    depth += 0.5 * torch.randn(depth.shape, generator=g, dtype=torch.float64)
    depth[torch.rand(depth.shape, generator=g) < 0.15] = float("nan")  # dropped pixels
    depth[100:130, 60:95] = 0.0  # a missing block (specular or occluded)
    landmarks = cam.project(vertices[:, model.landmark_indices[:, 0]])[0]
    landmarks = landmarks + 0.5 * torch.randn(landmarks.shape, generator=g, dtype=torch.float64)
    landmarks[:17] = float("nan")  # the synthetic model's landmarks are not on its outline
    return depth, landmarks, cam, identity, expression


def shape_error_mm(identity: torch.Tensor, expression: torch.Tensor, truth: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Mean vertex distance (mm) over the front half of the face after a similarity alignment (the NoW / MICC
    protocols' alignment: the RGB-only fit's scale is not metric), fitted vs true shape."""
    model = face_model()
    front = (model.mean[:, 2] > 0).numpy()
    a = model(identity=identity[None], expression=expression[None]).vertices[0].numpy()[front]
    b = model(identity=truth[0][None], expression=truth[1][None]).vertices[0].numpy()[front]
    return float(np.linalg.norm(umeyama(a, b).apply(a) - b, axis=1).mean())


def test_back_projection_and_normals_of_a_plane():
    # a plane z = −500 − 0.2 x seen head-on: back-projection recovers it, normals are its normal
    f64 = torch.float64
    v, u = torch.meshgrid(torch.arange(50.0, dtype=f64), torch.arange(60.0, dtype=f64), indexing="ij")
    f, c = 400.0, (29.5, 24.5)
    # depth d along the axis at pixel u: x = (u − c) d / f, d = 500 + 0.2 x  ⇒  d = 500 / (1 − 0.2 (u − c) / f)
    depth = 500 / (1 - 0.2 * (u - c[0]) / f)
    points = back_project(depth, f, c)
    assert torch.allclose(points[..., 2], -500 - 0.2 * points[..., 0], atol=1e-9)
    n = depth_normals(points)
    expected = torch.tensor([0.2, 0.0, 1.0], dtype=torch.float64) / (1.04 ** 0.5)  # ∇(z + 0.2 x), towards the camera
    assert torch.allclose(n[1:-1, 1:-1], expected.expand(48, 58, 3), atol=1e-9)
    assert torch.isnan(n[0]).all() and torch.isnan(n[:, -1]).all()


def test_depth_fit_recovers_the_shape_where_landmarks_alone_cannot():
    model = face_model()
    depth, landmarks, cam, identity, expression = scene()
    fit = fit_rgbd(model, depth, FOCAL, CENTRE, landmarks)
    rgb_only = fit_landmarks(model, landmarks[None], contour=False)
    err_rgbd = shape_error_mm(fit.identity, fit.expression, (identity, expression))
    err_rgb = shape_error_mm(rgb_only.identity[0], rgb_only.expression[0], (identity, expression))
    assert err_rgbd <= 0.5, (err_rgbd, err_rgb)
    assert err_rgbd < 0.5 * err_rgb, (err_rgbd, err_rgb)
    assert angle_error_deg(fit.camera.rotation_matrix, cam.rotation_matrix)[0] < 1.0
    assert (fit.camera.translation - cam.translation).norm() < 2.0
    assert (fit.expression - expression).abs().max() < 0.1
    assert 0.2 < fit.rms_geo_mm < 0.8  # about the sensor noise (0.5 mm) is what is left
    assert fit.pairs > 150  # of the ~390 front vertices, less the holes
