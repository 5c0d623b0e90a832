import math

import pytest
import torch

from morphable.geometry.camera import ScaledOrthographic
from morphable.render import Renderer, color_temperature_rgb, phong_shade, sh_basis, sh_directional, sh_shade
from morphable.render.shading import SH_AMBIENT
from tests.render.conftest import icosphere

f64 = torch.float64


def _irradiance_closed_form(n: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """Ramamoorthi & Hanrahan (2001) eq. 13 written out with their constants c1..c5 (radiance → irradiance),
    divided by π for the ρ/π Lambertian BRDF. ``n (..., 3)``, ``L (9,)`` in the (l, m) order of shading.py."""
    c1, c2, c3, c4, c5 = 0.429043, 0.511664, 0.743125, 0.886227, 0.247708
    x, y, z = n.unbind(-1)
    L00, L1m1, L10, L11, L2m2, L2m1, L20, L21, L22 = L
    E = (c1 * L22 * (x * x - y * y) + c3 * L20 * z * z + c4 * L00 - c5 * L20
         + 2 * c1 * (L2m2 * x * y + L21 * x * z + L2m1 * y * z) + 2 * c2 * (L11 * x + L1m1 * y + L10 * z))
    return E / math.pi


def test_sh_basis_matches_the_closed_form_irradiance_formula():
    n = torch.nn.functional.normalize(torch.randn(500, 3, dtype=f64), dim=-1)
    for k in range(9):
        L = torch.zeros(9, dtype=f64)
        L[k] = 1.0
        assert torch.allclose(sh_basis(n) @ L, _irradiance_closed_form(n, L), atol=1e-5)


def test_sh_shading_of_a_rendered_sphere_matches_the_closed_form():
    v, f = icosphere(5)
    size, radius_px, centre = 64, 28.0, (31.5, 32.0)
    cam = ScaledOrthographic(torch.tensor([radius_px], dtype=f64), torch.zeros(1, 3, dtype=f64),
                             torch.tensor([centre], dtype=f64))
    L = torch.randn(1, 9, 3, dtype=f64, generator=torch.Generator().manual_seed(0)) * 0.3
    L[:, 0] += 2.0
    rho = torch.tensor([0.8, 0.6, 0.5], dtype=f64)
    out = Renderer(f, (size, size))(v[None], cam, colors=rho.expand(1, v.shape[0], 3), sh=L)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=f64), torch.arange(size, dtype=f64), indexing="ij")
    nx, ny = (xs - centre[0]) / radius_px, -(ys - centre[1]) / radius_px
    r2 = nx * nx + ny * ny
    inner = r2 < 0.85**2  # away from the rim, where the polygonal silhouette differs from the circle
    n = torch.stack([nx, ny, (1 - r2).clamp_min(0).sqrt()], -1)[inner]
    expected = torch.stack([_irradiance_closed_form(n, L[0, :, c]) for c in range(3)], -1) * rho
    assert (out.triangle_id[0][inner] >= 0).all()
    assert torch.allclose(out.image[0][inner], expected, atol=3e-3)  # interpolated normals of a 20k-face sphere


def test_directional_light_approximates_the_clamped_cosine():
    """9-term SH of a distant light ≈ ρ I max(0, n·ω)/π (Ramamoorthi & Hanrahan: < 9% of the peak)."""
    n = torch.nn.functional.normalize(torch.randn(1, 4000, 3, dtype=f64), dim=-1)
    w = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, 0.8]], dtype=f64), dim=-1)
    c = sh_shade(n, torch.ones_like(n), sh_directional(w, torch.ones(1, 3, dtype=f64)))[..., 0]
    exact = (n @ w[0]).clamp_min(0) / math.pi
    err = (c - exact).abs() * math.pi
    assert err.max() < 0.1 and err.mean() < 0.04


