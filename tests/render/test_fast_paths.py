"""The renderer's fast paths against their slow, obvious references: the shared triangle orientations, the
pruned nearest-silhouette-edge search, compositing on the packed pixels only, and the per-topology cache."""
import pytest
import torch

from morphable.geometry.camera import Perspective, ScaledOrthographic
from morphable.render import Renderer
from morphable.render.rasterize import rasterize_ids_facing
from morphable.render.silhouette import (EdgeTopology, _boundary, _edge_geometry, _nearest_edge, nearest_edge_reference,
                                         silhouette_edges, soft_silhouette, triangle_facing)
from morphable.render.topology import mesh_topology
from tests.render.conftest import icosphere

f64 = torch.float64


def _ellipsoid_screen(perspective: bool, size: int = 24):
    v, f = icosphere(2)
    v = (v * torch.tensor([1.0, 1.2, 0.9], dtype=f64))[None].repeat(2, 1, 1)
    return _ellipsoid_camera(perspective, size).project_with_depth(v), f


def _ict_screen(ict_mesh, size: int = 64):
    vertices, triangles = ict_mesh
    cam = ScaledOrthographic(torch.tensor([size / 330.0], dtype=f64), torch.tensor([[0.1, 0.6, 0.0]], dtype=f64),
                             torch.tensor([[size / 2 - 0.5, size / 2 + 1.0]], dtype=f64))
    return cam.project_with_depth(vertices[None]), triangles


@pytest.mark.parametrize("perspective", [False, True])
def test_rasteriser_facing_is_the_silhouettes_orientation(perspective):
    screen, f = _ellipsoid_screen(perspective)
    ids, facing = rasterize_ids_facing(screen, f, (24, 24), cull_backfaces=True, perspective=perspective)
    topo = EdgeTopology.build(f)
    assert torch.equal(facing, triangle_facing(screen, topo, perspective))
    assert (facing == -1).any() and (facing == 1).any()
    shared = soft_silhouette(screen, f, ids, topo, perspective=perspective, facing=facing)
    own = soft_silhouette(screen, f, ids, topo, perspective=perspective)
    assert torch.equal(shared.alpha, own.alpha) and torch.equal(shared.extended_id, own.extended_id)


def _check_nearest_edge(screen, f, size):
    ids, facing = rasterize_ids_facing(screen, f, (size, size), cull_backfaces=True)
    sb, sh = silhouette_edges(screen, f, EdgeTopology.build(f), False, facing)
    a, b, _ = _edge_geometry(screen, EdgeTopology.build(f), sb, sh)
    boundary = _boundary(ids >= 0)
    pix, index = _nearest_edge(a, b, sb, boundary)
    assert pix.unique().numel() == pix.numel()
    fast = torch.full((boundary.numel(),), -1, dtype=torch.int64).index_put((pix,), index)
    ref, gap = nearest_edge_reference(a, b, sb, boundary)
    clear = boundary.reshape(-1) & (gap > 1e-9)  # near ties may be broken either way
    assert torch.equal(fast[clear], ref[clear])
    assert torch.equal(fast[~boundary.reshape(-1)], ref[~boundary.reshape(-1)])  # -1 off the boundary
    assert (ref[boundary.reshape(-1)] >= 0).float().mean() > 0.9
    return sh.numel()


def test_pruned_nearest_edge_search_equals_brute_force_on_an_ellipsoid_batch():
    screen, f = _ellipsoid_screen(False)
    _check_nearest_edge(screen, f, 24)


def test_pruned_nearest_edge_search_equals_brute_force_on_the_ict_head(ict_mesh):
    """The ICT head has thousands of fold edges inside its silhouette (the pruned ones) and long boundary edges."""
    screen, f = _ict_screen(ict_mesh)
    assert _check_nearest_edge(screen, f, 64) > 1000


