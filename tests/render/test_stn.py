"""The 3DMM spatial transformer's layers and chain (``render/stn.py``): the layer chain against the camera
module, the sampler against a loop reference and finite differences, and on the SFM: landmarks vs the camera
module, the visibility layer under yaw, and the flattened texture of a rendered textured face against the
texture it was rendered with."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
from morphable.models.resample import model_uv, uv_grid
from morphable.render.renderer import Renderer
from morphable.render.stn import (AxisAngleToRotation, GridLayer, LogScale, Masking, OrthographicProjection,
                                  Rotate3D, SpatialTransformer3DMM, Theta, Translate2D, bilinear_sample)
from tests.conftest import data_file

SIZE = 64  # flattened texture side


def bilinear_sample_reference(image: Tensor, grid: Tensor) -> Tensor:
    """Slow, obvious loop version of :func:`bilinear_sample` (the reference the fast sampler is checked against)."""
    B, H, W, C = image.shape
    out = torch.zeros(*grid.shape[:3], C, dtype=image.dtype)
    for b in range(B):
        for i in range(grid.shape[1]):
            for j in range(grid.shape[2]):
                x, y = grid[b, i, j].tolist()
                x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
                for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                    for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                        if 0 <= xx < W and 0 <= yy < H:
                            out[b, i, j] += wx * wy * image[b, yy, xx]
    return out


def test_layer_chain_equals_scaled_orthographic_camera():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, 50, 3, generator=g, dtype=torch.float64) * 50
    r, t, log_s = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(2, 2, generator=g, dtype=torch.float64) * 100, torch.randn(2, generator=g, dtype=torch.float64) * 0.3
    R = AxisAngleToRotation()(r)
    Y = Translate2D()(LogScale()(OrthographicProjection()(Rotate3D()(R, X)), log_s), t)
    cam = ScaledOrthographic(log_s.exp(), r, t)
    torch.testing.assert_close(Y, cam.project(X))


def test_bilinear_sampler_matches_reference_inside_and_outside():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 7, 9, 3, generator=g, dtype=torch.float64)
    grid = torch.rand(2, 4, 5, 2, generator=g, dtype=torch.float64) * torch.tensor([11.0, 9.0]) - 1  # some outside
    torch.testing.assert_close(bilinear_sample(image, grid), bilinear_sample_reference(image, grid))
    # integer positions return pixels exactly (pixel centres at integer coordinates)
    at = torch.tensor([[[[3.0, 2.0], [0.0, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(bilinear_sample(image[:1], at)[0, 0], image[0, [2, 0], [3, 0]])


def test_sampler_gradients():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(1, 5, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(1, 3, 3, 2, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    assert torch.autograd.gradcheck(bilinear_sample, (image, grid))


def test_grid_and_masking_layers():
    pts = torch.arange(24.0).reshape(1, 12, 2)
    grid = GridLayer((3, 4))(pts)
    assert grid.shape == (1, 3, 4, 2) and grid[0, 1, 0].tolist() == [8.0, 9.0]
    tex = torch.ones(1, 3, 4, 2)
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    out = Masking()(tex, mask)
    assert out.sum().item() == 2.0


@pytest.fixture(scope="module")
def sfm():
    import morphable

    data_file("eos/share/sfm_shape_3448.bin")
    model = morphable.load_model("sfm")
    uv = model_uv(model)
    return model, uv, SpatialTransformer3DMM(model, uv_grid(uv, model.triangles, (SIZE, SIZE)))


def pose(yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> torch.Tensor:
    angles = torch.tensor([[math.radians(yaw_deg), math.radians(pitch_deg), math.radians(roll_deg)]])
    return matrix_to_axis_angle(euler_to_matrix(angles))


def symmetric_texture(n: int) -> torch.Tensor:
    """A smooth, left-right symmetric RGB texture ``(1, n, n, 3)`` over the UV square (row 0 = v = 1)."""
    v, u = torch.meshgrid(1 - torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    a = (u - 0.5).abs()
    return torch.stack([0.5 + 0.4 * torch.sin(12 * a) * torch.cos(9 * v), 0.5 + 0.4 * torch.cos(7 * a + 3 * v),
                        0.2 + 0.6 * v], -1)[None]


def test_transformer_landmarks_equal_camera_projection(sfm):
    model, _, stn = sfm
    g = torch.Generator().manual_seed(0)
    alpha = torch.randn(2, 6, generator=g)
    theta = Theta(torch.cat([pose(30, 10, -5), pose(-50, -5, 8)]), torch.tensor([[40.0, 30.0], [20.0, 25.0]]),
                  torch.tensor([-1.2, -0.8]), alpha)
    out = stn(torch.rand(2, 60, 80, 3, generator=g), theta)
    cam = ScaledOrthographic(theta.log_scale.exp(), theta.rotation, theta.translation)
    expected = cam.project(model.landmarks(model(identity=alpha).vertices))
    torch.testing.assert_close(out.landmarks, expected, atol=1e-4, rtol=0)
    assert out.texture.shape == (2, SIZE, SIZE, 3) and out.mask.shape == (2, SIZE, SIZE)


def test_expression_in_theta_moves_the_landmarks_like_the_model(sfm):
    """θ with the model's expression weights: the transformer's landmarks are the camera projection of the
    expressive face (not the neutral one), and ``theta[b]`` selects face b."""
    model, _, stn = sfm
    g = torch.Generator().manual_seed(1)
    alpha = torch.randn(2, 6, generator=g)
    expression = torch.zeros(2, model.n_expression)
    expression[0, :3] = torch.tensor([0.6, 0.3, 0.8])
    expression[1, 3:] = 0.5
    theta = Theta(torch.cat([pose(20, 5, 0), pose(-30, 0, 5)]), torch.tensor([[40.0, 30.0], [20.0, 25.0]]),
                  torch.tensor([-0.9, -0.8]), alpha, expression)
    out = stn(torch.rand(2, 60, 80, 3, generator=g), theta)
    cam = ScaledOrthographic(theta.log_scale.exp(), theta.rotation, theta.translation)
    expected = cam.project(model.landmarks(model(identity=alpha, expression=expression).vertices))
    neutral = cam.project(model.landmarks(model(identity=alpha).vertices))
    seen = model.landmark_mask
    torch.testing.assert_close(out.landmarks[:, seen], expected[:, seen], atol=1e-4, rtol=0)
    assert (out.landmarks[:, seen] - neutral[:, seen]).norm(dim=-1).amax(-1).min() > 0.3  # px, both faces
    second = stn(torch.rand(1, 60, 80, 3, generator=g), theta[1])
    torch.testing.assert_close(second.landmarks, out.landmarks[1:], atol=1e-5, rtol=0)


def test_points_sampled_off_the_photo_are_masked(sfm):
    """A frontal face whose left half (+x, u > 0.5) hangs off the photo's right edge: those texels are masked."""
    _, _, stn = sfm
    theta = Theta(pose(0), torch.tensor([[99.0, 50.0]]), torch.tensor([math.log(0.5)]), torch.zeros(1, 4))
    out = stn(torch.ones(1, 100, 100, 3), theta)
    inside = (out.grid[0, ..., 0] <= 99) & stn.grid_def.valid.reshape(SIZE, SIZE)
    assert inside[:, : SIZE // 2 - 1].float().mean() > 0.95 and not inside[:, SIZE // 2 + 1:].any()
    assert not out.mask[0][~inside].any() and out.mask[0][inside].float().mean() > 0.8
    assert (out.texture[0][out.mask[0]] > 1 - 1e-5).all()  # every unmasked texel sampled the (all-white) photo


def _visible_halves(stn, yaw: float) -> tuple[torch.Tensor, torch.Tensor]:
    mask = stn.visibility(stn.to_rotation(pose(yaw)), torch.zeros(1, 4))[0]
    return mask, stn.grid_def.valid.reshape(SIZE, SIZE)


def test_visibility_hides_the_far_side_under_yaw(sfm):
    _, _, stn = sfm
    half = SIZE // 2
    for yaw, far in ((60.0, slice(half, None)), (-60.0, slice(0, half))):
        mask, valid = _visible_halves(stn, yaw)
        near = slice(0, half) if far.start == half else slice(half, None)
        seen_far = mask[:, far].sum() / valid[:, far].sum()
        seen_near = mask[:, near].sum() / valid[:, near].sum()
        # the subject's left (+x, u > 0.5) turns away at positive yaw
        assert seen_near > 0.8 and seen_far < 0.45, (yaw, seen_near.item(), seen_far.item())
    mask, valid = _visible_halves(stn, 0.0)
    assert mask.sum() > 0.9 * valid.sum()
    agree = (mask == mask.flip(1))[valid & valid.flip(1)].float().mean()
    assert agree > 0.97, agree.item()


def test_flattened_texture_of_a_rendered_face_is_its_texture(sfm):
    """Render the textured SFM (unlit) at a known θ, resample the render through the transformer at the same
    θ: every visible texel must get back the texture value at its own UV (grid, chain and sampler agree with
    the renderer's UV mapping); a wrong correspondence (the texture shifted by a few texels) must not."""
    model, uv, stn = sfm
    alpha = torch.randn(1, 6, generator=torch.Generator().manual_seed(3))
    theta = Theta(pose(35, -10, 5), torch.tensor([[128.0, 120.0]]), torch.tensor([math.log(0.9)]), alpha)
    texture = symmetric_texture(SIZE)
    renderer = Renderer(model.triangles, (256, 256), uv=uv.float())
    cam = ScaledOrthographic(theta.log_scale.exp(), theta.rotation, theta.translation)
    image = renderer(model(identity=alpha).vertices, cam, texture=texture, background=0.0).image
    out = stn(image, theta)
    seen = out.mask[0]
    # keep away from the silhouette, where the bilinear sampler mixes in the background
    # (two-texel erosion; outside the grid counts as unseen: the mesh border is a silhouette too)
    inner = -torch.nn.functional.max_pool2d(-seen[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0.5
    inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
    assert inner.sum() > 0.5 * SIZE * SIZE
    err = (out.texture[0] - texture[0]).abs().sum(-1)[inner]
    shifted = (out.texture[0] - texture[0].roll(3, 0)).abs().sum(-1)[inner]
    print(f"flattened vs known texture: mean |error| {err.mean():.4f} (shifted 3 texels: {shifted.mean():.4f}), "
          f"95th pct {err.quantile(0.95):.4f}")
    assert err.mean() < 0.01 and err.quantile(0.95) < 0.02
    assert shifted.mean() > 10 * err.mean()
