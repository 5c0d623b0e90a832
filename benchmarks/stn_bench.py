"""3DMM-STN: a trained localiser against the per-photo gradient-descent fit and the linear landmark fit.

Landmarks (``--data DIR``: photos with ``.pts`` files, e.g. the corpus's AFW faces, held out from training):

* ``linear``: the scaled-orthographic linear landmark fit that gradient descent starts from
  (:func:`morphable.fitting.stn.initial_theta`, given the ground-truth landmarks), in the headline
  localiser's θ space (D identity components, and the model's expression when the localiser has it);
* ``gd``: :func:`morphable.fitting.stn.fit_stn` from there (landmarks + prior + symmetry, 100 steps; seconds
  per face on a CPU, so only on the first ``--gd-faces``, and in the correspondence test only when asked);
* ``localiser``: one pass of the network on the *detector* crop (dlib's HOG box that overlaps the
  ground-truth face best, IoU ≥ 0.3; faces without one use the landmark box rule and are counted) — it sees
  no landmark.

NME: mean distance over the 51 non-jawline iBUG points (the points all three fit; the jawline is a
pose-dependent contour none of them models) divided by sqrt(w·h) of the ground-truth box (the AFLW2000-3D
normaliser). Times per face on ``--threads`` threads (2, the target's): the localiser's crop (of the uint8
photo as read) + network (``--precision``, as ``morphable stn-fit``'s: auto runs the dlib trunk in bfloat16
where the CPU has it natively; the RESULT line says which ran);
gradient descent's whole fit; the linear fit is the anchor the others are divided by.

Dense correspondence (``--deepface DIR``, a folder from ``morphable data prepare`` with identity labels,
e.g. the deepface photos, none of whom are in the training data): each method's flattened texture of each
face; for every pair, the normalised cross-correlation over the texels visible in both (grey levels);
the same/different-person ROC AUC of 1 − NCC (:func:`morphable.eval.consistency.same_different_auc`), the
mean per-texture bilateral symmetry error (:func:`morphable.losses.symmetry.symmetry_loss`) and, with
``--figure``, a grid of per-person mean flattened textures (rows: people; columns: localiser, GD, linear).

    .venv/bin/python benchmarks/stn_bench.py --data ../shared/data/Spinkoo-Face-alignement/afw/afw \\
        --deepface /work/data/deepface_eval --localiser stn-sfm [--localiser stn-sfm-small] [--figure docs/stn_means.png]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import morphable
from morphable.detect.formats import read_landmarks
from morphable.eval.consistency import same_different_auc
from morphable.eval.nme import bbox_size
from morphable.identity.dlib_resnet import PRECISIONS, inference_dtype
from morphable.fitting.stn import FIXED_LANDMARKS, fit_stn, initial_theta, mean_flattened
from morphable.io.image import read_image, write_image
from morphable.losses.symmetry import symmetry_loss
from morphable.models.resample import model_uv, uv_grid
from morphable.nets.stn_localiser import landmark_box, load_localiser
from morphable.reconstruct import working_copy
from morphable.render.stn import SpatialTransformer3DMM

MAX_SIDE = 800
"""Photos are shrunk to this longer side first (as ``morphable stn-fit`` does with its ``--max-side``)."""


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def detector_box(photo: np.ndarray, gt: np.ndarray) -> np.ndarray | None:
    """dlib's HOG box overlapping the ground-truth landmarks' box best (IoU ≥ 0.3), or ``None``."""
    from morphable.detect.dlib68 import detect_landmarks

    target = np.concatenate([np.nanmin(gt, 0), np.nanmax(gt, 0)])
    best, best_iou = None, 0.3
    for d in detect_landmarks(photo, all_faces=True):
        iou = _iou(d.box, target)
        if iou >= best_iou:
            best, best_iou = d.box, iou
    return best


def fixed_nme(pred: torch.Tensor, gt: np.ndarray, defined: torch.Tensor) -> float:
    p = pred.detach().numpy()[FIXED_LANDMARKS][defined.numpy()[FIXED_LANDMARKS]]
    g = gt[FIXED_LANDMARKS][defined.numpy()[FIXED_LANDMARKS]]
    return float(np.linalg.norm(p - g, axis=1).mean() / bbox_size(gt[None])[0])


class Methods:
    """The three ways to θ for one photo, timed."""

    def __init__(self, model, stn: SpatialTransformer3DMM, localisers: dict, n_shape: int, iterations: int,
                 expression: bool = False):
        self.model, self.stn, self.localisers, self.n_shape, self.iterations = model, stn, localisers, n_shape, iterations
        self.expression = expression
        self.times: dict[str, list[float]] = {}

    def _timed(self, name: str, fn):
        t = time.perf_counter()
        out = fn()
        self.times.setdefault(name, []).append(time.perf_counter() - t)
        return out

    def run(self, pixels: np.ndarray, landmarks: torch.Tensor, box: torch.Tensor, gd: bool = True) -> dict:
        """``{method: (θ, STNOutput)}`` for one photo ``(H, W, 3)`` uint8 as read, its landmarks ``(1, 68, 2)``
        and box ``(1, 4)`` (gradient descent only when ``gd``). The localisers crop the uint8 photo, as
        ``morphable stn-fit`` does; every transformer samples the float copy."""
        photo = torch.tensor(pixels, dtype=torch.float32) / 255
        as_read = torch.from_numpy(np.ascontiguousarray(pixels))
        out = {}
        lin = self._timed("linear", lambda: initial_theta(self.stn, landmarks, self.n_shape, self.expression))
        with torch.no_grad():
            out["linear"] = (lin, self.stn(photo[None], lin))
        if gd:
            fit = self._timed("gd", lambda: fit_stn(self.stn, photo[None], landmarks, n_shape=self.n_shape,
                                                     iterations=self.iterations, init=lin))
            out["gd"] = (fit.theta, fit.output)
        for name, loc in self.localisers.items():
            with torch.no_grad():
                theta = self._timed(name, lambda: loc.locate([as_read], box))
                out[name] = (theta, self.stn(photo[None], theta))
        return out


def landmark_benchmark(methods: Methods, folder: Path, limit: int, gd_faces: int) -> dict:
    pts_files = sorted(folder.glob("*.pts"))[:limit or None]
    errors: dict[str, list[float]] = {}
    fallback = 0
    for pts in pts_files:
        image = next((pts.with_suffix(s) for s in (".jpg", ".png", ".jpeg") if pts.with_suffix(s).exists()), None)
        if image is None:
            continue
        photo, scale = working_copy(read_image(image), MAX_SIDE)
        gt = read_landmarks(pts) / scale
        box = detector_box(photo, gt)
        if box is None:
            fallback += 1
            box = landmark_box(torch.tensor(gt, dtype=torch.float64)[None])[0].numpy()
        out = methods.run(photo, torch.tensor(gt, dtype=torch.float32)[None],
                          torch.tensor(box, dtype=torch.float32)[None], gd=len(errors.get("gd", [])) < gd_faces)
        for name, (_, o) in out.items():
            errors.setdefault(name, []).append(fixed_nme(o.landmarks[0], gt, methods.model.landmark_mask))
    n_gd = len(errors.get("gd", []))
    return {"n": len(errors.get("linear", [])), "n_gd": n_gd, "fallback": fallback,
            "nme": {k: float(np.mean(v)) for k, v in errors.items()},
            "nme_gd_faces": {k: float(np.mean(v[:n_gd])) for k, v in errors.items()}}


def ncc_distances(textures: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``1 − NCC`` of grey-level flattened textures ``(N, H, W, 3)`` over each pair's common visible texels."""
    grey = textures.mean(-1).flatten(1).double()
    m = masks.flatten(1).double()
    n = len(grey)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        w = m[i] * m  # (N, P) common visibility
        count = w.sum(1).clamp_min(1)
        a, b = grey[i][None], grey
        ma, mb = (w * a).sum(1) / count, (w * b).sum(1) / count
        da, db = (a - ma[:, None]) * w, (b - mb[:, None]) * w
        ncc = (da * db).sum(1) / ((da * da).sum(1) * (db * db).sum(1)).sqrt().clamp_min(1e-12)
        out[i] = 1 - ncc
    return out