def test_packed_compositing_equals_the_full_image_formula():
    v, f = icosphere(2)
    v = v[None]
    cam = ScaledOrthographic(torch.tensor([7.0], dtype=f64), torch.tensor([[0.3, -0.4, 0.1]], dtype=f64),
                             torch.tensor([[9.7, 10.2]], dtype=f64))
    colors = 0.5 + 0.4 * torch.sin(3 * v)
    r = Renderer(f, (20, 20))
    bg = torch.rand(1, 20, 20, 3, dtype=f64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = r(v, cam, colors=colors, background=bg)
    alpha = out.alpha[..., None]
    assert ((alpha > 0) & (alpha < 1)).any()
    empty = out.alpha == 0
    assert empty.any() and torch.equal(out.image[empty], bg.detach()[empty])
    interior = (out.triangle_id >= 0) & ~_boundary(out.triangle_id >= 0)
    assert torch.allclose(out.image[interior], out.albedo[interior], atol=1e-12)
    (g,) = torch.autograd.grad(out.image.sum(), bg)
    assert torch.allclose(g, (1 - alpha).expand_as(g).detach(), atol=1e-12)
    # a per-image colour and a scalar give the same image as the equivalent full background
    flat = r(v, cam, colors=colors, background=0.25).image
    per_image = r(v, cam, colors=colors, background=torch.full((1, 3), 0.25, dtype=f64)).image
    full = r(v, cam, colors=colors, background=torch.full((1, 20, 20, 3), 0.25, dtype=f64)).image
    assert torch.equal(flat, per_image) and torch.equal(flat, full)


def test_topology_tables_are_shared_by_content_and_rebuilt_when_the_triangles_change():
    v, f = icosphere(1)
    cam = ScaledOrthographic(torch.tensor([4.0], dtype=f64), torch.tensor([[0.3, -0.4, 0.1]], dtype=f64),
                             torch.tensor([[5.5, 5.5]], dtype=f64))
    topo = mesh_topology(f)
    assert mesh_topology(f.clone()) is topo
    built = EdgeTopology.build(f)
    assert torch.equal(topo.edges.first, built.first) and torch.equal(topo.edges.second, built.second)
    small, large = Renderer(f, (12, 12)), Renderer(f.clone(), (24, 24))
    small(v[None], cam), large(v[None], cam.rescaled(2.0))
    assert small._topology[1] is large._topology[1] is topo  # one set of tables for both image sizes

    flipped = f.clone()
    flipped[:, [1, 2]] = flipped[:, [2, 1]]  # opposite winding: back faces become front faces
    assert mesh_topology(flipped) is not topo
    r = Renderer(f.clone(), (12, 12))
    before = r(v[None], cam).triangle_id
    r.triangles[:, [1, 2]] = r.triangles[:, [2, 1]].clone()  # in place: the renderer looks its tables up again
    after = r(v[None], cam)
    assert not torch.equal(before, after.triangle_id)
    fresh = Renderer(flipped, (12, 12))(v[None], cam)
    assert torch.equal(after.triangle_id, fresh.triangle_id) and torch.equal(after.image, fresh.image)


@pytest.mark.parametrize("perspective", [False, True])
def test_per_image_sh_products_equal_the_per_pixel_gather(perspective):
    """Packed pixels in flat order (the renderer's) take one SH product per image; any other order takes the
    per-pixel gather. Both equal the autograd reference, values and gradients."""
    from morphable.render.deferred import sh_shade_packed, sh_shade_packed_reference
    from tests.render.test_deferred import _packed_scene

    inputs, f, batch, face, centres = _packed_scene(perspective)
    assert inputs[3].shape[0] == 2 and (batch == 0).any() and (batch == 1).any()
    shuffled = torch.randperm(face.numel(), generator=torch.Generator().manual_seed(4))
    w = torch.randn(face.numel(), 3, dtype=f64, generator=torch.Generator().manual_seed(5))
    results = []
    for order in (torch.arange(face.numel()), shuffled):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = sh_shade_packed(*leaves, f, batch[order], face[order], centres[order], perspective)
        ref = sh_shade_packed_reference(*leaves, f, batch[order], face[order], centres[order], perspective)
        assert torch.allclose(out, ref, atol=1e-12)
        grads = torch.autograd.grad((out * w[order]).sum(), leaves)
        ref_grads = torch.autograd.grad((ref * w[order]).sum(), leaves)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g, r, atol=1e-10)
        results.append((out[torch.argsort(order)], grads))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(results[0][1], results[1][1]))


def test_box_cells_lists_every_cell_of_every_box_in_row_major_order():
    from morphable.render.rasterize import box_cells

    nx, ny = torch.tensor([1, 3, 2, 5]), torch.tensor([2, 1, 4, 3])
    item, dx, dy = box_cells(nx, ny)
    expected = [(m, x, y) for m in range(4) for y in range(int(ny[m])) for x in range(int(nx[m]))]
    assert list(zip(item.tolist(), dx.long().tolist(), dy.long().tolist())) == expected
    assert dx.dtype == dy.dtype == torch.float32
    item, dx, dy = box_cells(nx, ny, skip_first=True)
    assert list(zip(item.tolist(), dx.long().tolist(), dy.long().tolist())) == [
        e for e in expected if e[1:] != (0, 0)]


