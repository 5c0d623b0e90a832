"""What the Genova identity prior costs per face: the default fit (regressor + landmark fit) against the
landmark fit alone, measured in the same run on the same faces.

For each photo with a ``.pts`` file in ``--data`` (AFW by default), after detection (not timed: both
paths need the landmarks): the anchor is ``fit_landmarks(model, landmarks)``; the default fit is
``reg.predict_identity(photo, landmarks)`` (the uint8 photo as ``morphable fit`` passes it: dlib chip of the
face's crop, one pass of dlib's ResNet, the MLP) followed by
``fit_landmarks(..., identity_prior_mean=μ, lambda_identity=reg.prior_precision)``. One face at a time, as
``morphable fit`` runs; medians over faces after one warm-up face.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/regressor_overhead.py [--data DIR] [--n 40] [--threads 2]

Last line: ``RESULT n= fit_ms= default_fit_ms= overhead_ms= regressor_ms=``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import morphable
from morphable.detect.formats import read_landmarks
from morphable.fitting.landmarks import fit_landmarks
from morphable.io.image import read_image
from morphable.nets.genova import load_regressor

DATA = Path(os.environ.get("MORPHABLE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "Spinkoo-Face-alignement/afw/afw")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--regressor", default="ict")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reg = load_regressor(args.regressor)
    model = morphable.load_model(reg.model_name)
    pts = sorted(args.data.glob("*.pts"))[: args.n + 1]
    if not pts:
        sys.exit(f"error: {args.data}: no .pts files")
    fit_ms, default_ms, reg_ms = [], [], []
    for i, p in enumerate(pts):
        photo = next((p.with_suffix(s) for s in (".jpg", ".png") if p.with_suffix(s).exists()), None)
        if photo is None:
            continue
        image = torch.from_numpy(read_image(photo).copy())[None]  # uint8, as morphable fit passes it
        lm = torch.as_tensor(read_landmarks(p), dtype=torch.float32)[None]
        t0 = time.perf_counter()
        fit_landmarks(model, lm)
        t1 = time.perf_counter()
        mu = reg.predict_identity(image, lm)
        t2 = time.perf_counter()
        fit_landmarks(model, lm, identity_prior_mean=mu, lambda_identity=reg.prior_precision)
        t3 = time.perf_counter()
        if i:  # the first face warms up
            fit_ms.append(1e3 * (t1 - t0))
            reg_ms.append(1e3 * (t2 - t1))
            default_ms.append(1e3 * (t3 - t1))
    f, d, r = statistics.median(fit_ms), statistics.median(default_ms), statistics.median(reg_ms)
    print(f"{len(fit_ms)} faces, {args.threads} threads: landmark fit {f:.1f} ms, default fit {d:.1f} ms "
          f"(regressor {r:.1f} ms), overhead {d - f:.1f} ms")
    print(f"RESULT n={len(fit_ms)} fit_ms={f:.2f} default_fit_ms={d:.2f} overhead_ms={d - f:.2f} regressor_ms={r:.2f}")


if __name__ == "__main__":
    main()
