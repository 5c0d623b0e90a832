import torch

from morphable.geometry.camera import Perspective, ScaledOrthographic
from morphable.render import vertex_visibility
from tests.render.conftest import icosphere

f64 = torch.float64


def test_sphere_front_hemisphere_is_visible():
    v, f = icosphere(3)
    cam = ScaledOrthographic(torch.tensor([20.0], dtype=f64), torch.zeros(1, 3, dtype=f64),
                             torch.tensor([[24.0, 24.0]], dtype=f64))
    vis = vertex_visibility(cam.project_with_depth(v[None]), f, (48, 48), tolerance_mm=0.05)[0]
    z = v[:, 2]
    assert vis[z > 0.15].all()
    assert not vis[z < -0.05].any()


def test_occluded_vertices_are_hidden():
    big, fb = icosphere(2)
    small, fs = icosphere(2)
    small = small * 0.3 + torch.tensor([0.2, -0.1, -2.0], dtype=f64)  # behind the big sphere
    v = torch.cat([big, small])[None]
    f = torch.cat([fb, fs + big.shape[0]])
    for cam, persp in (
        (ScaledOrthographic(torch.tensor([15.0], dtype=f64), torch.zeros(1, 3, dtype=f64),
                            torch.tensor([[20.0, 20.0]], dtype=f64)), False),
        (Perspective(torch.tensor([120.0], dtype=f64), torch.tensor([[20.0, 20.0]], dtype=f64),
                     torch.zeros(1, 3, dtype=f64), torch.tensor([[0.0, 0.0, -7.0]], dtype=f64)), True),
    ):
        screen = cam.project_with_depth(v)
        vis = vertex_visibility(screen, f, (40, 40), tolerance_mm=0.05, perspective=persp)[0]
        assert not vis[big.shape[0]:].any()  # every small-sphere vertex is behind the big one
        assert vis[:big.shape[0]][big[:, 2] > 0.3].all()
        # without the occluder the small sphere's front is visible
        alone = vertex_visibility(screen[:, big.shape[0]:], fs, (40, 40), tolerance_mm=0.05, perspective=persp)[0]
        assert alone[small[:, 2] > -2.0 + 0.3 * 0.5].all()


def test_outside_the_image_is_invisible():
    v, f = icosphere(1)
    cam = ScaledOrthographic(torch.tensor([10.0], dtype=f64), torch.zeros(1, 3, dtype=f64),
                             torch.tensor([[-5.0, 8.0]], dtype=f64))  # left half off-image
    screen = cam.project_with_depth(v[None])
    vis = vertex_visibility(screen, f, (16, 16))[0]
    assert not vis[screen[0, :, 0] < -0.5].any()
    assert vis[(screen[0, :, 0] > 0.5) & (v[:, 2] > 0.3)].all()


def test_renderer_visibility_buffer_equals_vertex_visibility():
    from morphable.render import Renderer

    v, f = icosphere(2)
    v = v * torch.tensor([1.0, 1.3, 0.8], dtype=f64)
    cam = ScaledOrthographic(torch.tensor([12.0], dtype=f64), torch.tensor([[0.3, -0.6, 0.1]], dtype=f64),
                             torch.tensor([[16.0, 17.0]], dtype=f64))
    out = Renderer(f, (32, 32))(v[None], cam, visibility=True, visibility_tolerance_mm=0.05)
    expected = vertex_visibility(cam.project_with_depth(v[None]), f, (32, 32), tolerance_mm=0.05)
    assert torch.equal(out.visibility, expected)
    assert 0.3 < expected.float().mean() < 0.7
    assert Renderer(f, (32, 32))(v[None], cam).visibility is None
