import math

import pytest
import torch

from morphable.geometry.camera import Perspective, ScaledOrthographic
from morphable.render.rasterize import Fragments, barycentric_at, interpolate, rasterize, rasterize_reference
from tests.render.conftest import icosphere

f64 = torch.float64


def _screen(points, depth=5.0):
    """``[(u, v), ...]`` or ``[(u, v, d), ...]`` -> ``(1, V, 3)`` float64."""
    rows = [list(p) + ([depth] if len(p) == 2 else []) for p in points]
    return torch.tensor([rows], dtype=f64)


def _grid(ids: torch.Tensor) -> list[str]:
    """Triangle-id image as rows of characters: ``.`` background, digits for ids."""
    return ["".join("." if int(t) < 0 else str(int(t)) for t in row) for row in ids]


class TestHandScenes:
    def test_one_triangle_on_10x10(self):
        # corners at pixel centres (1,1), (8,1), (1,8): covered iff x >= 1, y >= 1, x + y <= 9
        screen = _screen([(1, 1), (8, 1), (1, 8)])
        frag = rasterize(screen, torch.tensor([[0, 1, 2]]), (10, 10))
        assert _grid(frag.triangle_id[0]) == [
            "..........",
            ".00000000.",
            ".0000000..",
            ".000000...",
            ".00000....",
            ".0000.....",
            ".000......",
            ".00.......",
            ".0........",
            "..........",
        ]
        # barycentrics of pixel (x=3, y=2): b1 = (x-1)/7, b2 = (y-1)/7, b0 = rest
        assert torch.allclose(frag.barycentric[0, 2, 3], torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=f64))
        assert torch.allclose(frag.depth[frag.mask], torch.tensor(5.0, dtype=f64))
        assert torch.isinf(frag.depth[~frag.mask]).all()

    def test_back_face_culling_follows_the_model_winding(self):
        # clockwise on screen (y down) = counter-clockwise in model space (y up): front-facing
        front = _screen([(1, 1), (1, 8), (8, 1)])
        back = _screen([(1, 1), (8, 1), (1, 8)])
        tri = torch.tensor([[0, 1, 2]])
        assert rasterize(front, tri, (10, 10), cull_backfaces=True).mask.sum() == 36
        assert rasterize(back, tri, (10, 10), cull_backfaces=True).mask.sum() == 0
        assert rasterize(back, tri, (10, 10)).mask.sum() == 36

    def test_nearer_triangle_wins(self):
        screen = _screen([(0, 0, 5), (9, 0, 5), (0, 9, 5), (2, 2, 3), (9, 2, 3), (2, 9, 3)])
        frag = rasterize(screen, torch.tensor([[0, 1, 2], [3, 4, 5]]), (10, 10))
        assert _grid(frag.triangle_id[0]) == [
            "0000000000",
            "000000000.",
            "0011111111",
            "001111111.",
            "00111111..",
            "0011111...",
            "001111....",
            "00111.....",
            "0011......",
            "0.1.......",
        ]
        assert torch.allclose(frag.depth[0, [3, 0], [3, 0]], torch.tensor([3.0, 5.0], dtype=f64))

    def test_exact_ties_go_to_the_lowest_triangle_id(self):
        # a square split along its diagonal; diagonal pixel centres lie on both triangles at equal depth
        screen = _screen([(0, 0), (9, 0), (9, 9), (0, 9)])
        for tris, diagonal in (([[0, 2, 3], [0, 1, 2]], 0), ([[0, 1, 2], [0, 2, 3]], 0)):
            ids = rasterize(screen, torch.tensor(tris), (10, 10)).triangle_id[0]
            assert all(int(ids[i, i]) == diagonal for i in range(10))
            assert ids.min() == 0 and (ids >= 0).all()

    def test_interpolate_is_exact_for_affine_attributes(self):
        screen = _screen([(0.3, 0.2, 2), (9.1, 0.7, 3), (0.5, 8.8, 4)])
        attr = screen[..., :2] * torch.tensor([2.0, -1.0], dtype=f64) + 1.5  # affine in (u, v)
        frag = rasterize(screen, torch.tensor([[0, 1, 2]]), (10, 10))
        out = interpolate(attr, frag, torch.tensor([[0, 1, 2]]))
        ys, xs = torch.meshgrid(torch.arange(10, dtype=f64), torch.arange(10, dtype=f64), indexing="ij")
        expected = torch.stack([2 * xs + 1.5, -ys + 1.5], -1)
        m = frag.mask[0]
        assert m.sum() > 20
        assert torch.allclose(out[0][m], expected[m], atol=1e-12)
        assert (out[0][~m] == 0).all()


