"""The compiled CPU kernels compute exactly what the tensor searches compute (bit for bit: same ids, same
orientations, same silhouette), on scenes built to hit every rule: overlapping triangles at equal depth,
depths of ±0, triangles behind the camera, non-finite vertices, culling on and off, both dtypes, batches; the
rasteriser both serially and split over parallel chunks. A whole render at two threads equals one at one thread,
and a forked child renders after its parent ran the parallel kernels."""
import math
import multiprocessing
import os

import numba
import pytest
import torch

from morphable.render.rasterize import rasterize_ids_facing
from morphable.render.silhouette import EdgeTopology, _boundary, soft_silhouette
from tests.conftest import torch_threads
from tests.render.conftest import icosphere


def _soup(seed: int, dtype, perspective: bool, count: int = 60, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of 2 random triangle soups with shared vertices, many exact depth ties and ±0 depths."""
    g = torch.Generator().manual_seed(seed)
    V = 3 * count // 2
    xy = torch.rand(2, V, 2, generator=g, dtype=torch.float64) * (size + 8) - 4
    xy[:, ::5] = torch.round(xy[:, ::5])  # vertices on pixel centres: edges through centres
    depth = torch.randint(0, 3, (2, V), generator=g).to(torch.float64) * 2.0  # few levels: equal depths
    if perspective:
        depth = depth + 0.5
        depth[:, ::7] = -depth[:, ::7]  # behind the camera
    else:
        depth[:, 1::6] = -0.0
    screen = torch.cat([xy, depth[..., None]], -1).to(dtype)
    tris = torch.stack([torch.randperm(V, generator=g)[:3] for _ in range(count)])
    return screen, tris


@pytest.fixture(params=[1, 3], ids=["serial", "3-chunks"])
def chunks(request, monkeypatch):
    """The compiled kernels serially, or split into 3 parallel chunks whatever this machine's core count (numba runs
    the chunks on the threads it has): the split's merge, not the machine, is under test."""
    import morphable.render.cpu_kernels as ck
    import morphable.render.deferred as deferred

    for module in (ck, deferred):
        monkeypatch.setattr(module, "kernel_threads", lambda items: request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("perspective", [False, True])
@pytest.mark.parametrize("cull", [False, True])
def test_compiled_rasteriser_equals_the_tensor_search(dtype, perspective, cull, chunks):
    for seed in range(4):
        screen, tris = _soup(seed, dtype, perspective)
        if seed == 3:
            screen[0, 4, 0], screen[1, 9, 2] = math.nan, math.inf
        kw = dict(cull_backfaces=cull, perspective=perspective, near=0.7)
        ids, facing = rasterize_ids_facing(screen, tris, (32, 30), compiled=True, **kw)
        ref_ids, ref_facing = rasterize_ids_facing(screen, tris, (32, 30), compiled=False, **kw)
        assert ids.dtype == torch.int64 and facing.dtype == torch.int8
        assert torch.equal(ids, ref_ids), f"seed {seed}: {int((ids != ref_ids).sum())} pixels differ"
        assert torch.equal(facing, ref_facing)
        assert (ids >= 0).sum() > 100  # the scene covers the image


def test_compiled_rasteriser_breaks_exact_ties_like_the_z_buffer_keys(chunks):
    """Coplanar copies of one triangle: the lowest id wins ties; depth −0.0 beats +0.0 (the keys' order). Split
    into 3 chunks, each copy is z-buffered by another thread and the merge must apply the same rule."""
    pts = torch.tensor([[1.0, 1.0], [9.0, 1.0], [1.0, 9.0]])
    screen = torch.cat([torch.cat([pts, torch.full((3, 1), z)], 1) for z in (0.0, 0.0, -0.0)])[None]
    tris = torch.tensor([[0, 2, 1], [3, 5, 4], [6, 8, 7]])
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        t = tris[order]
        ids, _ = rasterize_ids_facing(screen, t, (12, 12), compiled=True)
        ref, _ = rasterize_ids_facing(screen, t, (12, 12), compiled=False)
        assert torch.equal(ids, ref)
        covered = ids[ids >= 0]
        # inside, the −0.0 copy's depth is −0.0 and wins; on its edges +0.0 (−0 · −0) ties the other two
        assert (covered == order.index(2)).float().mean() > 0.6
        assert set(covered.tolist()) <= {order.index(2), min(order.index(0), order.index(1))}


@pytest.mark.parametrize("perspective", [False, True])
def test_compiled_silhouette_search_equals_the_tensor_search(ict_mesh, perspective):
    """Same silhouette edges, same nearest edge per boundary pixel: identical alpha and extrapolation ids (and
    so identical gradients), on the ICT head (thousands of folds inside its silhouette, long boundary edges) and
    an ellipsoid batch, in both dtypes."""
    from morphable.geometry.camera import Perspective, ScaledOrthographic

    vertices, f = ict_mesh
    ico, ico_f = icosphere(2, radius=140.0)
    for v, tris, size, rot in ((vertices[None], f, 64, [[0.1, 0.6, 0.0]]),
                               (ico[None].repeat(2, 1, 1) * torch.tensor([1.0, 1.2, 0.9], dtype=ico.dtype), ico_f, 24,
                                [[0.3, -0.4, 0.1], [-0.2, 0.9, 0.3]])):
        B = v.shape[0]
        rot = torch.tensor(rot, dtype=v.dtype)
        if perspective:
            cam = Perspective(torch.full((B,), 3.0 * size, dtype=v.dtype), torch.full((B, 2), size / 2 - 0.5, dtype=v.dtype),
                              rot, torch.tensor([[0.0, 10.0, -1000.0]], dtype=v.dtype).repeat(B, 1))
        else:
            cam = ScaledOrthographic(torch.full((B,), size / 330.0, dtype=v.dtype), rot,
                                     torch.full((B, 2), size / 2 - 0.3, dtype=v.dtype))
        screen = cam.project_with_depth(v)
        screen = screen.float() if size == 64 else screen  # both dtypes
        ids, facing = rasterize_ids_facing(screen, tris, (size, size), cull_backfaces=True, perspective=perspective)
        topo = EdgeTopology.build(tris)
        fast = soft_silhouette(screen, tris, ids, topo, perspective=perspective, facing=facing, compiled=True)
        ref = soft_silhouette(screen, tris, ids, topo, perspective=perspective, facing=facing, compiled=False)
        own = soft_silhouette(screen, tris, ids, topo, perspective=perspective, compiled=True)  # its own facing
        assert torch.equal(fast.alpha, ref.alpha) and torch.equal(fast.extended_id, ref.extended_id)
        assert torch.equal(own.alpha, ref.alpha) and torch.equal(own.extended_id, ref.extended_id)
        soft = (fast.alpha > 0) & (fast.alpha < 1)
        assert soft.sum() > 0.5 * int(_boundary(ids >= 0).sum()) and (fast.extended_id >= 0).sum() > 10


def _sphere_render(threads: int, requires_grad: bool = True):
    """A 96² SH render of a 5 120-triangle ellipsoid (over the parallel kernels' 4 096-item threshold) at ``threads``
    torch threads: image and the gradients of a weighted sum for vertices, colours and light."""
    from morphable.geometry.camera import ScaledOrthographic
    from morphable.render import Renderer, sh_directional

    with torch_threads(threads):
        v, f = icosphere(4, radius=40.0, dtype=torch.float32)
        v = (v * torch.tensor([1.0, 1.2, 0.9]))[None].requires_grad_(requires_grad)
        colors = (0.5 + 0.4 * torch.sin(v.detach() / 7)).requires_grad_(requires_grad)
        sh = sh_directional(torch.tensor([[0.3, 0.5, 1.0]]), torch.full((1, 3), 2.0), ambient=0.3)
        sh = sh.requires_grad_(requires_grad)
        cam = ScaledOrthographic(torch.tensor([0.9]), torch.tensor([[0.2, -0.3, 0.1]]), torch.tensor([[47.5, 47.0]]))
        out = Renderer(f, (96, 96))(v, cam, colors=colors, sh=sh)
        if not requires_grad:
            return out.image.detach(), ()
        w = torch.linspace(0.0, 1.0, out.image.numel()).view(out.image.shape)
        return out.image.detach(), torch.autograd.grad((out.image * w).sum(), (v, colors, sh))


def test_a_render_at_two_threads_equals_the_one_thread_render(monkeypatch):
    """At two torch threads the rasteriser and the shading run their parallel kernels: the same image (each pixel
    is computed alone, the z-buffer merge keeps the serial order) and the same gradients up to the order of the
    per-chunk sums."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread here (NUMBA_NUM_THREADS=1): no parallel kernel to compare")
    import morphable.render.cpu_kernels as ck

    used = []
    for name in ("_rasterize_parallel", "_sh_shade_forward_parallel", "_sh_shade_backward_parallel"):
        kernel = getattr(ck, name)
        monkeypatch.setattr(ck, name, lambda *a, _k=kernel, _n=name: used.append(_n) or _k(*a))
    one_image, one_grads = _sphere_render(1)
    assert used == []
    two_image, two_grads = _sphere_render(2)
    assert sorted(set(used)) == ["_rasterize_parallel", "_sh_shade_backward_parallel", "_sh_shade_forward_parallel"]
    assert (one_image.sum(-1) > 0).sum() > 4096  # enough packed pixels for the parallel shading
    assert torch.equal(two_image, one_image)
    for a, b in zip(two_grads, one_grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


def _render_in_child(queue) -> None:
    from morphable.render.kernel_threads import kernel_threads

    torch.set_num_threads(2)  # no torch operation runs at this count: the parent's OpenMP pool is gone in the child
    threads = kernel_threads(10**6)  # the rule's answer for a forked child, were torch allowed two threads
    torch.set_num_threads(1)  # as torch's DataLoader workers do
    image, _ = _sphere_render(1, requires_grad=False)
    queue.put((threads, image.numpy()))


def test_a_forked_child_renders_after_the_parent_ran_the_parallel_kernels():
    """GNU OpenMP is not fork-safe: numba's OpenMP layer terminates a forked child that launches a parallel kernel
    after its parent did. The kernels' thread rule keeps such a child on the serial kernels: it renders, and gets
    the parent's image."""
    from morphable.render import kernel_threads

    parent, _ = _sphere_render(2, requires_grad=False)
    if kernel_threads._launch_pid != os.getpid():
        pytest.skip("the parent ran no parallel kernel here (one numba thread): nothing to guard")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_render_in_child, args=(queue,))
    child.start()
    try:
        threads, image = queue.get(timeout=120)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0 and threads == 1
    assert torch.equal(torch.from_numpy(image), parent)
