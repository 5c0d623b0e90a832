"""Renderer speed on CPU: 224×224 SH-shaded render of (a) the ICT model's mean mesh and (b) a 35k-vertex /
70k-triangle sphere; median forward and forward+backward times, against moderngl's offscreen EGL forward
render of the same mesh measured in the same run (upload vertices, draw with depth test and per-vertex SH
shading, read the image back). ``nan`` when no EGL context can be created. The torch and GL calls are
timed alternately (one of each per repeat), so both see the same load on a shared machine; the ratios
``fwd_bwd / gl`` are the figures to compare across runs. (c) batched rendering: B sphere images of one
topology in one call, milliseconds per image for B = 1, 2, 4 (sub-linear scaling: per-image time falls).

    .venv/bin/python benchmarks/render_bench.py [--repeats 20] [--threads 2] [--profile 12]

``--profile N`` also prints the N operators with the most self CPU time (``torch.profiler``) of 10
forward+backward renders of each mesh (the top kernels), before the RESULT line.

Wall-clock medians are the figures; the process CPU-time medians printed beside them (all threads,
llvmpipe's included) are steadier on a shared, loaded machine. With ``--threads 2`` on cores other busy
processes share, OpenMP's default active spin-waiting multiplies the torch CPU time (measured 4×: 367 vs
87 ms per sphere forward+backward); ``OMP_WAIT_POLICY=PASSIVE`` in the environment avoids it.

Last line: ``RESULT fwd_ms=<35k forward> fwd_bwd_ms=<35k forward+backward> gl_fwd_ms=<moderngl forward or nan>
ratio=<fwd_bwd/gl> cpu_ratio=<the same in CPU time> ict_fwd_bwd_ms=… ict_gl_fwd_ms=… ict_ratio=…
ict_cpu_ratio=… b4_per_image_ms=<(c) at B = 4>``.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from morphable.geometry.camera import ScaledOrthographic
from morphable.render import Renderer, sh_directional

SIZE = 224


def sphere(count: int = 133) -> tuple[torch.Tensor, torch.Tensor]:
    """UV sphere of radius 100 mm; ``count = 133``: 35 378 vertices, 70 752 triangles."""
    import trimesh

    m = trimesh.creation.uv_sphere(radius=100.0, count=[count, count])
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.int64)


def ict_mean() -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        import morphable

        model = morphable.load_model("ict")
    except Exception as err:  # the benchmark still runs the sphere without the model
        print(f"ICT model unavailable ({err}); skipping (a)")
        return None
    return model.mean.float(), model.triangles


def _median_ms(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall-clock and process-CPU milliseconds of each of ``fns`` (name -> callable), called in turn
    once per repeat after 3 warm-up rounds, so that they share the machine's load."""
    for _ in range(3):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    med = lambda d: {k: 1000.0 * statistics.median(v) for k, v in d.items()}  # noqa: E731
    return med(wall), med(cpu)


def torch_calls(vertices: torch.Tensor, triangles: torch.Tensor, batch: int = 1) -> dict:
    """Forward and forward+backward closures rendering ``batch`` views of the mesh in one call."""
    extent = (vertices.amax(0) - vertices.amin(0))[:2].max()
    center = (vertices.amax(0) + vertices.amin(0)) / 2
    yaw = torch.linspace(0.3, -0.3, batch) if batch > 1 else torch.tensor([0.3])
    cam = ScaledOrthographic(torch.full((batch,), 0.85 * SIZE / float(extent)),
                             torch.stack([torch.full((batch,), 0.1), yaw, torch.zeros(batch)], -1),
                             torch.full((batch, 2), SIZE / 2))
    verts = (vertices - center)[None].repeat(batch, 1, 1).requires_grad_(True)
    colors = torch.full_like(verts, 0.7).requires_grad_(True)
    sh = sh_directional(torch.tensor([[0.3, 0.4, 1.0]]), torch.full((1, 3), 2.0), ambient=0.4)
    sh = sh.repeat(batch, 1, 1).requires_grad_(True)
    renderer = Renderer(triangles, (SIZE, SIZE))

    def forward():
        with torch.no_grad():
            return renderer(verts, cam, colors=colors, sh=sh)

    def forward_backward():
        out = renderer(verts, cam, colors=colors, sh=sh)
        out.image.sum().backward()

    return {"fwd": forward, "fwd_bwd": forward_backward}


# the same φ(n) constants as morphable.render.shading.sh_basis
_VERTEX = """
#version 330
in vec3 in_pos; in vec3 in_normal;
uniform vec3 sh[9];
out vec3 color;
void main() {
    vec3 n = normalize(in_normal);
    float b[9] = float[9](0.282095, 0.325735 * n.y, 0.325735 * n.z, 0.325735 * n.x, 0.273137 * n.x * n.y,
        0.273137 * n.y * n.z, 0.078848 * (3.0 * n.z * n.z - 1.0), 0.273137 * n.x * n.z,
        0.136569 * (n.x * n.x - n.y * n.y));
    vec3 c = vec3(0.0);
    for (int k = 0; k < 9; k++) c += b[k] * sh[k];
    color = 0.7 * c;
    gl_Position = vec4(in_pos, 1.0);
}
"""
_FRAGMENT = """
#version 330
in vec3 color; out vec4 frag;
void main() { frag = vec4(color, 1.0); }
"""


