"""RingNet against the landmark fit, side by side on the same faces: time and 2D landmark error.

For each photo with a ``.pts`` file in ``--data`` (AFW by default, held out of ``ringnet-ict``'s training),
the input landmarks are dlib's (the detection whose landmarks' centre is nearest the annotation's; a face
dlib misses, or finds more than one outer-eye distance away, counts as a detection failure and is left
out of all three methods), or the annotation itself with ``--landmarks file``. Then, one face at a time as
``morphable fit`` runs, after detection:

* **fit** (the anchor): ``fit_landmarks(model, landmarks)``;
* **regress**: :func:`~morphable.nets.ringnet.regress_faces` with ``decode=False``: crop from the landmarks'
  box, one network pass, the camera in photo px: what ``morphable fit --method regress+fit`` takes from the
  network;
* **regress+decode** (reported beside): the same and the regressed parameters' 68 landmarks with the pose's
  jawline (the decoder's contour search), which the NME needs;
* **regress+fit**: the network, then ``fit_landmarks`` with its identity prior centred at the regressed
  shape (``--lambda-identity``).

NME: mean distance over the inner 51 iBUG points (17–67) between the method's projected model landmarks
and the annotation, divided by the annotation's outer-eye-corner distance (300-W convention). Times are
medians over faces after one warm-up face; each method runs over all faces in its own pass (a method's
time does not include the cache misses another method's work leaves behind; regress+fit is the network
pass plus the fit pass). Ratios are against the fit measured in the same run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/regressor_bench.py --weights RUN/ringnet-ict.pt [--data DIR]

``--consistency DATASET`` (a ``morphable data prepare`` folder with identity labels, e.g. the corpus's
deepface photos prepared with ``--identities benchmarks/data/deepface_ids.json``, never in RingNet's
training data) also prints the same/different-person ROC AUCs of the regressed shapes
(:func:`morphable.eval.consistency.identity_consistency`, as ``benchmarks/identity_consistency.py`` reports them
for Genova).

``--overlay PHOTO`` (repeatable) also writes ``--out/<stem>.png``: dlib's landmarks (green) and the
regressed ones (red) on the photo, for looking at large poses.

Last line: ``RESULT n= failed= regress_ms= fit_ms= regress_fit_ms= regress_decode_ms= regress_nme= regress_fit_nme=
fit_nme=``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import morphable
from morphable.detect.formats import read_landmarks
from morphable.eval.nme import nme, outer_eye_distance
from morphable.fitting.landmarks import fit_landmarks
from morphable.io.image import read_image
from morphable.nets.ringnet import RingNetDecoder, load_ringnet, regress_faces

DATA = Path(os.environ.get("MORPHABLE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def nme_inner51(pred: np.ndarray, gt: np.ndarray) -> float:
    """NME over iBUG 17–67 of one face, outer-eye-corner normalised."""
    return float(nme(pred[None, 17:], gt[None, 17:], outer_eye_distance(gt[None]))[0])


def detected(image: np.ndarray, gt: np.ndarray) -> np.ndarray | None:
    """dlib's landmarks of the face annotated by ``gt`` (nearest centre within an outer-eye distance)."""
    from morphable.detect.dlib68 import detect_landmarks

    best, dist = None, float(outer_eye_distance(gt[None])[0])
    for d in detect_landmarks(image, all_faces=True):
        gap = float(np.linalg.norm(d.landmarks.mean(0) - gt.mean(0)))
        if gap < dist:
            best, dist = d.landmarks, gap
    return best


def overlay(net, decoder, photo: Path, out: Path) -> None:
    from PIL import Image

    from morphable.detect.dlib68 import detect_landmarks
    from morphable.viz.overlay import draw_overlay

    image = read_image(photo)
    found = detect_landmarks(image, detector="auto")
    if not found:
        print(f"{photo}: no face detected, no overlay")
        return
    lm = found[0].landmarks
    reg = regress_faces(net, decoder, [torch.tensor(image, dtype=torch.float32) / 255], torch.as_tensor(lm)[None])
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw_overlay(image, landmarks=lm, landmarks_fitted=reg.landmarks[0].numpy())).save(
        out / f"{photo.stem}.png")
    print(f"overlay: {out / (photo.stem + '.png')}")


