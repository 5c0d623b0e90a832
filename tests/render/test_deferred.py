"""The fused packed-pixel SH shading (hand-written backward) against finite differences and its autograd reference."""
import pytest
import torch

from morphable.geometry.camera import Perspective, ScaledOrthographic
from morphable.geometry.mesh import vertex_normals
from morphable.render import Renderer, sh_directional
from morphable.render.deferred import sh_shade_packed, sh_shade_packed_reference
from morphable.render.rasterize import pixel_coordinates, rasterize_ids
from morphable.render.silhouette import EdgeTopology, soft_silhouette
from tests.render.conftest import icosphere

f64 = torch.float64


def _packed_scene(perspective: bool, batch: int = 2, size: int = 14):
    """An ellipsoid rendered in ``batch`` poses: screen vertices, normals, colours, SH and the packed pixels
    (covered ones and the silhouette-extrapolated ones just outside, as the renderer shades them)."""
    v, f = icosphere(1)
    v = (v * torch.tensor([1.0, 1.2, 0.9], dtype=f64))[None].repeat(batch, 1, 1)
    v = v + 0.03 * torch.randn(v.shape, dtype=f64, generator=torch.Generator().manual_seed(1))
    rot = torch.tensor([[0.3, -0.4, 0.1], [-0.2, 0.5, 0.3]], dtype=f64)[:batch]
    if perspective:
        cam = Perspective(torch.full((batch,), 30.0, dtype=f64), torch.full((batch, 2), size / 2 - 0.5, dtype=f64),
                          rot, torch.tensor([[0.1, -0.2, -6.0]], dtype=f64).repeat(batch, 1))
    else:
        cam = ScaledOrthographic(torch.full((batch,), 5.0, dtype=f64), rot,
                                 torch.full((batch, 2), size / 2 - 0.3, dtype=f64))
    screen = cam.project_with_depth(v)
    normals = vertex_normals(cam.transform(v), f)
    colors = 0.5 + 0.4 * torch.sin(3 * v)
    sh = sh_directional(torch.tensor([[0.3, 0.5, 1.0]], dtype=f64).repeat(batch, 1),
                        torch.full((batch, 3), 2.0, dtype=f64), ambient=0.3)
    sh = sh + 0.1 * torch.randn(sh.shape, dtype=f64, generator=torch.Generator().manual_seed(2))
    ids = rasterize_ids(screen, f, (size, size), cull_backfaces=True, perspective=perspective)
    sil = soft_silhouette(screen, f, ids, EdgeTopology.build(f), perspective=perspective)
    flat = torch.where(ids >= 0, ids, sil.extended_id).reshape(-1)
    pix = (flat >= 0).nonzero(as_tuple=True)[0]
    batch_p, centres = pixel_coordinates(pix, size, size)
    assert (sil.extended_id >= 0).any()  # the scene exercises pixels shaded outside their triangle (clamped)
    return (screen.detach(), normals.detach(), colors, sh), f, batch_p, flat[pix], centres


@pytest.fixture(params=[True, False], ids=["compiled", "tensor"])
def compiled(request):
    """Both implementations: the compiled CPU loops and the tensor code (other devices' path)."""
    return request.param


@pytest.mark.parametrize("perspective", [False, True])
def test_fused_equals_autograd_reference_values_and_gradients(perspective, compiled):
    inputs, f, batch, face, centres = _packed_scene(perspective)
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    fused = sh_shade_packed(*leaves, f, batch, face, centres, perspective, compiled=compiled)
    ref = sh_shade_packed_reference(*leaves, f, batch, face, centres, perspective)
    assert fused.shape == (face.numel(), 3)
    assert torch.allclose(fused, ref, atol=1e-12)
    w = torch.randn(ref.shape, dtype=f64, generator=torch.Generator().manual_seed(3))
    g_fused = torch.autograd.grad((fused * w).sum(), leaves)
    g_ref = torch.autograd.grad((ref * w).sum(), leaves)
    for a, b in zip(g_fused, g_ref):
        assert a.abs().max() > 0
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("perspective", [False, True])
@pytest.mark.parametrize("shared_sh", [False, True])
def test_compiled_shading_split_into_parallel_chunks_equals_the_serial_kernels(perspective, shared_sh, monkeypatch):
    """3 pixel ranges on parallel threads (per-range gradient buffers, summed after): the same colours, gradients
    equal to rounding; a second call reuses the work buffers the first one left filled."""
    import morphable.render.deferred as deferred

    inputs, f, batch, face, centres = _packed_scene(perspective)
    if shared_sh:
        inputs = (*inputs[:3], inputs[3][:1])
    w = torch.randn(face.numel(), 3, dtype=f64, generator=torch.Generator().manual_seed(3))
    results = []
    for n in (1, 3, 3):
        monkeypatch.setattr(deferred, "kernel_threads", lambda items, _n=n: _n)
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = sh_shade_packed(*leaves, f, batch, face, centres, perspective, compiled=True)
        results.append((out.detach(), torch.autograd.grad((out * w).sum(), leaves)))
    (ref, g_ref), *split = results
    for out, grads in split:
        assert torch.equal(out, ref)
        for a, b in zip(grads, g_ref):
            assert b.abs().max() > 0
            torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("perspective", [False, True])
