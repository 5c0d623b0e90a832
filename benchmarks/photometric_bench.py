"""Photometric fitting vs the landmark-only fit on synthetic faces with known geometry.

Random ICT face-region instances (identity ~ N(0, 1), a few active blendshapes), random per-vertex albedo
(skin colour × symmetric low-frequency waves + per-vertex noise, see :func:`random_albedo`), random SH light
and pose are rendered at 224² over a random background with Gaussian noise
(σ = 0.01). Both fits get the projected model landmarks + 1 px noise (the model's fixed landmark
vertices, so the sparse fit runs without contour search to match how they were made). The error is the
mean vertex distance in mm over the face region after a similarity alignment (Umeyama) to the truth.

Albedo/light are compared up to the usual scale ambiguity: per channel, the fitted albedo is scaled by the
least-squares factor onto the true one over visible vertices, and the relative RMS error is reported; the
light by the correlation of the shading Lᵀφ(n) over the same vertices.

Last line: ``RESULT n=<int> sparse_err_mm=<mean> photo_err_mm=<mean> improvement=<1 - photo/sparse>
sec_per_image=<median>``.

    python benchmarks/photometric_bench.py [--n 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import morphable
from morphable.fitting.landmarks import fit_landmarks
from morphable.fitting.photometric import PhotometricConfig, fit_photometric
from morphable.geometry.align import umeyama
from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.mesh import vertex_normals
from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
from morphable.models.region import restrict
from morphable.render.renderer import Renderer
from morphable.render.shading import SH_AMBIENT, sh_basis, sh_directional

SIZE = 224


def random_albedo(points: torch.Tensor, mirror: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Skin-like random per-vertex albedo: a random base skin colour times (1 + a few random low-frequency
    waves over the surface, made left-right symmetric as facial albedo largely is) plus independent
    per-vertex noise (σ = 2 %, not symmetric)."""
    base = torch.tensor([0.75, 0.55, 0.45]) * rng.uniform(0.7, 1.1)
    field = torch.zeros(points.shape[0], 3)
    for _ in range(4):
        k = torch.as_tensor(rng.normal(size=3), dtype=torch.float32) / rng.uniform(25, 60)  # wavelength 25–60 mm
        phase = rng.uniform(0, 2 * math.pi)
        amp = torch.as_tensor(rng.uniform(0.03, 0.08, size=3), dtype=torch.float32)
        field += amp * torch.cos(points @ k + phase)[:, None]
    paired = mirror >= 0
    field[paired] = 0.5 * (field[paired] + field[mirror[paired]])
    noise = torch.as_tensor(rng.normal(scale=0.02, size=field.shape), dtype=torch.float32)
    return (base * (1 + field + noise)).clamp(0.05, 1.0)


def random_light(rng: np.random.Generator) -> torch.Tensor:
    """Ambient + one frontal-hemisphere directional light, slightly coloured. ``(1, 9, 3)``."""
    d = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.5, 0.7), 1.0])
    d = torch.as_tensor(d / np.linalg.norm(d), dtype=torch.float32)[None]
    irr = torch.as_tensor(rng.uniform(1.2, 2.2) * rng.uniform(0.9, 1.1, size=3), dtype=torch.float32)[None]
    return sh_directional(d, irr, ambient=rng.uniform(0.35, 0.6)).float()


