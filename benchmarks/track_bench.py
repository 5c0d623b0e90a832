"""Video tracking speed and steadiness: ``morphable track`` against per-frame independent fits.

    python benchmarks/track_bench.py [--video ../shared/data/3DDFA/demo@obama/obama.mp4] [--threads 2]

**Tracked** (timed end to end, the CLI's pipeline without the one-off model and weight loading): decode,
working copy (``--max-side``), box-tracked dlib landmarks, Farnebäck flow, the clip identity (shape
regressor on keyframes + fused landmark fits), per-frame tracking, and the outputs ``params.jsonl`` and
``overlay.mp4`` (the OBJ sequence and the animated GLB are timed on their own: ``--meshes``).

**Per frame** (the anchor, measured in the same run): what ``morphable fit`` does to each frame alone —
full dlib detection, the shape regressor's identity prior and the landmark fit — without the texture and
file outputs.

Jitter is the mean length of the frame-to-frame second difference ``x_{n+1} − 2x_n + x_{n−1}`` of the 68
fitted landmarks (:func:`morphable.fitting.track.landmark_jitter`), in the original video's pixels; the raw
dlib landmarks' is printed for reference (it contains the real motion too). The identity line compares the
per-frame fits' identities with the clip's one.

The last line is ``RESULT frames=<N> fps=<tracked, wall> jitter_tracked=<px> jitter_per_frame=<px>``.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_VIDEO = Path(os.environ.get("MORPHABLE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
                     ) / "3DDFA" / "demo@obama" / "obama.mp4"


def _children_cpu() -> float:
    """CPU seconds used so far by finished child processes (the ffmpeg decoder and encoder)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Clock:
    """Wall and CPU seconds of a block: ``cpu`` of this process, ``children`` of the subprocesses it ended."""

    def __enter__(self):
        self.wall, self.cpu, self.children = time.perf_counter(), time.process_time(), _children_cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.children = _children_cpu() - self.children


