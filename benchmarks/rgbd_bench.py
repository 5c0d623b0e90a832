"""RGB-D shape accuracy on synthetic ICT faces: ``fit_rgbd`` and the photometric fit with depth against the
RGB-only landmark and photometric fits, and the refined basis (``refine_basis``, E_regA) on faces outside the
model's span.

    python benchmarks/rgbd_bench.py [--faces 8] [--first-seed 0] [--threads 1]

**Faces.** ICT (``morphable.load_model("ict")``): identity N(0, 1) in all 100 components, the 53 blendshape
weights U(0, 0.3), yaw/pitch/roll U(±25°, ±15°, ±5°), 650 mm from a 320 × 320 pinhole camera (focal 700 px,
~0.93 mm per pixel at the face). Depth: our renderer's depth buffer of the whole head mesh (eyeballs, teeth,
eyelashes included) + N(0, 0.5 mm) per pixel, 15 % of the pixels dropped and a 35 × 30-px block missing.
Landmarks: the model's 68 landmark vertices projected, + N(0, 0.5 px). Colour image, registered with the
depth (the same pinhole): the head rendered with ``train/synthetic.random_albedo`` and ``random_light`` over a
grey-blue background, + N(0, 0.01) per channel. Seeds ``first-seed …`` (the default 0–7 were not used to
choose any setting: the fits' and the refinement's settings were chosen on seeds 100–105, see
docs/tracking.md and ``PhotometricConfig.geo_shape_lr_scale``).

**Shape error** (``rgbd``, ``rgb``): mean vertex distance over ICT's ``face`` region (9 409 vertices, the
hidden side included) after a similarity alignment (NoW / MICC; the RGB-only fit has no metric scale), and
over the vertices the depth camera sees (``seen``), for four fits of the same face: :func:`fit_rgbd` (depth
+ landmarks), :func:`fit_photometric` with ``depth=`` (colour + depth + landmarks), and two RGB-only anchors,
:func:`fit_landmarks` (the default fit's landmark stage, no contour: the synthetic landmarks are fixed
vertices) and :func:`fit_photometric` from it (the colour image + landmarks).

**Refined basis** (off-model faces): the same faces plus 4 Gaussian bumps along the normals (±1–3 mm, σ 6–15
mm, on the front of the face), which no combination of the basis gives. Measured as the mean distance from
the seen true vertices to the fitted surface (camera frame, no alignment: RGB-D is metric), before and
after :func:`refine_basis`; vertex-to-vertex errors are printed too (the refinement moves vertices along
the normals only, so it cannot undo a tangential slip of the coefficient fit).

The last line is ``RESULT n=<faces> rgbd_err_mm= rgb_err_mm= ratio= photometric_depth_err_mm=
photometric_rgb_err_mm= surface_fit_mm= surface_refined_mm=`` (means over the faces; ``rgb_err_mm`` and
``ratio`` are the landmark anchor's).
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

SIZE, FOCAL, DISTANCE = 320, 700.0, 650.0
CENTRE = ((SIZE - 1) / 2, (SIZE - 1) / 2)


def bumps(model, normals: torch.Tensor, face: torch.Tensor, g: torch.Generator, k: int = 4) -> torch.Tensor:
    """``(V, 3)`` mm: ``k`` Gaussian bumps along the mean's normals centred on random front face vertices."""
    front = face[model.mean[face, 2].double() > 60]
    d = torch.zeros(model.n_vertices, 3, dtype=torch.float64)
    for centre in front[torch.randint(len(front), (k,), generator=g)]:
        amplitude = (1 + 2 * float(torch.rand(1, generator=g))) * (1 if float(torch.rand(1, generator=g)) < 0.5 else -1)
        sigma = 6 + 9 * float(torch.rand(1, generator=g))
        w = torch.exp(-(model.mean.double() - model.mean[centre].double()).pow(2).sum(1) / (2 * sigma**2))
        d += amplitude * w[:, None] * normals
    return d