def test_compiled_float32_shading_is_the_float64_reference_to_float32_rounding(perspective):
    """The compiled loops run float32 inputs in float32 (a renderer's usual dtype); values and gradients
    stay within float32 rounding of the float64 reference."""
    inputs, f, batch, face, centres = _packed_scene(perspective)
    leaves32 = [t.float().requires_grad_(True) for t in inputs]
    leaves64 = [t.clone().requires_grad_(True) for t in inputs]
    out32 = sh_shade_packed(*leaves32, f, batch, face, centres, perspective, compiled=True)
    ref = sh_shade_packed_reference(*leaves64, f, batch, face, centres, perspective)
    assert out32.dtype == torch.float32
    assert (out32.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    w = torch.randn(ref.shape, dtype=f64, generator=torch.Generator().manual_seed(4))
    g32 = torch.autograd.grad((out32 * w.float()).sum(), leaves32)
    g64 = torch.autograd.grad((ref * w).sum(), leaves64)
    for a, b in zip(g32, g64):
        assert a.dtype == torch.float32
        assert (a.double() - b).abs().max() <= 1e-4 * b.abs().max()


@pytest.mark.parametrize("perspective", [False, True])
@pytest.mark.parametrize("shared_sh", [False, True])
def test_fused_gradcheck(perspective, shared_sh, compiled):
    inputs, f, batch, face, centres = _packed_scene(perspective)
    screen, normals, colors, sh = inputs
    if shared_sh:
        sh = sh[:1]
    keep = torch.arange(0, face.numel(), 4)  # a quarter of the pixels keeps the finite differences quick
    args = [t.clone().requires_grad_(True) for t in (screen, normals, colors, sh)]

    def fn(*x):
        return sh_shade_packed(*x, f, batch[keep], face[keep], centres[keep], perspective, compiled=compiled)

    assert torch.autograd.gradcheck(fn, args, atol=1e-6, fast_mode=True)


def test_white_albedo_and_renderer_uses_the_same_shading(compiled):
    """``colors=None`` shades white; the renderer's image equals the reference shading composited by alpha."""
    inputs, f, batch, face, centres = _packed_scene(False, batch=1)
    screen, normals, _, sh = inputs
    fused = sh_shade_packed(screen, normals, None, sh, f, batch, face, centres, False, compiled=compiled)
    ref = sh_shade_packed_reference(screen, normals, None, sh, f, batch, face, centres, False)
    assert torch.allclose(fused, ref, atol=1e-12)

    v, f = icosphere(1)
    v = v[None]
    cam = ScaledOrthographic(torch.tensor([5.0], dtype=f64), torch.tensor([[0.3, -0.4, 0.1]], dtype=f64),
                             torch.tensor([[6.7, 6.7]], dtype=f64))
    colors = 0.5 + 0.4 * torch.sin(3 * v)
    out = Renderer(f, (14, 14))(v, cam, colors=colors, sh=sh)
    screen = cam.project_with_depth(v)
    normals = vertex_normals(cam.transform(v), f)
    flat = out.triangle_id.reshape(-1)
    pix = (flat >= 0).nonzero(as_tuple=True)[0]
    b, centres = pixel_coordinates(pix, 14, 14)
    ref = sh_shade_packed_reference(screen, normals, colors, sh, f, b, flat[pix], centres, False)
    alpha = out.alpha.reshape(-1)[pix, None]
    assert torch.allclose(out.image.reshape(-1, 3)[pix], alpha * ref, atol=1e-10)


def test_barycentrics_outside_a_triangle_are_clamped_to_it():
    """Hand-computed: outside edge ab of (0,0), (4,0), (0,4) the plane's barycentrics (1, 0.25, −0.25) clamp to
    (0.8, 0.2, 0); inside they are the plane's; in an exactly edge-on (collinear) triangle they stay finite."""
    from morphable.render.rasterize import barycentric_at

    screen = torch.tensor([[[0.0, 0.0, 5.0], [4.0, 0.0, 5.0], [0.0, 4.0, 5.0],
                            [0.0, 0.0, 5.0], [2.0, 0.0, 5.0], [4.0, 0.0, 5.0]]], dtype=f64)
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    face, batch = torch.tensor([0, 0, 1]), torch.zeros(3, dtype=torch.int64)
    centres = torch.tensor([[1, -1], [1, 1], [1, 1]])
    for perspective in (False, True):  # equal depths: perspective-correct = screen barycentrics
        bary, _ = barycentric_at(screen, f, batch, face, centres, perspective)
        expected = torch.tensor([[0.8, 0.2, 0.0], [0.5, 0.25, 0.25], [0.5, 0.0, 0.5]], dtype=f64)
        torch.testing.assert_close(bary, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("perspective", [False, True])
def test_an_edge_on_silhouette_triangle_shades_finite(perspective, compiled):
    """A pixel shaded from a triangle seen exactly edge-on (zero screen area): Genova's extrapolated
    barycentrics divide by that area (NaN); the clamped ones give a finite colour and gradient, the same on
    every path."""
    screen = torch.tensor([[[0.0, 0.0, 5.0], [2.0, 0.0, 6.0], [4.0, 0.0, 7.0]]], dtype=f64, requires_grad=True)
    normals = torch.tensor([[[0.0, 0.0, 1.0]] * 3], dtype=f64, requires_grad=True)
    colors = torch.tensor([[[0.2, 0.4, 0.6], [0.9, 0.9, 0.9], [0.6, 0.4, 0.2]]], dtype=f64, requires_grad=True)
    sh = sh_directional(torch.tensor([[0.0, 0.0, 1.0]], dtype=f64), torch.full((1, 3), 1.0, dtype=f64), ambient=0.5)
    args = (torch.tensor([[0, 1, 2]]), torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64),
            torch.tensor([[1, 1]]), perspective)
    out = sh_shade_packed(screen, normals, colors, sh, *args, compiled=compiled)
    ref = sh_shade_packed_reference(screen, normals, colors, sh, *args)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.autograd.grad(out.sum(), (screen, colors))
    g_ref = torch.autograd.grad(ref.sum(), (screen, colors))
    for a, b in zip(g, g_ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
