"""An independent renderer for the benchmarks: moderngl (OpenGL 3.3, offscreen EGL, llvmpipe on a CPU).

Benchmarks that fit faces *from images* render their test images with this instead of our own
differentiable renderer, so a bug shared by our renderer and our fitter cannot cancel out.

Image formation (one frame, no shadows):

* **Camera**: a pinhole camera with our :class:`morphable.geometry.camera.Perspective` convention:
  ``X_c = R X + t``, the camera looks along −z, ``u = f · X_c,x / (−X_c,z) + c_x``,
  ``v = −f · X_c,y / (−X_c,z) + c_y`` in pixels (x right, y down, pixel centres at integers, origin at the
  centre of the top-left pixel). :func:`projection_matrix` turns ``(f, c, W, H)`` into OpenGL's clip-space
  matrix so that a point lands exactly at ``(u, v)``: window x = u + ½ and window y = H − (v + ½).
* **Shading**: Lambertian skin with per-vertex albedo ``ρ`` (linear RGB in [0, 1]):
  ``I = ρ · (ambient + diffuse · max(0, n · l))``, ``n`` the interpolated smooth vertex normal and ``l``
  a directional light given in the camera frame; then ``I^(1/γ)`` (display gamma, ``γ = 2.2``) over a flat
  background colour.
* **Anti-aliasing**: ``supersample``² samples per pixel: the frame is drawn ``supersample`` times larger
  (focal length × s, principal point ``s · c + (s − 1)/2``, so that a point keeps its sub-pixel position)
  and box-filtered down.

Everything here needs an EGL context; :func:`gl_available` says whether one can be created (the tests skip
without one, outside CI).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_VERTEX = """
#version 330
uniform mat4 mvp;            // clip <- camera
uniform mat3 rot;            // camera <- model (rotation part)
uniform vec3 trans;          // camera <- model (translation, mm)
in vec3 in_pos; in vec3 in_normal; in vec3 in_albedo;
out vec3 normal_c; out vec3 albedo;
void main() {
    vec3 pc = rot * in_pos + trans;
    normal_c = rot * in_normal;
    albedo = in_albedo;
    gl_Position = mvp * vec4(pc, 1.0);
}
"""
_FRAGMENT = """
#version 330
uniform vec3 light_dir;      // unit, camera frame, towards the light
uniform float ambient; uniform float diffuse; uniform float inv_gamma;
in vec3 normal_c; in vec3 albedo;
out vec4 frag;
void main() {
    vec3 n = normalize(normal_c);
    vec3 c = albedo * (ambient + diffuse * max(dot(n, light_dir), 0.0));
    frag = vec4(pow(clamp(c, 0.0, 1.0), vec3(inv_gamma)), 1.0);
}
"""


@dataclass(frozen=True)
class PinholeCamera:
    """Pinhole camera in the :class:`~morphable.geometry.camera.Perspective` convention (numpy, one view).

    Attributes:
        focal: focal length, px. principal_point: (2,) px.
        rotation: (3, 3) model -> camera. translation: (3,) mm, model -> camera.
    """

    focal: float
    principal_point: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) model points (mm) -> (N, 2) pixels."""
        pc = np.asarray(points, np.float64) @ self.rotation.T + self.translation
        depth = -pc[:, 2]
        return np.stack([self.focal * pc[:, 0] / depth + self.principal_point[0],
                         -self.focal * pc[:, 1] / depth + self.principal_point[1]], axis=1)


def look_at_face(centre: np.ndarray, yaw_deg: float, distance_mm: float, focal: float,
                 size: tuple[int, int], pitch_deg: float = 0.0) -> PinholeCamera:
    """Camera ``distance_mm`` in front of ``centre`` (model +z), the head turned by ``yaw_deg`` about the
    model's vertical axis (+ = the subject turns to their left, showing their right cheek) and
    ``pitch_deg`` about x; ``centre`` lands on the image centre. ``size`` is ``(W, H)``."""
    a, b = np.radians(yaw_deg), np.radians(pitch_deg)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rotation = rx @ ry
    translation = np.array([0.0, 0.0, -distance_mm]) - rotation @ np.asarray(centre, np.float64)
    w, h = size
    return PinholeCamera(float(focal), np.array([(w - 1) / 2, (h - 1) / 2]), rotation, translation)