def scene(model, seed: int, off_model: bool):
    """Depth ``(S, S)``, landmarks ``(68, 2)``, true camera, true vertices ``(V, 3)``, seen mask ``(V,)`` and the
    registered colour image ``(S, S, 3)`` in [0, 1]."""
    from morphable.geometry.camera import Perspective
    from morphable.geometry.mesh import vertex_normals
    from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
    from morphable.render.renderer import Renderer
    from morphable.train.synthetic import random_albedo, random_light

    f64 = torch.float64
    g = torch.Generator().manual_seed(seed)
    identity = torch.randn(model.n_identity, generator=g, dtype=f64)
    expression = 0.3 * torch.rand(model.n_expression, generator=g, dtype=f64)
    angles = (torch.rand(3, generator=g, dtype=f64) * 2 - 1) * torch.tensor([15.0, 25.0, 5.0], dtype=f64)
    cam = Perspective(torch.tensor([FOCAL], dtype=f64), torch.tensor([CENTRE], dtype=f64),
                      matrix_to_axis_angle(euler_to_matrix(angles[None].deg2rad())),
                      torch.tensor([[0.0, 0.0, -DISTANCE]], dtype=f64))
    m = copy.deepcopy(model).double()  # a float64 copy: Module.double() would convert the caller's model in place
    vertices = m(identity=identity[None], expression=expression[None]).vertices
    if off_model:
        face = torch.as_tensor(model.regions["face"])
        vertices = vertices + bumps(m, vertex_normals(m.mean[None], m.triangles)[0], face, g)[None]
    clean = Renderer.from_model(m, (SIZE, SIZE), soft_silhouette=False)(vertices, cam).depth[0]
    rng = np.random.default_rng(seed)
    colour = Renderer.from_model(m, (SIZE, SIZE))(
        vertices, cam, colors=random_albedo(m.mean, m.symmetry, rng)[None].double(), sh=random_light(rng).double(),
        background=torch.tensor([[0.4, 0.5, 0.6]], dtype=f64)).image[0]
    image = (colour + 0.01 * torch.as_tensor(rng.normal(size=colour.shape))).clamp(0, 1)
    depth = clean + 0.5 * torch.randn(clean.shape, generator=g, dtype=f64)
    depth[torch.rand(depth.shape, generator=g) < 0.15] = float("nan")
    depth[150:180, 100:135] = 0.0
    landmarks = cam.project(vertices[:, model.landmark_indices[:, 0]])[0]
    landmarks = landmarks + 0.5 * torch.randn(landmarks.shape, generator=g, dtype=f64)
    uvd = cam.project_with_depth(vertices)[0]
    px = uvd[:, :2].round().long().clamp(0, SIZE - 1)
    seen = (clean[px[:, 1], px[:, 0]] - uvd[:, 2]).abs() < 1.0
    return depth, landmarks, cam, vertices[0], seen, image


def aligned_error(fitted: torch.Tensor, truth: torch.Tensor, face: torch.Tensor,
                  seen: torch.Tensor) -> tuple[float, float]:
    """Mean vertex distance (mm) over the ``face`` region and over its seen part, after a similarity
    alignment over the region."""
    from morphable.geometry.align import aligned_distances

    e = aligned_distances(fitted[face], truth[face])
    return float(e.mean()), float(e[seen[face].numpy()].mean())