def _check_against_reference(screen, triangles, size, compiled=None, **kwargs):
    frag = rasterize(screen, triangles, size, compiled=compiled, **kwargs)
    ref, margin = rasterize_reference(screen, triangles, size, **kwargs)
    fast = frag.triangle_id
    fast_margin = frag.barycentric.abs().amin(-1).detach()
    persp = kwargs.get("perspective", False)
    covered_diff = (fast >= 0) != (ref >= 0)
    # coverage may differ only at exact edge ties (pixel centre on an edge, |b| ~ float eps)
    tie = torch.where(fast >= 0, fast_margin, margin) < 1e-6
    assert not (covered_diff & ~tie).any(), f"{int((covered_diff & ~tie).sum())} coverage mismatches off edges"
    # where both cover, ids agree except at ties or equal depths (shared edges, coplanar overlaps)
    both = (fast >= 0) & (ref >= 0) & (fast != ref)
    if both.any():
        b, y, x = both.nonzero(as_tuple=True)
        pix = torch.stack([x, y], -1)
        _, d_ref = barycentric_at(screen, triangles, b, ref[both], pix, persp)
        d_fast = frag.depth[both]
        near_equal = (d_fast - d_ref).abs() <= 1e-5 * d_ref.abs().clamp_min(1)
        assert (near_equal | (fast_margin[both] < 1e-6)).all()
    return frag, int(covered_diff.sum())


@pytest.fixture(params=[True, False], ids=["compiled", "tensor"])
def compiled(request):
    """Both searches: the compiled CPU kernel and the tensor one (other devices' path)."""
    return request.param


class TestAgainstReference:
    @pytest.mark.parametrize("rotation", [(0.0, 0.0, 0.0), (0.2, 0.7, 0.1), (-0.4, -1.2, 0.3)])
    def test_ict_orthographic(self, ict_mesh, rotation, compiled):
        vertices, triangles = ict_mesh
        cam = ScaledOrthographic(torch.tensor([48 / 330.0], dtype=f64), torch.tensor([rotation], dtype=f64),
                                 torch.tensor([[23.7, 25.2]], dtype=f64))
        screen = cam.project_with_depth(vertices[None])
        frag, _ = _check_against_reference(screen, triangles, (48, 48), compiled, cull_backfaces=True)
        assert frag.mask.sum() > 600

    @pytest.mark.parametrize("rotation", [(0.1, 0.4, 0.0), (0.0, -2.5, 0.0)])
    def test_ict_perspective_without_culling(self, ict_mesh, rotation, compiled):
        vertices, triangles = ict_mesh
        cam = Perspective(torch.tensor([70.0], dtype=f64), torch.tensor([[23.5, 23.5]], dtype=f64),
                          torch.tensor([rotation], dtype=f64), torch.tensor([[0.0, 20.0, -600.0]], dtype=f64))
        screen = cam.project_with_depth(vertices[None])
        frag, _ = _check_against_reference(screen, triangles, (48, 48), compiled, perspective=True)
        assert frag.mask.sum() > 300

    def test_small_chunks_give_the_same_result(self):
        v, f = icosphere(2, radius=20.0)
        screen = (v + torch.tensor([24.0, 24.0, 50.0], dtype=f64))[None]
        a = rasterize(screen, f, (48, 48), compiled=False).triangle_id
        b = rasterize(screen, f, (48, 48), max_candidates=7, compiled=False).triangle_id
        assert torch.equal(a, b)

    def test_batch_equals_single_renders(self, compiled):
        v, f = icosphere(2, radius=15.0)
        s1 = (v + torch.tensor([20.0, 18.0, 50.0], dtype=f64))[None]
        s2 = (v * 0.7 + torch.tensor([12.0, 25.0, 50.0], dtype=f64))[None]
        both = rasterize(torch.cat([s1, s2]), f, (40, 36), cull_backfaces=True, compiled=compiled)
        for i, s in enumerate((s1, s2)):
            one = rasterize(s, f, (40, 36), cull_backfaces=True, compiled=compiled)
            assert torch.equal(both.triangle_id[i], one.triangle_id[0])
            assert torch.allclose(both.barycentric[i], one.barycentric[0])

    def test_float32_and_big_close_up_triangles(self, compiled):
        # triangles much larger than the image: covered everywhere they should be, scanned in chunks
        screen = torch.tensor([[[-500.0, -400.0, 3.0], [900.0, -300.0, 4.0], [-200.0, 800.0, 5.0]]])
        frag = rasterize(screen, torch.tensor([[0, 1, 2]]), (30, 40), max_candidates=1000, compiled=compiled)
        ref, _ = rasterize_reference(screen, torch.tensor([[0, 1, 2]]), (30, 40))
        assert torch.equal(frag.triangle_id, ref) and frag.mask.all()
        assert frag.barycentric.dtype == torch.float32


