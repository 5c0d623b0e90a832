"""Render and recover: a real head scan (and synthetic faces) rendered by OpenGL, fitted from the images
alone, scored NoW-style against the 3D truth, beside the model's mean face and the 3D oracle.

**Scan.** ``flame-fitting/data/scan.obj`` (metres -> mm) with its 51 landmarks (iBUG 17..67, mapped to the 7
NoW points) is rendered with moderngl (``benchmarks/_gl.py``, not our renderer): a pinhole camera 50 cm in
front of the face (focal 900 px at 512 x 512, about 32° field of view), the head at yaw 0° and ±30°
(+ = the subject turns to their left), skin-coloured Lambertian shading with a little ambient light, on a
mid-grey background. dlib detects the 68 landmarks in each image; the identity comes from
``--shape-from`` (``benchmarks/_shape_from.py``: the landmark fit, or the regressor + landmark fit).
The fitted identity's **neutral** mesh (expression zero; the ``face`` + ``head_neck`` + ``eyes`` regions
of ICT) is scored with the NoW protocol (:func:`morphable.eval.now.now_errors`: sphere crop of the scan,
similarity alignment on the 7 landmarks, point-to-surface refinement, then the median / mean distance of
the cropped scan vertices to the mesh). Beside each fit: the model's **mean face** (identity 0, scored
the same way) and the **3D oracle** (identity fitted to the scan directly in 3D:
:func:`morphable.eval.scan_recover.fit_identity_to_scan`), the best any image-based fit of this model
could do; ``fit/mean`` below 1 means the fit recovered something of this person.

**FLAME heads** (``--flame-heads``): two more faces outside the fitted model's span, rendered and scored
exactly as the scan: FLAME's template (the mean of FLAME's 3 800 training scans, ``TF_FLAME/data/template.ply``)
and RingNet's FLAME sample (``RingNet/flame_model/FLAME_sample.ply``), landmarks placed by FLAME's static
embedding (:func:`morphable.eval.scan_recover.load_flame_mesh_scan`). Smooth heads without a scan's noise, hair
or closed eyes: a second and third view of how a shape source generalises beyond the model's own samples.

**Synthetic** (``--synthetic N``): random ICT identities ~ N(0, I) with random skin albedo
(:func:`morphable.train.synthetic.random_albedo`; light eyeballs with dark irises), rendered the same way at a
random yaw in ±30° over a random flat background, fitted from the images and scored against their known
neutral meshes with the same protocol, the mean face beside.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scan_recover.py [--shape-from regressor|landmarks] \\
        [--regressor PATH] [--lambda-identity X] [--model ict] [--synthetic 8] [--out out/scan_recover]
        [--drop-jawline]

``--drop-jawline`` (a diagnostic) fits without the 17 jawline landmarks, to separate what the contour term
does from what the inner landmarks do.

Last line: ``RESULT scan_fit_mm_0= scan_fit_mm_m30= scan_fit_mm_p30= scan_mean_mm= scan_oracle_mm=
ratio_max= synth_fit_mm= synth_mean_mm= synth_ratio= template_ratio_max= sample_ratio_max=`` (medians in mm;
``ratio_max``: the largest fit/mean-face ratio over the three views; ``synth_*``: the means over the synthetic
faces of their medians; ``*_ratio_max``: the same for each FLAME head, with ``--flame-heads``).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import morphable
from morphable.detect.choice import detect_faces
from morphable.errors import MorphableError
from morphable.eval.scan_recover import (Scan, fit_identity_to_scan, load_flame_mesh_scan, load_scan, scan_from_model,
                                         score_identity, scored_model)
from morphable.io.image import write_image
from morphable.train.synthetic import random_albedo

from _gl import gl_available, look_at_face, render
from _shape_from import ShapeSource, add_arguments

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = (512, 512)
DISTANCE_MM = 500.0
FOCAL_PX = 900.0
SKIN = (0.78, 0.57, 0.47)          # linear RGB albedo of the scan
YAWS = (0, -30, 30)


def view_key(yaw: int) -> str:
    return "0" if yaw == 0 else ("m" if yaw < 0 else "p") + str(abs(yaw))


def face_centre(scan: Scan) -> np.ndarray:
    """Where the camera looks: the mean of the 7 NoW landmarks (between eyes, nose and mouth), mm."""
    return scan.landmarks.mean(axis=0)


def recover(source: ShapeSource, image: np.ndarray, drop_jawline: bool = False) -> torch.Tensor | None:
    """Identity (K,) fitted from a rendered uint8 image, or None when dlib finds no face. ``drop_jawline``:
    the landmark fit ignores iBUG points 0-16 (the regressor still sees all 68 to align its face chip)."""
    chosen, _ = detect_faces(image, "largest")
    if not chosen:
        return None
    lmk = torch.as_tensor(chosen[0][1].landmarks, dtype=torch.float64)[None]
    img = torch.from_numpy(np.array(image)).float()[None] / 255
    prior = source.predict(img, lmk.float())
    if drop_jawline:
        lmk = lmk.clone()
        lmk[:, :17] = float("nan")
    return source.fit_identity(lmk, prior, [image.shape[:2]])[0]


def scan_views(source: ShapeSource, scored, scan: Scan, out: Path | None, drop_jawline: bool,
               prefix: str = "scan") -> dict[int, float]:
    """Fit median (mm) per yaw (nan where no face was detected)."""
    medians = {}
    for yaw in YAWS:
        camera = look_at_face(face_centre(scan), yaw, DISTANCE_MM, FOCAL_PX, SIZE)
        image = render(scan.vertices, scan.triangles, SKIN, camera, SIZE)
        if out is not None:
            write_image(out / f"{prefix}_yaw{yaw:+d}.png", image)
        identity = recover(source, image, drop_jawline)
        if identity is None:
            print(f"yaw {yaw:+3d}: no face detected in the render")
            medians[yaw] = math.nan
            continue
        result = score_identity(scan, scored, identity)
        medians[yaw] = result.median_mm
        print(f"yaw {yaw:+3d}: fit median {result.median_mm:.3f} mm (mean {result.mean_mm:.3f}), "
              f"|identity| {float(identity.norm()):.2f}", flush=True)
    return medians


def synthetic_albedo(scored, rng: np.random.Generator) -> np.ndarray:
    """(V, 3) skin albedo; where the model has eyeballs (ICT), light sclera with a dark iris: the eyeball's
    vertices within 6 mm (seen from the front) of its front-most point (ICT's ``iris_*`` regions lie under
    the visible shell, so they cannot be coloured directly)."""
    albedo = random_albedo(scored.mean, scored.symmetry, rng).numpy().astype(np.float64)
    mean = scored.mean.double().cpu().numpy()
    for name in ("eyeball_left", "eyeball_right"):
        if name in scored.regions:
            ids = scored.regions[name].cpu().numpy()
            front = mean[ids[np.argmax(mean[ids, 2])]]
            radius = np.linalg.norm(mean[ids, :2] - front[:2], axis=1)
            albedo[ids] = np.where((radius < 6.0)[:, None], (0.12, 0.08, 0.05), (0.8, 0.78, 0.75))
    return albedo


def synthetic_faces(source: ShapeSource, scored, count: int, seed: int, out: Path | None,
                    drop_jawline: bool) -> tuple[list, list]:
    """Per face: (fit median, mean-face median) in mm; faces where dlib finds nothing are reported and skipped."""
    rng = np.random.default_rng(seed)
    fits, means = [], []
    for k in range(count):
        identity = torch.as_tensor(rng.normal(size=(1, scored.n_identity)), dtype=torch.float64)
        truth = scan_from_model(scored, identity, name=f"synthetic{k}")
        yaw = float(rng.uniform(-30, 30))
        camera = look_at_face(face_centre(truth), yaw, DISTANCE_MM, FOCAL_PX, SIZE)
        image = render(truth.vertices, truth.triangles, synthetic_albedo(scored, rng), camera, SIZE,
                       background=tuple(rng.uniform(0.15, 0.85, size=3)))
        if out is not None:
            write_image(out / f"synthetic{k}.png", image)
        fitted = recover(source, image, drop_jawline)
        if fitted is None:
            print(f"synthetic {k} (yaw {yaw:+.0f}): no face detected")
            continue
        fit = score_identity(truth, scored, fitted).median_mm
        mean = score_identity(truth, scored, None).median_mm
        fits.append(fit)
        means.append(mean)
        print(f"synthetic {k} (yaw {yaw:+5.1f}): fit median {fit:.3f} mm, mean face {mean:.3f} mm, "
              f"fit/mean {fit / mean:.2f}", flush=True)
    return fits, means


FLAME_HEADS = {"template": "TF_FLAME/data/template.ply", "sample": "RingNet/flame_model/FLAME_sample.ply"}
FLAME_EMBEDDING = "TF_FLAME/data/flame_static_embedding.pkl"


def flame_heads(source: ShapeSource, scored, data: Path, out: Path | None, drop_jawline: bool,
                oracle_iterations: int) -> str:
    """Render and recover each FLAME head; prints a table per head, returns the RESULT fields."""
    fields = ""
    for name, relative in FLAME_HEADS.items():
        head = load_flame_mesh_scan(data / relative, data / FLAME_EMBEDDING, "m", name=name)
        mean = score_identity(head, scored, None).median_mm
        oracle = score_identity(head, scored, fit_identity_to_scan(scored, head, iterations=oracle_iterations).identity)
        print(f"FLAME {name}: mean face {mean:.3f} mm, 3D oracle {oracle.median_mm:.3f} mm", flush=True)
        fits = scan_views(source, scored, head, out, drop_jawline, prefix=name)
        print("  " + "  ".join(f"{y:+d}°: {f:.3f} mm (fit/mean {f / mean:.2f})" for y, f in fits.items()))
        fields += f" {name}_ratio_max={float(np.max(list(fits.values()))) / mean:.4f}"
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ict")
    parser.add_argument("--scan", type=Path, default=DATA / "flame-fitting/data/scan.obj")
    parser.add_argument("--scan-landmarks", type=Path, default=DATA / "flame-fitting/data/scan_lmks.npy")
    parser.add_argument("--scan-unit", default="m", choices=("m", "cm", "mm"))
    parser.add_argument("--synthetic", type=int, default=0, help="also this many synthetic faces")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle-iterations", type=int, default=8)
    parser.add_argument("--flame-heads", action="store_true",
                        help="also FLAME's template and sample heads (rendered and scored as the scan)")
    parser.add_argument("--data", type=Path, default=DATA, help="the corpus (for --flame-heads)")
    parser.add_argument("--out", type=Path, default=None, help="write the rendered images here")
    parser.add_argument("--drop-jawline", action="store_true",
                        help="diagnostic: fit without the 17 jawline landmarks (iBUG 0-16)")
    parser.add_argument("--threads", type=int, default=1)
    add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reason = gl_available()
    if reason is not None:
        sys.exit(f"error: {reason}")
    try:
        model = morphable.load_model(args.model)
        source = ShapeSource(model, args)
        scan = load_scan(args.scan, args.scan_landmarks, args.scan_unit)
    except MorphableError as err:
        sys.exit(f"error: {err}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    scored = scored_model(model)
    print(f"model {args.model} (scored mesh: {scored.n_vertices} vertices), shape from {source.label}"
          f"{' without the jawline landmarks' if args.drop_jawline else ''}; "
          f"scan {scan.name}: {len(scan.vertices)} vertices, {len(scan.crop_ids)} in the NoW crop")
    t0 = time.perf_counter()
    mean = score_identity(scan, scored, None)
    oracle_fit = fit_identity_to_scan(scored, scan, iterations=args.oracle_iterations)
    oracle = score_identity(scan, scored, oracle_fit.identity)
    print(f"mean face: median {mean.median_mm:.3f} mm (mean {mean.mean_mm:.3f}); 3D oracle: median "
          f"{oracle.median_mm:.3f} mm (mean {oracle.mean_mm:.3f}, |identity| {float(oracle_fit.identity.norm()):.2f})",
          flush=True)
    fits = scan_views(source, scored, scan, args.out, args.drop_jawline)
    print(f"{'view':>8} {'fit':>8} {'mean face':>10} {'oracle':>8} {'fit/mean':>9}   (NoW median, mm)")
    for yaw, fit in fits.items():
        print(f"{yaw:+7d}° {fit:8.3f} {mean.median_mm:10.3f} {oracle.median_mm:8.3f} {fit / mean.median_mm:9.2f}")
    ratio_max = float(np.max(list(fits.values()))) / mean.median_mm   # nan if a view failed
    line = ("RESULT " + " ".join(f"scan_fit_mm_{view_key(y)}={fits[y]:.4f}" for y in YAWS)
            + f" scan_mean_mm={mean.median_mm:.4f} scan_oracle_mm={oracle.median_mm:.4f} ratio_max={ratio_max:.4f}")
    if args.synthetic > 0:
        synth_fit, synth_mean = synthetic_faces(source, scored, args.synthetic, args.seed, args.out,
                                               args.drop_jawline)
        f, m = (float(np.mean(x)) if x else math.nan for x in (synth_fit, synth_mean))
        print(f"synthetic: {len(synth_fit)} of {args.synthetic} faces fitted; mean of medians: fit {f:.3f} mm, "
              f"mean face {m:.3f} mm, fit/mean {f / m:.2f}")
        line += f" synth_fit_mm={f:.4f} synth_mean_mm={m:.4f} synth_ratio={f / m:.4f} synth_n={len(synth_fit)}"
    if args.flame_heads:
        try:
            line += flame_heads(source, scored, args.data, args.out, args.drop_jawline, args.oracle_iterations)
        except MorphableError as err:
            sys.exit(f"error: {err}")
    print(f"({time.perf_counter() - t0:.0f} s)")
    print(line)


if __name__ == "__main__":
    main()
