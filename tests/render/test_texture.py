import torch

from morphable.geometry.camera import ScaledOrthographic
from morphable.render import Renderer, UVLayout, image_to_uv, sample_image, uv_to_image

f64 = torch.float64


def test_sample_image_hand_values():
    img = torch.arange(12, dtype=f64).reshape(1, 3, 4, 1)  # value = 4 y + x
    pts = torch.tensor([[[0.0, 0.0], [3.0, 2.0], [1.5, 0.0], [1.0, 0.5], [2.25, 1.75], [-3.0, 1.0]]], dtype=f64)
    out = sample_image(img, pts)[0, :, 0]
    assert torch.allclose(out, torch.tensor([0.0, 11.0, 1.5, 3.0, 9.25, 0.0], dtype=f64))


def test_sample_image_gradcheck_in_values_and_positions():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 5, 6, 3, dtype=f64, generator=g, requires_grad=True)
    pts = (torch.rand(2, 7, 2, dtype=f64, generator=g) * torch.tensor([4.6, 3.6], dtype=f64) + 0.2)
    pts = (pts.floor() + 0.1 + 0.8 * pts.frac()).requires_grad_(True)  # away from the kinks at integers
    assert torch.autograd.gradcheck(sample_image, (img, pts))


def _plane(n=9):
    """A square [-1, 1]² in the z = 0 plane facing +z, with UV = its (x, y) mapped to [0, 1]²."""
    t = torch.linspace(-1, 1, n, dtype=f64)
    y, x = torch.meshgrid(t, t, indexing="ij")
    v = torch.stack([x, y, torch.zeros_like(x)], -1).reshape(-1, 3)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    f = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return v, f, (v[:, :2] + 1) / 2


def test_image_to_uv_and_back_reproduces_a_smooth_image():
    v, f, uv = _plane()
    H = W = 40
    cam = ScaledOrthographic(torch.tensor([15.0], dtype=f64), torch.zeros(1, 3, dtype=f64),
                             torch.tensor([[19.5, 19.5]], dtype=f64))
    ys, xs = torch.meshgrid(torch.arange(H, dtype=f64), torch.arange(W, dtype=f64), indexing="ij")
    image = torch.stack([torch.sin(xs / 7), torch.cos(ys / 9), (xs + ys) / 80], -1)[None]
    layout = UVLayout.build(uv, f, 48)
    screen = cam.project_with_depth(v[None])
    uv_map, mask = image_to_uv(image, screen, f, layout)
    assert mask.float().mean() > 0.9
    # a texel holds the image at the point its surface point projects to
    sy, sx = 10, 30
    # texel (sx, sy) has its centre at (u, v) = ((sx + ½) / 48, 1 − (sy + ½) / 48), the model point
    # (x, y) = (2u − 1, 2v − 1), seen at 15 x + 19.5, −15 y + 19.5
    px = torch.tensor(15 * ((sx + 0.5) / 48 * 2 - 1) + 19.5, dtype=f64)
    py = torch.tensor(-15 * ((1 - (sy + 0.5) / 48) * 2 - 1) + 19.5, dtype=f64)
    expected = torch.stack([torch.sin(px / 7), torch.cos(py / 9), (px + py) / 80])
    assert torch.allclose(uv_map[0, sy, sx], expected, atol=2e-3)
    out = Renderer(f, (H, W), uv=uv)(v[None], cam)
    back = uv_to_image(uv_map, out.uv, out.triangle_id >= 0)
    inner = torch.zeros(H, W, dtype=torch.bool)
    inner[7:33, 7:33] = True
    assert torch.allclose(back[0][inner], image[0][inner], atol=6e-3)  # two bilinear resamplings of sin(x / 7)
    assert (back[0][out.triangle_id[0] < 0] == 0).all()


def test_image_to_uv_masks_invisible_vertices_and_is_differentiable():
    v, f, uv = _plane(5)
    cam = ScaledOrthographic(torch.tensor([6.0], dtype=f64), torch.zeros(1, 3, dtype=f64),
                             torch.tensor([[7.5, 7.5]], dtype=f64))
    layout = UVLayout.build(uv, f, 16)
    image = torch.rand(1, 16, 16, 3, dtype=f64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    screen = cam.project_with_depth(v[None]).requires_grad_(True)
    visible = (v[:, 0] < 0.1)[None]  # left half visible
    uv_map, mask = image_to_uv(image, screen, f, layout, visibility=visible)
    cols = mask[0].any(0).nonzero()[:, 0]
    assert cols.max() <= 8 and cols.min() == 0  # only the left half of the UV square
    assert (uv_map[0][~mask[0]] == 0).all()
    uv_map.sum().backward()
    assert image.grad.abs().sum() > 0 and screen.grad[..., :2].abs().sum() > 0