def test_ambient_gives_the_albedo_and_shapes_are_checked():
    n = torch.nn.functional.normalize(torch.randn(2, 7, 3, dtype=f64), dim=-1)
    rho = torch.rand(2, 7, 3, dtype=f64)
    L = sh_directional(torch.ones(2, 3, dtype=f64), torch.zeros(2, 3, dtype=f64), ambient=torch.tensor([1.0, 0.5]))
    out = sh_shade(n, rho, L)
    assert torch.allclose(out[0], rho[0]) and torch.allclose(out[1], 0.5 * rho[1])
    assert L[0, 0, 0] == pytest.approx(SH_AMBIENT)
    with pytest.raises(ValueError, match=r"\(B, 9, 3\)"):
        sh_shade(n, rho, torch.zeros(2, 4, 3))


def test_phong_hand_values():
    n = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=f64)
    p = torch.zeros(1, 1, 3, dtype=f64)
    rho = torch.tensor([[[0.5, 0.4, 0.3]]], dtype=f64)
    light_col = torch.tensor([[[1.0, 1.0, 1.0]]], dtype=f64)
    overhead = torch.tensor([[[0.0, 0.0, 1000.0]]], dtype=f64)
    # light straight above: diffuse = ρ, mirror direction = view direction: specular = k_s
    c = phong_shade(n, p, rho, overhead, light_col, ambient=0.1, specular=0.25, shininess=10.0)
    assert torch.allclose(c, 1.1 * rho + 0.25)
    # light 60° off the normal: diffuse cos = 0.5; r = 2(n·l)n − l lies 60° off the normal on the other
    # side, so r·v = cos 60° = 0.5 and the specular term is 0.5² = 0.25
    slanted = torch.tensor([[[1000 * math.sin(math.pi / 3), 0.0, 1000 * math.cos(math.pi / 3)]]], dtype=f64)
    c = phong_shade(n, p, rho, slanted, light_col, specular=1.0, shininess=2.0)
    assert torch.allclose(c, 0.5 * rho + 0.25, atol=1e-9)
    # light below the surface: nothing but ambient
    below = torch.tensor([[[0.0, 0.0, -1000.0]]], dtype=f64)
    assert torch.allclose(phong_shade(n, p, rho, below, light_col, ambient=0.2, specular=1.0), 0.2 * rho)
    # perspective viewer at the origin looking at a point on the axis behaves like the orthographic one
    q = torch.tensor([[[0.0, 0.0, -500.0]]], dtype=f64)
    light = torch.tensor([[[0.0, 0.0, 500.0]]], dtype=f64)
    c = phong_shade(n, q, rho, light, light_col, specular=0.5, eye=torch.zeros(1, 3, dtype=f64))
    assert torch.allclose(c, rho + 0.5)


def test_phong_gradcheck():
    g = torch.Generator().manual_seed(2)
    n = torch.nn.functional.normalize(torch.randn(1, 5, 3, dtype=f64, generator=g) + torch.tensor([0, 0, 2.0]), dim=-1)
    p = torch.randn(1, 5, 3, dtype=f64, generator=g)
    rho = torch.rand(1, 5, 3, dtype=f64, generator=g)
    lp = torch.tensor([[[300.0, 200.0, 400.0], [-100.0, 50.0, 300.0]]], dtype=f64)
    lc = torch.rand(1, 2, 3, dtype=f64, generator=g)
    args = tuple(t.requires_grad_(True) for t in (n, p, rho, lp, lc))
    assert torch.autograd.gradcheck(lambda *a: phong_shade(*a, ambient=0.1, specular=0.3, shininess=5.0), args)
    sh = torch.randn(1, 9, 3, dtype=f64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(sh_shade, (n.detach().requires_grad_(True), rho.detach().requires_grad_(True), sh))


def test_color_temperature():
    rgb = color_temperature_rgb(torch.tensor([1900.0, 2700.0, 4000.0, 6500.0, 10000.0]))
    assert torch.allclose(rgb.amax(-1), torch.ones(5))
    warm, daylight, cool = rgb[1], rgb[3], rgb[4]
    assert warm[0] > warm[1] > warm[2]  # tungsten: orange
    assert (daylight > 0.9).all()  # 6500 K ≈ the sRGB white point (D65)
    assert cool[2] > cool[1] > cool[0]  # blue sky
    assert (rgb[:, 2].diff() > 0).all()  # bluer as temperature rises
