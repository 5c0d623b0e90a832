"""The 3DMM-STN gradient-descent demo on a synthetic photo: the SFM with 8 identity components rendered with
a known θ, a symmetric texture and SH light; θ recovered from noisy landmarks + prior + symmetry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from morphable.fitting.stn import fit_stn, initial_theta, mean_flattened
from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle
from morphable.models.resample import model_uv, uv_grid
from morphable.render.stn import SpatialTransformer3DMM
from morphable.render.renderer import Renderer
from tests.conftest import data_file, torch_threads
from tests.render.test_stn import symmetric_texture

N_SHAPE = 8


def rotation_error_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    R = axis_angle_to_matrix(a) @ axis_angle_to_matrix(b).transpose(-1, -2)
    return math.degrees(math.acos(((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1).item()))


@pytest.fixture(scope="module")
def scene():
    import morphable

    data_file("eos/share/sfm_shape_3448.bin")
    model = morphable.load_model("sfm")
    uv = model_uv(model)
    g = torch.Generator().manual_seed(0)
    alpha = torch.zeros(1, model.identity_basis.shape[-1])
    alpha[:, :N_SHAPE] = torch.randn(1, N_SHAPE, generator=g) * 1.2
    angles = torch.tensor([[math.radians(25), math.radians(-8), math.radians(5)]])  # yaw, pitch, roll
    cam = ScaledOrthographic(torch.tensor([0.6]), matrix_to_axis_angle(euler_to_matrix(angles)),
                             torch.tensor([[64.0, 60.0]]))
    verts = model(identity=alpha).vertices
    sh = torch.zeros(1, 9, 3)
    sh[0, 0], sh[0, 2] = 0.9, 0.3  # ambient + light from above
    image = Renderer(model.triangles, (128, 128), uv=uv.float())(verts, cam, texture=symmetric_texture(128), sh=sh,
                                                                background=0.2).image.detach()
    landmarks = cam.project(model.landmarks(verts)) + torch.randn(1, 68, 2, generator=g) * 0.5
    stn = SpatialTransformer3DMM(model, uv_grid(uv, model.triangles, (64, 64)))
    return stn, image, landmarks, cam, alpha[:, :N_SHAPE]


@pytest.fixture
def one_thread():
    """Many small ops per step: one thread is ~20× faster than two on a busy two-core machine (measured)."""
    with torch_threads(1):
        yield


def test_gradient_descent_recovers_theta(scene, one_thread):
    stn, image, landmarks, cam, alpha = scene
    init = initial_theta(stn, landmarks, N_SHAPE)
    fit = fit_stn(stn, image, landmarks, n_shape=N_SHAPE, iterations=60, init=init)
    rot0, rot = rotation_error_deg(init.rotation, cam.rotation), rotation_error_deg(fit.theta.rotation, cam.rotation)
    corr0 = np.corrcoef(init.alpha[0].numpy(), alpha[0].numpy())[0, 1]
    corr = np.corrcoef(fit.theta.alpha[0].numpy(), alpha[0].numpy())[0, 1]
    print(f"stn fit: rotation error {rot0:.2f} -> {rot:.2f} deg, alpha corr {corr0:.3f} -> {corr:.3f}, "
          f"scale {fit.theta.log_scale.exp().item():.4f} (true 0.6), energy {fit.history[0]['total']:.3f} -> "
          f"{fit.history[-1]['total']:.3f}")
    assert rot < 2.0 and corr > 0.9
    assert abs(fit.theta.log_scale.exp().item() - 0.6) < 0.02
    torch.testing.assert_close(fit.theta.translation, cam.translation, atol=1.5, rtol=0)
    assert fit.history[-1]["total"] < fit.history[0]["total"]
    assert fit.output.texture.shape == (1, 64, 64, 3)


def test_gradient_descent_with_expression_keeps_weights_in_range(scene, one_thread):
    """θ with the SFM's blendshape weights, started from the linear fit with expression: the weights stay in
    [0, 1] (projected) and near the neutral truth, the pose is still recovered, and the energy falls."""
    stn, image, landmarks, cam, _ = scene
    init = initial_theta(stn, landmarks, N_SHAPE, expression=True)
    assert init.expression.shape == (1, stn.model.n_expression)
    fit = fit_stn(stn, image, landmarks, n_shape=N_SHAPE, iterations=30, init=init)
    e = fit.theta.expression
    assert e.shape == (1, stn.model.n_expression) and float(e.min()) >= 0 and float(e.max()) <= 1
    assert float(e.max()) < 0.3  # the face was rendered neutral
    assert rotation_error_deg(fit.theta.rotation, cam.rotation) < 3.0
    assert fit.history[-1]["total"] < fit.history[0]["total"]


def test_mean_flattened_weights_by_visibility():
    tex = torch.stack([torch.full((2, 2, 3), 0.2), torch.full((2, 2, 3), 0.8)])
    mask = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [1, 0]]], dtype=torch.bool)
    mean, count = mean_flattened(tex, mask)
    torch.testing.assert_close(mean[..., 0], torch.tensor([[0.5, 0.2], [0.8, 0.0]]))
    torch.testing.assert_close(count, torch.tensor([[2.0, 1.0], [1.0, 0.0]]))