def gl_call(vertices: torch.Tensor, triangles: torch.Tensor):
    """moderngl (EGL, offscreen) forward: upload positions, draw with z-test, read back. None if unavailable."""
    try:
        import moderngl

        ctx = moderngl.create_standalone_context(backend="egl")
    except Exception as err:
        print(f"moderngl/EGL unavailable: {err}")
        return None
    print(f"GL renderer: {ctx.info.get('GL_RENDERER')}")
    extent = float((vertices.amax(0) - vertices.amin(0))[:2].max())
    center = (vertices.amax(0) + vertices.amin(0)) / 2
    pos = ((vertices - center) / (extent / 1.7)).numpy().astype("f4")  # NDC, fits like the torch render
    pos[:, 2] *= -0.5
    from morphable.geometry.mesh import vertex_normals

    normals = vertex_normals(vertices[None], triangles)[0].numpy().astype("f4")
    prog = ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
    sh = sh_directional(torch.tensor([[0.3, 0.4, 1.0]]), torch.full((1, 3), 2.0), ambient=0.4)[0]
    prog["sh"].write(sh.numpy().astype("f4").tobytes())
    vbo = ctx.buffer(pos.tobytes())
    nbo = ctx.buffer(normals.tobytes())
    ibo = ctx.buffer(triangles.numpy().astype("i4").tobytes())
    vao = ctx.vertex_array(prog, [(vbo, "3f", "in_pos"), (nbo, "3f", "in_normal")], index_buffer=ibo)
    fbo = ctx.simple_framebuffer((SIZE, SIZE), components=4)
    fbo.use()
    ctx.enable(moderngl.DEPTH_TEST)

    def render():
        vbo.write(pos.tobytes())
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        vao.render(moderngl.TRIANGLES)
        return np.frombuffer(fbo.read(components=4), dtype=np.uint8)

    return render


def _report(name: str, v: torch.Tensor, f: torch.Tensor, repeats: int) -> tuple[float, float, float, float]:
    fns = torch_calls(v, f)
    gl = gl_call(v, f)
    if gl is not None:
        fns["gl"] = gl
    wall, cpu = _median_ms(fns, repeats)
    fwd, fb, gl_ms = wall["fwd"], wall["fwd_bwd"], wall.get("gl", math.nan)
    print(f"{name} V={v.shape[0]} F={f.shape[0]}: fwd {fwd:.1f} ms, fwd+bwd {fb:.1f} ms, moderngl fwd {gl_ms:.1f} ms, "
          f"fwd_bwd/gl = {fb / gl_ms:.2f}  (CPU time: fwd {cpu['fwd']:.1f}, fwd+bwd {cpu['fwd_bwd']:.1f}, "
          f"gl {cpu.get('gl', math.nan):.1f} ms)")
    return fwd, fb, gl_ms, cpu["fwd_bwd"] / cpu.get("gl", math.nan)


def profile_top(name: str, v: torch.Tensor, f: torch.Tensor, top: int) -> None:
    """Print the ``top`` operators by self CPU time over 10 forward+backward renders (after 3 warm-up ones)."""
    from torch.profiler import ProfilerActivity, profile

    fn = torch_calls(v, f)["fwd_bwd"]
    for _ in range(3):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            fn()
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops) / 10e3
    calls = sum(e.count for e in ops) / 10
    print(f"profile {name} fwd+bwd: {total:.1f} ms self CPU per render (profiled), {calls:.0f} operator calls")
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"  {e.key[:36]:36s} {e.self_cpu_time_total / 10e3:7.2f} ms  {e.count / 10:5.0f} calls")


def batch_scaling(v: torch.Tensor, f: torch.Tensor, repeats: int, sizes=(1, 2, 4)) -> dict[int, float]:
    """Forward+backward milliseconds per image when B views of one topology are rendered in one call."""
    fns = {b: torch_calls(v, f, b)["fwd_bwd"] for b in sizes}
    wall, cpu = _median_ms(fns, max(3, repeats // 2))
    per = {b: wall[b] / b for b in sizes}
    print("(c) batched sphere fwd+bwd per image: " + ", ".join(
        f"B={b}: {per[b]:.1f} ms ({per[b] / per[sizes[0]]:.2f}×; CPU {cpu[b] / b:.1f})" for b in sizes))
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N top operators per mesh")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {SIZE}x{SIZE}")

    ict = ict_mean()
    ict_fb = ict_gl = ict_cpu_ratio = math.nan
    if ict is not None:
        _, ict_fb, ict_gl, ict_cpu_ratio = _report("(a) ICT mean mesh", *ict, args.repeats)
    v, f = sphere()
    fwd, fb, gl, cpu_ratio = _report("(b) sphere", v, f, args.repeats)
    per = batch_scaling(v, f, args.repeats)
    if args.profile:
        if ict is not None:
            profile_top("ICT mean mesh", *ict, args.profile)
        profile_top("sphere", v, f, args.profile)
    print(f"RESULT fwd_ms={fwd:.2f} fwd_bwd_ms={fb:.2f} gl_fwd_ms={gl:.2f} ratio={fb / gl:.2f} cpu_ratio={cpu_ratio:.2f} "
          f"ict_fwd_bwd_ms={ict_fb:.2f} ict_gl_fwd_ms={ict_gl:.2f} ict_ratio={ict_fb / ict_gl:.2f} "
          f"ict_cpu_ratio={ict_cpu_ratio:.2f} b4_per_image_ms={per[4]:.2f}")


if __name__ == "__main__":
    main()