def test_flat_nonzero_equals_torch_nonzero_of_the_flattened_mask():
    from morphable.render.rasterize import flat_nonzero

    mask = torch.rand(3, 50, generator=torch.Generator().manual_seed(3)) < 0.3
    for m in (mask, mask.t(), mask[:, ::2], mask[:0]):
        got = flat_nonzero(m)
        assert got.dtype == torch.int64 and torch.equal(got, m.reshape(-1).nonzero(as_tuple=True)[0])


def test_compare_equals_torch_comparisons():
    from morphable.render.rasterize import compare

    x = torch.tensor([[-1.0, 0.0, -0.0, 2.0, float("nan")], [float("inf"), -float("inf"), 0.5, 1.0, 3.0]])
    y = torch.tensor([[0.0, 0.0, 1.0, 2.0, 0.0], [1.0, 0.0, 0.5, float("nan"), 2.0]])
    for op, fn in ((">=", torch.ge), (">", torch.gt), ("<=", torch.le), ("<", torch.lt), ("==", torch.eq),
                   ("!=", torch.ne)):
        for other in (0.0, y):
            got = compare(x.t(), op, other if isinstance(other, float) else other.t())
            assert got.dtype == torch.bool and torch.equal(got, fn(x.t(), other if isinstance(other, float) else other.t()))
    ids = torch.tensor([-1, 0, 5, -1])
    assert torch.equal(compare(ids, ">=", 0), ids >= 0)


@pytest.mark.parametrize("perspective", [False, True])
def test_fixed_geometry_shades_like_a_full_render(perspective):
    """``Renderer.fix_geometry`` rasterises once and re-shades: image, alpha and the gradients with respect to
    albedo and light equal a full render's (the fused shading kernel's), for two images with their own light,
    and for one light and one albedo shared by both."""
    cam = _ellipsoid_camera(perspective)
    v, f = icosphere(2)
    v = (v * torch.tensor([1.0, 1.2, 0.9], dtype=f64))[None].repeat(2, 1, 1)
    g = torch.Generator().manual_seed(3)
    r = Renderer(f, (24, 24))
    fixed = r.fix_geometry(v, cam)
    bg = torch.rand(2, 24, 24, 3, dtype=f64, generator=g)
    for B_light, B_albedo in ((2, 2), (1, 1)):
        colors = (0.3 + 0.6 * torch.rand(B_albedo, v.shape[1], 3, dtype=f64, generator=g)).requires_grad_(True)
        sh = (0.3 * torch.randn(B_light, 9, 3, dtype=f64, generator=g)).requires_grad_(True)
        full = r(v, cam, colors=colors.expand(2, -1, -1), sh=sh, background=bg)
        again = fixed.render(colors=colors, sh=sh, background=bg)
        assert torch.equal(again.alpha, full.alpha) and torch.equal(again.triangle_id, full.triangle_id)
        assert ((full.alpha > 0) & (full.alpha < 1)).any()  # the soft silhouette's extrapolated pixels too
        assert torch.allclose(again.image, full.image, atol=1e-12)
        w = torch.rand(full.image.shape, dtype=f64, generator=g)
        expected = torch.autograd.grad((full.image * w).sum(), (colors, sh))
        got = torch.autograd.grad((again.image * w).sum(), (colors, sh))
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, atol=1e-10)
    with pytest.raises(ValueError, match="FixedGeometry: expected sh"):
        fixed.render(colors=None, sh=torch.zeros(3, 9, 3, dtype=f64))


def _ellipsoid_camera(perspective: bool, size: int = 24):
    rot = torch.tensor([[0.3, -0.4, 0.1], [-0.2, 0.9, 0.3]], dtype=f64)
    if perspective:
        return Perspective(torch.full((2,), 50.0, dtype=f64), torch.full((2, 2), size / 2 - 0.5, dtype=f64), rot,
                           torch.tensor([[0.1, -0.2, -6.0], [0.0, 0.3, -5.0]], dtype=f64))
    return ScaledOrthographic(torch.full((2,), 8.0, dtype=f64), rot, torch.full((2, 2), size / 2 - 0.3, dtype=f64))
