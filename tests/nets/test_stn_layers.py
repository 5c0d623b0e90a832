"""3DMM-STN layers: the chain against the camera module, the sampler against a loop reference, gradients."""
import torch

from morphable.geometry.camera import ScaledOrthographic
from morphable.nets.stn_layers import (AxisAngleToRotation, GridLayer, LogScale, Masking, OrthographicProjection,
                                       Rotate3D, Translate2D, bilinear_sample, bilinear_sample_reference)


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