def projection_matrix(focal: float, principal_point: np.ndarray, width: int, height: int,
                      near: float = 10.0, far: float = 5000.0) -> np.ndarray:
    """(4, 4) OpenGL projection (clip <- camera frame, mm) reproducing the pinhole pixel mapping.

    ``x_ndc = 2 (u + ½) / W − 1`` with ``u = f x / (−z) + c_x``, hence
    ``x_clip = (2f/W) x + (2(c_x + ½)/W − 1)(−z)``; likewise ``y_ndc = 1 − 2 (v + ½) / H`` with the y flip.
    ``w_clip = −z``; depth maps [near, far] to [−1, 1].
    """
    cx, cy = float(principal_point[0]), float(principal_point[1])
    m = np.zeros((4, 4))
    m[0, 0] = 2 * focal / width
    m[0, 2] = -(2 * (cx + 0.5) / width - 1)
    m[1, 1] = 2 * focal / height
    m[1, 2] = -(1 - 2 * (cy + 0.5) / height)
    m[2, 2] = -(far + near) / (far - near)
    m[2, 3] = -2 * far * near / (far - near)
    m[3, 2] = -1.0
    return m


@lru_cache(maxsize=1)
def _context():
    import moderngl

    return moderngl.create_standalone_context(backend="egl")


def gl_available() -> str | None:
    """None when an EGL context can be created, else why not (one line)."""
    try:
        _context()
    except Exception as err:  # noqa: BLE001 - any failure means "no GL here"
        return f"moderngl/EGL unavailable: {err.__class__.__name__}: {err}".splitlines()[0]
    return None


def render(vertices: np.ndarray, triangles: np.ndarray, albedo: np.ndarray, camera: PinholeCamera,
           size: tuple[int, int], *, light_dir: tuple[float, float, float] = (0.3, 0.35, 1.0),
           ambient: float = 0.25, diffuse: float = 0.85, background: tuple[float, float, float] = (0.5, 0.5, 0.5),
           gamma: float = 2.2, supersample: int = 3) -> np.ndarray:
    """Render a mesh with Lambertian shading.

    Args:
        vertices: (V, 3) mm, model frame. triangles: (F, 3) int (counter-clockwise seen from outside).
        albedo: (V, 3) linear RGB in [0, 1], or (3,) for a uniform colour.
        camera: :class:`PinholeCamera`. size: ``(W, H)`` px.
        light_dir: direction towards the light in the camera frame (normalised here).
        ambient, diffuse: light strengths. background: RGB in [0, 1] (shown as is, no gamma).
        gamma: display gamma (1 = linear output). supersample: samples per pixel side.
    Returns:
        (H, W, 3) uint8 RGB, row 0 at the top.
    """
    import moderngl

    from morphable.viz.overlay import vertex_normals

    vertices = np.asarray(vertices, np.float64)
    triangles = np.asarray(triangles, np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"render: expected vertices (V, 3) and triangles (F, 3), got {vertices.shape}, "
                         f"{triangles.shape}")
    albedo = np.broadcast_to(np.asarray(albedo, np.float64), vertices.shape)
    s = int(supersample)
    w, h = size
    big_w, big_h = w * s, h * s
    ctx = _context()
    prog = ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
    pp = np.asarray(camera.principal_point, np.float64) * s + (s - 1) / 2
    prog["mvp"].write(projection_matrix(camera.focal * s, pp, big_w, big_h).T.astype("f4").tobytes())
    prog["rot"].write(np.asarray(camera.rotation, np.float64).T.astype("f4").tobytes())   # GLSL: column-major
    light = np.asarray(light_dir, np.float64)
    prog["light_dir"].value = tuple(float(x) for x in light / np.linalg.norm(light))
    prog["ambient"].value, prog["diffuse"].value, prog["inv_gamma"].value = ambient, diffuse, 1.0 / gamma
    # positions relative to their centroid in float32 (mm values of ~1e2 keep ~1e-5 mm precision)
    centre = vertices.mean(axis=0)
    prog["trans"].value = tuple(float(x) for x in camera.translation + camera.rotation @ centre)
    buffers = [ctx.buffer((vertices - centre).astype("f4").tobytes()),
               ctx.buffer(vertex_normals(vertices, triangles).astype("f4").tobytes()),
               ctx.buffer(albedo.astype("f4").tobytes())]
    ibo = ctx.buffer(triangles.astype("i4").tobytes())
    vao = ctx.vertex_array(prog, [(buffers[0], "3f", "in_pos"), (buffers[1], "3f", "in_normal"),
                                  (buffers[2], "3f", "in_albedo")], index_buffer=ibo)
    targets = [ctx.renderbuffer((big_w, big_h), components=4, dtype="f4"), ctx.depth_renderbuffer((big_w, big_h))]
    fbo = ctx.framebuffer(color_attachments=[targets[0]], depth_attachment=targets[1])
    try:
        fbo.use()
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.CULL_FACE)
        fbo.clear(*background, 1.0, depth=1.0)
        vao.render(moderngl.TRIANGLES)
        raw = np.frombuffer(fbo.read(components=3, dtype="f4"), dtype=np.float32).reshape(big_h, big_w, 3)
    finally:
        for obj in (vao, ibo, *buffers, fbo, *targets, prog):
            obj.release()
    image = raw[::-1].reshape(h, s, w, s, 3).mean(axis=(1, 3))          # GL rows start at the bottom
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