def surface_error(fitted: torch.Tensor, camera, truth: torch.Tensor, true_camera, face_mesh,
                  seen: torch.Tensor) -> float:
    """Mean distance (mm) from the seen true ``face`` vertices to the fitted face surface, both in the camera frame."""
    from morphable.geometry.closest_point import closest_points

    mask = torch.zeros(len(truth), dtype=torch.bool)
    mask[face_mesh.vertex_ids] = True
    T = true_camera.transform(truth[None])[0][mask & seen].numpy()
    F = camera.transform(fitted[None].double())[0][face_mesh.vertex_ids].numpy()
    return float(closest_points(T, F, face_mesh.triangles.numpy()).distance.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import morphable
    from morphable.fitting.landmarks import fit_landmarks
    from morphable.fitting.photometric import fit_photometric
    from morphable.fitting.rgbd import RegisteredDepth, fit_rgbd, refine_basis
    from morphable.geometry.mesh import submesh

    model = morphable.load_model("ict")
    face = torch.as_tensor(model.regions["face"], dtype=torch.int64)
    face_mesh = submesh(model.triangles, face, model.n_vertices)
    rows = []
    print("seed | RGB-D face / seen (mm) | RGB-only face / seen | fit s | photometric + depth / RGB-only face, s "
          "(colour energy with / without depth) "
          "|| off-model: surface fit → refined (mm), vertex seen fit → refined, refine s")
    for seed in range(args.first_seed, args.first_seed + args.faces):
        depth, landmarks, cam, truth, seen, image = scene(model, seed, off_model=False)
        t0 = time.perf_counter()
        fit = fit_rgbd(model, depth, FOCAL, CENTRE, landmarks)
        t_fit = time.perf_counter() - t0
        lm, img = landmarks[None].float(), image[None].float()
        rgb = fit_landmarks(model, lm, contour=False)
        e_d, e_rgb = aligned_error(fit.vertices, truth, face, seen), aligned_error(rgb.vertices[0], truth, face, seen)
        t0 = time.perf_counter()
        photo_d = fit_photometric(model, img, lm, init=rgb, depth=RegisteredDepth(depth[None].float(), FOCAL, CENTRE))
        t_pd = time.perf_counter() - t0
        photo_rgb = fit_photometric(model, img, lm, init=rgb)
        e_pd = aligned_error(photo_d.vertices[0], truth, face, seen)[0]
        e_prgb = aligned_error(photo_rgb.vertices[0], truth, face, seen)[0]
        depth, landmarks, cam, truth, seen, _ = scene(model, seed, off_model=True)
        fit = fit_rgbd(model, depth, FOCAL, CENTRE, landmarks)
        t0 = time.perf_counter()
        refined = refine_basis(model, fit, depth)
        t_ref = time.perf_counter() - t0
        s_fit = surface_error(fit.vertices, fit.camera, truth, cam, face_mesh, seen)
        s_ref = surface_error(refined.vertices, fit.camera, truth, cam, face_mesh, seen)
        v_fit = aligned_error(fit.vertices, truth, face, seen)[1]
        v_ref = aligned_error(refined.vertices, truth, face, seen)[1]
        rows.append((e_d[0], e_rgb[0], s_fit, s_ref, e_pd, e_prgb))
        print(f"{seed:4d} | {e_d[0]:.3f} / {e_d[1]:.3f} | {e_rgb[0]:.3f} / {e_rgb[1]:.3f} | {t_fit:.1f} | "
              f"{e_pd:.3f} / {e_prgb:.3f}, {t_pd:.1f} ({photo_d.energies['photometric']:.4f} / "
              f"{photo_rgb.energies['photometric']:.4f}) || "
              f"{s_fit:.3f} → {s_ref:.3f}, {v_fit:.3f} → {v_ref:.3f}, {t_ref:.1f}", flush=True)
    r = np.asarray(rows)
    print(f"max error: RGB-D {r[:, 0].max():.3f} mm, photometric + depth {r[:, 4].max():.3f} mm; refinement lowers "
          f"the surface error by {100 * (1 - r[:, 3].mean() / r[:, 2].mean()):.0f} % on average")
    print(f"RESULT n={len(r)} rgbd_err_mm={r[:, 0].mean():.3f} rgb_err_mm={r[:, 1].mean():.3f} "
          f"ratio={r[:, 0].mean() / r[:, 1].mean():.3f} photometric_depth_err_mm={r[:, 4].mean():.3f} "
          f"photometric_rgb_err_mm={r[:, 5].mean():.3f} surface_fit_mm={r[:, 2].mean():.3f} "
          f"surface_refined_mm={r[:, 3].mean():.3f}")


if __name__ == "__main__":
    main()