def make_instance(sub, rng: np.random.Generator):
    ident = torch.as_tensor(rng.normal(size=(1, sub.n_identity)), dtype=torch.float32)
    expr = torch.zeros(1, sub.n_expression)
    active = rng.choice(sub.n_expression, size=3, replace=False)
    expr[0, active] = torch.as_tensor(rng.uniform(0, 0.4, size=3), dtype=torch.float32)
    verts = sub(identity=ident, expression=expr).vertices
    ypr = torch.tensor([[math.radians(rng.uniform(-30, 30)), math.radians(rng.uniform(-15, 15)),
                         math.radians(rng.uniform(-10, 10))]])
    rot = matrix_to_axis_angle(euler_to_matrix(ypr))
    width = float(sub.mean[:, 0].max() - sub.mean[:, 0].min())
    scale = torch.tensor([rng.uniform(0.75, 0.9) * SIZE / width])
    trans = torch.tensor([[SIZE / 2 + rng.uniform(-6, 6), SIZE / 2 + rng.uniform(-6, 6)]])
    cam = ScaledOrthographic(scale, rot, trans)
    albedo = random_albedo(sub.mean, sub.symmetry, rng)[None]
    light = random_light(rng)
    background = torch.as_tensor(rng.uniform(0.1, 0.9, size=(1, 3)), dtype=torch.float32)
    render = Renderer(sub.triangles, (SIZE, SIZE))(verts, cam, colors=albedo, sh=light, background=background)
    image = (render.image + torch.as_tensor(rng.normal(scale=0.01, size=render.image.shape), dtype=torch.float32)).clamp(0, 1)
    lmk = cam.project(sub.landmarks(verts))
    lmk = lmk + torch.as_tensor(rng.normal(size=lmk.shape), dtype=torch.float32)
    lmk[:, ~sub.landmark_mask] = float("nan")
    return image, lmk, verts, albedo, light, cam


def aligned_error(fitted: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean vertex distance (mm) after the similarity that best maps ``fitted`` onto ``truth``."""
    f, t = fitted.detach().double().numpy(), truth.detach().double().numpy()
    return float(np.linalg.norm(umeyama(f, t).apply(f) - t, axis=1).mean())


def albedo_light_recovery(fit, albedo, light, verts_true, cam_true) -> tuple[float, float]:
    """(relative RMS albedo error after per-channel scale, correlation of the shading) on visible vertices."""
    n_true = vertex_normals(cam_true.transform(verts_true), fit.region_triangles)
    visible = n_true[0, :, 2] > 0.3
    a_fit, a_true = fit.albedo[0][visible], albedo[0][visible]
    k = (a_fit * a_true).sum(0) / (a_fit * a_fit).sum(0)
    rel = float(((k * a_fit - a_true).norm() / a_true.norm()))
    s_true = (sh_basis(n_true[0][visible]) @ light[0])
    s_fit = (sh_basis(n_true[0][visible]) @ fit.light[0])
    corr = float(np.corrcoef(s_true.reshape(-1).numpy(), s_fit.reshape(-1).numpy())[0, 1])
    return rel, corr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = morphable.load_model("ict")
    sub = restrict(model, model.regions["face"], name="ict_face")
    rng = np.random.default_rng(args.seed)
    config = PhotometricConfig(region=None)
    # warm-up (first-call allocations), not timed
    image, lmk, *_ = make_instance(sub, rng)
    fit_photometric(sub, image, lmk, init=fit_landmarks(sub, lmk, contour=False), config=PhotometricConfig(
        region=None, iterations=(3, 2)))
    sparse_err, photo_err, seconds, rel_albedo, light_corr = [], [], [], [], []
    for i in range(args.n):
        image, lmk, verts, albedo, light, cam = make_instance(sub, rng)
        t0 = time.perf_counter()
        sparse = fit_landmarks(sub, lmk, contour=False)
        fit = fit_photometric(sub, image, lmk, init=sparse, config=config)
        seconds.append(time.perf_counter() - t0)
        sparse_err.append(aligned_error(sparse.vertices[0], verts[0]))
        photo_err.append(aligned_error(fit.vertices[0], verts[0]))
        ra, lc = albedo_light_recovery(fit, albedo, light, verts, cam)
        rel_albedo.append(ra)
        light_corr.append(lc)
        print(f"face {i:2d}: sparse {sparse_err[-1]:.2f} mm  photometric {photo_err[-1]:.2f} mm  "
              f"{seconds[-1]:.2f} s  {len(fit.history)} steps  albedo rel. error {ra:.3f}  shading corr {lc:.3f}",
              flush=True)
    s, p = float(np.mean(sparse_err)), float(np.mean(photo_err))
    print(f"albedo (after per-channel scale): mean relative RMS error {np.mean(rel_albedo):.3f}; "
          f"shading correlation with the true light: mean {np.mean(light_corr):.3f}")
    print(f"RESULT n={args.n} sparse_err_mm={s:.3f} photo_err_mm={p:.3f} improvement={1 - p / s:.3f} "
          f"sec_per_image={float(np.median(seconds)):.2f}")


if __name__ == "__main__":
    main()