def correspondence_benchmark(methods: Methods, folder: Path, figure: Path | None, gd: bool) -> dict:
    items = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    items = [it for it in items if it.get("identity")]
    textures: dict[str, list[torch.Tensor]] = {}
    masks: dict[str, list[torch.Tensor]] = {}
    for it in items:
        photo, scale = working_copy(read_image(it["path"]), MAX_SIDE)
        lm = torch.tensor(it["landmarks"], dtype=torch.float32)[None] / scale
        box = torch.tensor(it["box"], dtype=torch.float32)[None] / scale
        for name, (_, o) in methods.run(photo, lm, box, gd).items():
            textures.setdefault(name, []).append(o.texture[0].detach())
            masks.setdefault(name, []).append(o.mask[0])
    ids = [it["identity"] for it in items]
    report = {}
    for name in textures:
        T, M = torch.stack(textures[name]), torch.stack(masks[name])
        report[name] = {"auc": same_different_auc(ncc_distances(T, M), ids),
                        "symmetry": float(np.mean([float(symmetry_loss(T[k:k + 1], M[k:k + 1])) for k in range(len(T))]))}
    if figure is not None:
        from morphable.train.logging import tile_images

        people = sorted(set(ids), key=lambda p: -ids.count(p))[:4]
        cells = []
        for person in people:
            rows = [k for k, p in enumerate(ids) if p == person]
            for name in textures:
                mean, _ = mean_flattened(torch.stack([textures[name][k] for k in rows]),
                                         torch.stack([masks[name][k] for k in rows]))
                cells.append(mean.clamp(0, 1))
        grid = tile_images(torch.stack(cells), columns=len(textures))
        figure.parent.mkdir(parents=True, exist_ok=True)
        write_image(figure, grid.numpy())
    report["n"] = len(items)
    report["identities"] = len(set(ids))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="photos with .pts landmarks")
    ap.add_argument("--deepface", type=Path, help="a prepared dataset with identities (dense correspondence)")
    ap.add_argument("--localiser", action="append", help="shipped name or weights file (repeatable; first = headline)")
    ap.add_argument("--limit", type=int, default=0, help="at most this many faces of --data (0 = all)")
    ap.add_argument("--iterations", type=int, default=100, help="gradient-descent steps")
    ap.add_argument("--gd-faces", type=int, default=20, help="gradient descent on the first this-many faces of --data")
    ap.add_argument("--gd-correspondence", action="store_true", help="gradient descent in the correspondence test too")
    ap.add_argument("--size", type=int, default=64, help="flattened texture side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=PRECISIONS, default="auto", help="the dlib trunk's inference precision")
    ap.add_argument("--figure", type=Path, help="write the per-person mean flattened textures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.localiser or ["stn-sfm"]
    locs = {f"localiser:{n}": load_localiser(n, precision=args.precision) for n in names}
    first = next(iter(locs.values()))
    model = morphable.load_model(first.model_name)
    stn = SpatialTransformer3DMM(model, uv_grid(model_uv(model), model.triangles, (args.size, args.size)), 128)
    methods = Methods(model, stn, locs, first.n_shape, args.iterations, expression=first.n_expression > 0)
    marks = landmark_benchmark(methods, args.data, args.limit, args.gd_faces)
    ms = {k: 1000 * float(np.median(v)) for k, v in methods.times.items()}
    print(f"landmarks: {marks['n']} faces of {args.data} ({marks['fallback']} without a matching dlib box); "
          f"model {first.model_name}, D = {first.n_shape}, E = {first.n_expression}")
    print(f"{'method':<34}{'NME (51 pts)':>14}{'NME, GD faces':>15}{'ms/face':>10}{'× linear time':>15}")
    for k in marks["nme"]:
        print(f"{k:<34}{marks['nme'][k]:>14.4f}{marks['nme_gd_faces'][k]:>15.4f}{ms[k]:>10.2f}"
              f"{ms[k] / ms['linear']:>15.2f}")
    print(f"(gradient descent ran on the first {marks['n_gd']} faces; 'NME, GD faces' compares all on those)")
    head = f"localiser:{names[0]}"
    nan = float("nan")  # --gd-faces 0: no gradient-descent figures
    result = {"n": marks["n"], "n_gd": marks["n_gd"], "localiser_ms": ms[head], "gd_ms": ms.get("gd", nan),
              "linear_ms": ms["linear"], "localiser_nme": marks["nme"][head], "gd_nme": marks["nme"].get("gd", nan),
              "linear_nme": marks["nme"]["linear"],
              "localiser_vs_linear_nme": marks["nme"][head] / marks["nme"]["linear"],
              "precision": str(inference_dtype(args.precision)).removeprefix("torch.")}
    for n in names[1:]:
        key = Path(n).stem.replace("-", "_")
        result[f"{key}_ms"], result[f"{key}_nme"] = ms[f"localiser:{n}"], marks["nme"][f"localiser:{n}"]
    if args.deepface:
        methods.times.clear()
        corr = correspondence_benchmark(methods, args.deepface, args.figure, args.gd_correspondence)
        print(f"dense correspondence: {corr['n']} faces, {corr['identities']} people of {args.deepface}")
        print(f"{'method':<34}{'same/diff AUC (NCC)':>20}{'symmetry error':>16}")
        for k, v in corr.items():
            if isinstance(v, dict):
                print(f"{k:<34}{v['auc']:>20.3f}{v['symmetry']:>16.5f}")
        for k in ("localiser", "gd", "linear"):
            name = head if k == "localiser" else k
            if name in corr:
                result[f"{k}_auc"], result[f"{k}_sym"] = corr[name]["auc"], corr[name]["symmetry"]
    print("RESULT " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