def per_frame(video: Path, model, max_side: int):
    """Each frame on its own: detection, regressor prior, landmark fit. Returns detected and fitted landmarks
    ``(N, 68, 2)`` working px, identities ``(N, K)`` and the :class:`Clock`."""
    from morphable.cli.track import frames
    from morphable.detect.choice import detect_faces
    from morphable.fitting.landmarks import fit_landmarks
    from morphable.nets.genova import load_regressor

    reg = load_regressor("ict")
    detected, fitted, identities = [], [], []
    with Clock() as clock:
        for frame, _ in frames(video, max_side):
            chosen, _ = detect_faces(frame, "largest")
            if not chosen:
                detected.append(np.full((68, 2), np.nan))
                fitted.append(np.full((68, 2), np.nan))
                continue
            detected.append(chosen[0][1].landmarks)
            lm = torch.as_tensor(chosen[0][1].landmarks, dtype=torch.float32)[None]
            mu = reg.predict_identity(torch.from_numpy(frame).float()[None] / 255, lm)
            fit = fit_landmarks(model, lm, identity_prior_mean=mu, lambda_identity=reg.prior_precision)
            fitted.append(fit.landmarks_fitted[0].double().numpy())
            identities.append(fit.identity[0].double())
    return np.stack(detected), np.stack(fitted), torch.stack(identities), clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--meshes", action="store_true", help="also time the OBJ sequence and the animated GLB")
    parser.add_argument("--frames-png", type=Path, help="save overlay frames 0, N/2, N-1 as PNGs here")
    args = parser.parse_args()
    if not args.video.is_file():
        sys.exit(f"{args.video}: no such video (set MORPHABLE_TEST_DATA or --video)")
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    import morphable
    from morphable.cli.track import track_video, write_track
    from morphable.detect.dlib68 import _predictor, detect_landmarks
    from morphable.fitting.track import landmark_jitter
    from morphable.nets.genova import load_regressor

    with Clock() as load:
        model = morphable.load_model("ict")
        _predictor()
        detect_landmarks(np.zeros((64, 64, 3), np.uint8), detector="hog")  # builds the HOG detector
        load_regressor("ict").encoder  # noqa: B018 — builds dlib's network once
    print(f"one-off loading (model, dlib predictor, regressor): {load.wall:.2f} s")

    with tempfile.TemporaryDirectory() as tmp:
        with Clock() as tracked:
            vt = track_video(args.video, model, "ict", max_side=args.max_side)
            write_track(vt, args.video, Path(tmp), model, "ict", max_side=args.max_side)
        N = len(vt.landmarks)
        if args.meshes:
            for fmt in ("obj", "glb"):
                (Path(tmp) / fmt).mkdir()
                with Clock() as meshes:
                    write_track(vt, args.video, Path(tmp) / fmt, model, "ict", max_side=args.max_side, meshes=(fmt,),
                                overlay=False)
                print(f"{fmt} meshes (+ params): {meshes.wall / N * 1000:.0f} ms/frame")
        if args.frames_png:
            import imageio.v2 as imageio

            args.frames_png.mkdir(parents=True, exist_ok=True)
            reader = imageio.get_reader(Path(tmp) / "overlay.mp4", "ffmpeg")
            for n, frame in enumerate(reader):
                if n in (0, N // 2, N - 1):
                    imageio.imwrite(args.frames_png / f"overlay_{n:03d}.png", frame)
            reader.close()
    s = vt.working_scale
    stages = dict(vt.timings)
    stages["write"] = tracked.wall - sum(stages.values())
    print(f"tracked: {N} frames, {tracked.wall:.2f} s wall ({N / tracked.wall:.1f} frames/s), "
          f"{tracked.cpu:.2f} s CPU ({N / tracked.cpu:.1f} frames/CPU-s) + {tracked.children:.2f} s in ffmpeg; "
          + ", ".join(f"{k} {v / N * 1000:.0f} ms/frame" for k, v in stages.items()))
    print(f"         {sum(x != 'tracked' for x in vt.sources)} full detections, held frames: {list(vt.track.held)}, "
          f"identity from {vt.shape_from} over keyframes {vt.keyframes}")

    detected, fitted, identities, anchor = per_frame(args.video, model, args.max_side)
    print(f"per frame: {anchor.wall:.2f} s wall ({N / anchor.wall:.1f} frames/s), {anchor.cpu:.2f} s CPU; "
          f"tracked is {anchor.wall / tracked.wall:.1f}x faster")

    jt = landmark_jitter(vt.track.landmarks_fitted) * s
    jp = landmark_jitter(fitted) * s
    raw = landmark_jitter(vt.landmarks) * s
    inner = slice(17, 68)
    print(f"jitter (px of the {vt.image_size[1]}x{vt.image_size[0]} video): tracked {jt:.2f}, per frame {jp:.2f} "
          f"(tracked/per-frame {jt / jp:.2f}); raw dlib landmarks {raw:.2f}; inner 51 points: tracked "
          f"{landmark_jitter(vt.track.landmarks_fitted[:, inner]) * s:.2f}, per frame "
          f"{landmark_jitter(fitted[:, inner]) * s:.2f}")
    rms_tracked = float(np.nanmean(vt.track.rms_px.numpy())) * s
    det = detected
    ok = np.isfinite(fitted).all(-1) & np.isfinite(det).all(-1)
    rms_single = float(np.sqrt(((fitted - det) ** 2).sum(-1)[ok].mean())) * s
    print(f"RMS landmark error (px): tracked {rms_tracked:.2f}, per frame {rms_single:.2f}")
    spread = (identities - identities.mean(0)).norm(dim=1).mean()
    print(f"identity: per-frame fits scatter {spread:.2f} (mean distance to their mean, standardised units); "
          f"their mean is {(identities.mean(0) - vt.track.identity).norm():.2f} from the clip identity; "
          f"tracked: one identity")
    print(f"RESULT frames={N} fps={N / tracked.wall:.1f} jitter_tracked={jt:.2f} jitter_per_frame={jp:.2f}")


if __name__ == "__main__":
    main()