def test_near_plane_clipping_matches_ray_casting(compiled):
    """A triangle crossing the camera plane: covered pixels = rays hitting it at depth >= near."""
    H = W = 24
    f_px, c = 20.0, 11.5
    tri3d = torch.tensor([[-30.0, -20.0, -40.0], [25.0, -5.0, 30.0], [-5.0, 30.0, -15.0]], dtype=f64)  # camera frame
    cam = Perspective(torch.tensor([f_px], dtype=f64), torch.tensor([[c, c]], dtype=f64),
                      torch.zeros(1, 3, dtype=f64), torch.zeros(1, 3, dtype=f64))
    screen = cam.project_with_depth(tri3d[None])
    assert (screen[0, :, 2] < 0).any() and (screen[0, :, 2] > 0).any()
    counts = []
    for near in (1.0, 12.0):
        frag = rasterize(screen, torch.tensor([[0, 1, 2]]), (H, W), perspective=True, near=near, compiled=compiled)
        a, b, cc = tri3d
        normal = torch.linalg.cross(b - a, cc - a)
        expected = torch.zeros(H, W, dtype=torch.bool)
        margin = torch.full((H, W), math.inf, dtype=f64)
        for y in range(H):
            for x in range(W):
                ray = torch.tensor([(x - c) / f_px, -(y - c) / f_px, -1.0], dtype=f64)
                t = (normal @ a) / (normal @ ray)
                p = t * ray
                # barycentrics in 3-D
                area = normal @ normal
                lam = torch.stack([normal @ torch.linalg.cross(cc - b, p - b),
                                   normal @ torch.linalg.cross(a - cc, p - cc),
                                   normal @ torch.linalg.cross(b - a, p - a)]) / area
                expected[y, x] = bool(t >= near and (lam >= 0).all())
                margin[y, x] = min(lam.abs().min().item(), abs(t.item() - near))
        differ = frag.mask[0] != expected
        assert not (differ & (margin > 1e-9)).any()
        counts.append(int(expected.sum()))
        # perspective-correct barycentrics: interpolating camera-space points gives points on the rays
        p = interpolate(tri3d[None], frag, torch.tensor([[0, 1, 2]]))[0][frag.mask[0]]
        ys, xs = frag.mask[0].nonzero(as_tuple=True)
        assert torch.allclose(p[:, 0] / -p[:, 2], (xs.to(f64) - c) / f_px, atol=1e-9)
        assert torch.allclose(p[:, 1] / p[:, 2], (ys.to(f64) - c) / f_px, atol=1e-9)
        assert torch.allclose(-p[:, 2], frag.depth[0][frag.mask[0]], atol=1e-9)
    assert H * W > counts[0] > counts[1] > 20  # the near plane cuts pixels away


def test_gl_coverage_matches_moderngl():
    """Coverage equals an independent GPU-style rasteriser (moderngl, EGL) up to pixels on edges."""
    moderngl = pytest.importorskip("moderngl")
    try:
        ctx = moderngl.create_standalone_context(backend="egl")
    except Exception as err:  # no EGL here: the brute-force reference tests still run
        pytest.skip(f"no EGL context: {err}")
    v, f = icosphere(3, radius=1.0)
    cam = ScaledOrthographic(torch.tensor([21.0], dtype=f64), torch.tensor([[0.3, 0.5, 0.0]], dtype=f64),
                             torch.tensor([[31.3, 29.6]], dtype=f64))
    screen = cam.project_with_depth(v[None])
    H = W = 64
    frag = rasterize(screen, f, (H, W), cull_backfaces=True)
    # GL: pixel centres at (i + 0.5) in window coordinates, y up
    ndc_x = (screen[0, :, 0] + 0.5) / W * 2 - 1
    ndc_y = 1 - (screen[0, :, 1] + 0.5) / H * 2
    pos = torch.stack([ndc_x, ndc_y, screen[0, :, 2] / 10], -1).float().numpy()
    prog = ctx.program(vertex_shader="#version 330\nin vec3 p; void main(){gl_Position=vec4(p,1.0);}",
                       fragment_shader="#version 330\nout vec4 c; void main(){c=vec4(1.0);}")
    vao = ctx.vertex_array(prog, [(ctx.buffer(pos.tobytes()), "3f", "p")],
                           index_buffer=ctx.buffer(f.numpy().astype("i4").tobytes()))
    fbo = ctx.simple_framebuffer((W, H), components=4)
    fbo.use()
    fbo.clear(0, 0, 0, 0)
    vao.render(moderngl.TRIANGLES)
    import numpy as np

    gl = np.frombuffer(fbo.read(components=4), dtype=np.uint8).reshape(H, W, 4)[::-1, :, 0] > 0
    ctx.release()
    # GL snaps vertices to 1/256 px: pixels within that of the silhouette may differ
    ref_cov = rasterize_reference(screen, f, (H, W), cull_backfaces=True)[0][0] >= 0
    assert torch.equal(frag.mask[0], ref_cov)
    differ = torch.from_numpy(gl.copy()) != frag.mask[0]
    for y, x in differ.nonzero().tolist():
        assert _distance_to_edges(x, y, screen[0, :, :2], f, frag.triangle_id[0]) < 1 / 64
    assert frag.mask.sum() > 1000