def consistency(net, decoder, model, folder: Path) -> None:
    from morphable.eval.consistency import identity_consistency
    from morphable.train.data.manifest import read_manifest

    items = [i for i in read_manifest(folder / "manifest.jsonl") if i.identity is not None]
    shapes = []
    for item in items:
        image = torch.tensor(read_image(item.path), dtype=torch.float32) / 255
        lm = torch.as_tensor(item.landmarks, dtype=torch.float32)[None]
        shapes.append(regress_faces(net, decoder, [image], lm).identity)
    r = identity_consistency(model, torch.cat(shapes), [i.identity for i in items])
    print(f"identity consistency of regressed shapes ({r.n_items} photos, {r.n_ids} identities): "
          f"auc_coeff {r.auc_coeff:.3f} auc_mesh {r.auc_mesh:.3f} (median mesh distance same {r.same_mesh_mm:.2f} mm, "
          f"different {r.different_mesh_mm:.2f} mm)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "Spinkoo-Face-alignement/afw/afw")
    parser.add_argument("--weights", type=Path, required=True,
                        help="a shipped name (ringnet-ict, ringnet-ict-dlib) or a ringnet-<model>.pt from morphable train ringnet")
    parser.add_argument("--n", type=int, default=0, help="at most this many faces (0 = all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--landmarks", choices=("dlib", "file"), default="dlib")
    parser.add_argument("--lambda-identity", type=float, default=1.0)
    parser.add_argument("--overlay", type=Path, action="append", default=[])
    parser.add_argument("--consistency", type=Path, default=None, help="prepared dataset with identities")
    parser.add_argument("--out", type=Path, default=Path("out/regressor_bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = load_ringnet(args.weights)
    model = morphable.load_model(net.model_name)
    decoder = RingNetDecoder(model)
    for photo in args.overlay:
        overlay(net, decoder, photo, args.out)
    if args.consistency is not None:
        consistency(net, decoder, model, args.consistency)
    pts = sorted(args.data.glob("*.pts"))
    if args.n:
        pts = pts[: args.n + 1]
    if not pts:
        sys.exit(f"error: {args.data}: no .pts files")
    faces = []  # (photo, annotation, the landmarks the methods get)
    failed = 0
    for p in pts:
        photo = next((p.with_suffix(s) for s in (".jpg", ".png") if p.with_suffix(s).exists()), None)
        if photo is None:
            continue
        image = read_image(photo)
        gt = read_landmarks(p)
        given = gt if args.landmarks == "file" else detected(image, gt)
        if given is None:
            failed += 1
            continue
        faces.append((np.require(image, requirements="W"), gt, torch.as_tensor(given, dtype=torch.float32)[None]))

    def run(method):
        """``method(i, photo, landmarks)`` over every face, in one pass: ms per face (after the first) and the
        outputs."""
        ms, out = [], []
        for i, (image, _, lm) in enumerate(faces):
            photo = torch.from_numpy(image)  # uint8, as read: the network reads the box's part only
            t0 = time.perf_counter()
            out.append(method(i, photo, lm))
            if i:  # the first face warms up
                ms.append(1e3 * (time.perf_counter() - t0))
        return ms, out

    if len(faces) < 2:
        sys.exit("error: fewer than two faces could be evaluated (the first only warms up)")
    # each method in its own pass over the faces, so that no method's timing pays for another's cache misses
    times, points = {}, {}
    times["fit"], points["fit"] = run(lambda i, photo, lm: fit_landmarks(model, lm).landmarks_fitted)
    times["regress"], regressed = run(lambda i, photo, lm: regress_faces(net, decoder, [photo], lm, decode=False))
    times["regress_decode"], points["regress"] = run(
        lambda i, photo, lm: regress_faces(net, decoder, [photo], lm).landmarks)
    prior_ms, points["regress_fit"] = run(lambda i, photo, lm: fit_landmarks(
        model, lm, identity_prior_mean=regressed[i].identity, lambda_identity=args.lambda_identity).landmarks_fitted)
    times["regress_fit"] = [a + b for a, b in zip(times["regress"], prior_ms)]
    errors = {name: [nme_inner51(pred[0].detach().double().numpy(), gt) for pred, (_, gt, _) in zip(out, faces)]
              for name, out in points.items()}
    ms = {k: statistics.median(v) for k, v in times.items()}
    err = {k: float(np.mean(v)) for k, v in errors.items()}
    n = len(errors["fit"])
    print(f"{n} faces ({failed} not detected), {args.threads} threads, landmarks from {args.landmarks}")
    for k in ("fit", "regress", "regress_fit"):
        print(f"  {k:12s} {ms[k]:8.2f} ms ({ms[k] / ms['fit']:.2f} x fit)   NME inner-51 {100 * err[k]:.2f} %")
    print(f"  {'regress+decode':14s} {ms['regress_decode']:6.2f} ms (the network and its 68 landmarks, for the NME)")
    print(f"RESULT n={n} failed={failed} regress_ms={ms['regress']:.2f} fit_ms={ms['fit']:.2f} "
          f"regress_fit_ms={ms['regress_fit']:.2f} regress_decode_ms={ms['regress_decode']:.2f} "
          f"regress_nme={err['regress']:.4f} "
          f"regress_fit_nme={err['regress_fit']:.4f} fit_nme={err['fit']:.4f}")


if __name__ == "__main__":
    main()