def _distance_to_edges(x, y, xy, triangles, ids):
    """Distance (px) from pixel centre (x, y) to the nearest edge of its or a neighbour's triangle."""
    pad = torch.nn.functional.pad(ids, (1, 1, 1, 1), value=-1)
    p = torch.tensor([x, y], dtype=f64)
    best = math.inf
    for t in {int(t) for t in pad[y:y + 3, x:x + 3].reshape(-1) if t >= 0}:
        for i in range(3):
            a, b = xy[triangles[t, i]], xy[triangles[t, (i + 1) % 3]]
            ab = b - a
            s = ((p - a) @ ab / (ab @ ab)).clamp(0, 1)
            best = min(best, float((a + s * ab - p).norm()))
    return best


def test_fragments_detach_and_input_checks():
    screen = _screen([(1, 1), (8, 1), (1, 8)]).requires_grad_(True)
    frag = rasterize(screen, torch.tensor([[0, 1, 2]]), (10, 10))
    assert frag.barycentric.requires_grad and not frag.detach().barycentric.requires_grad
    assert isinstance(frag, Fragments)
    with pytest.raises(ValueError, match=r"\(B, V, 3\)"):
        rasterize(screen[0], torch.tensor([[0, 1, 2]]), (10, 10))
    with pytest.raises(ValueError, match="int64"):
        rasterize(screen, torch.tensor([[0, 1, 2]], dtype=torch.int32), (10, 10))


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_watertight_on_edges_through_pixel_centres(dtype, compiled):
    """Shared edges through pixel centres leave no holes (edges are evaluated in one canonical direction)."""
    n = 9  # a UV-square grid as a texture layout produces it: cell diagonals pass through pixel centres
    t = (torch.linspace(-1, 1, n, dtype=f64) + 1) / 2 * 47
    gy, gx = torch.meshgrid(47 - t, t, indexing="ij")
    pts = torch.stack([gx, gy], -1).reshape(-1, 2)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    tris = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    # a fan of triangles around a vertex exactly on a pixel centre, with edges through pixel centres
    centre = torch.tensor([[46.0, 10.0]], dtype=f64)
    ring = centre + torch.tensor([[4.0, 0], [4, 4], [0, 4], [-4, 4], [-4, 0], [-4, -4], [0, -4], [4, -4]], dtype=f64)
    fan_pts = torch.cat([centre, ring])
    fan = torch.tensor([[0, 1 + i, 1 + (i + 1) % 8] for i in range(8)]) + pts.shape[0]
    xy = torch.cat([pts, fan_pts])
    screen = torch.cat([xy, torch.full((xy.shape[0], 1), 7.0, dtype=f64)], -1)[None].to(dtype)
    frag = rasterize(screen, torch.cat([tris, fan]), (50, 52), compiled=compiled)
    mask = frag.mask[0]
    lo, hi = 0.0, 47.0
    ys, xs = torch.meshgrid(torch.arange(50.0), torch.arange(52.0), indexing="ij")
    in_grid = (xs >= lo) & (xs <= hi) & (ys >= lo) & (ys <= hi)
    in_fan = ((xs - 46).abs() <= 4) & ((ys - 10).abs() <= 4)
    assert torch.equal(mask, in_grid | in_fan)


def test_non_finite_vertices_drop_only_their_triangles(compiled):
    screen = torch.tensor([[[1.0, 1, 5], [8, 1, 5], [1, 8, 5], [math.nan, 3, 5], [9, 9, 5], [math.inf, 2, 5]]])
    tris = torch.tensor([[0, 2, 1], [0, 3, 4], [1, 2, 4], [5, 1, 4]])
    ids = rasterize(screen, tris, (10, 10), compiled=compiled).triangle_id
    assert torch.equal(ids, rasterize_reference(screen, tris, (10, 10))[0])
    assert set(ids.unique().tolist()) == {-1, 0, 2}
