"""Face detection and iBUG-68 landmarks with dlib (HOG or CNN detector + ERT shape predictor).

* Detector: dlib's frontal HOG + linear SVM detector (``get_frontal_face_detector``), run through
  ``detector.run(image, upsample, adjust_threshold)`` so every box comes with its SVM score. It misses
  strongly rotated, profile, partly covered (sunglasses) and drawn faces; for those, dlib's CNN detector
  (King, "Max-Margin Object Detection", 2015; ``mmod_human_face_detector.dat`` from the same wheel) is
  the fallback of ``detector="auto"``: run only when HOG finds nothing, because it costs ~1 s per
  0.2 megapixels on a CPU core. It runs on a copy of at most ``CNN_MAX_SIZE`` pixels per side.
* Landmarks: Kazemi & Sullivan, "One millisecond face alignment with an ensemble of regression trees"
  (CVPR 2014), the 68-point model trained on iBUG 300-W that ships in the ``face_recognition_models``
  wheel. That package is never imported (its ``__init__`` needs ``pkg_resources``); we only locate its
  folder with :func:`importlib.util.find_spec`.

Coordinates: dlib addresses pixels by integer index, ``part(i) = (x, y)`` meaning column x, row y, with
the top-left pixel at ``(0, 0)`` — exactly our convention (0-based, pixel centres at integers). Checked
against the 1-based 300-W ground truth: over 35 AFW/LFPW faces the mean of ``dlib − gt_file`` is
``(−1.7, −0.9)`` px, i.e. about the −1 of the 1-based shift (``tests/detect/test_dlib68.py``). dlib
rounds parts to whole pixels, so landmarks carry ±0.5 px quantisation.

Large photos are detected on a copy whose longer side is at most ``max_size`` pixels (the HOG pyramid
on a 4000-pixel photo takes seconds); the boxes are scaled back and the shape predictor runs on the
full-resolution image.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from morphable.errors import ModelFileError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_FILE = "mmod_human_face_detector.dat"
CNN_MAX_SIZE = 640
DETECTORS = ("auto", "hog", "cnn")


@dataclass(frozen=True)
class Detection:
    """One detected face.

    Attributes:
        box: ``(4,)`` float64 ``(left, top, right, bottom)`` in 0-based pixels of the input image.
        score: the detector's score (higher = more face-like): the HOG-SVM margin (0 is dlib's default
            threshold) or the CNN's confidence; only scores of the same detector compare.
        landmarks: ``(68, 2)`` float64 iBUG-68 points, 0-based pixels (x right, y down).
        detector: ``"hog"`` or ``"cnn"``.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    detector: str = "hog"


def weights_path(name: str = PREDICTOR_FILE) -> Path:
    """Path of a dlib weight file inside the ``face_recognition_models`` wheel (never imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(name, "package face_recognition_models is not installed (pip install face_recognition_models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise ModelFileError(path, "dlib weight file not found (reinstall face_recognition_models)")
    return path


def predictor_path() -> Path:
    """Path of ``shape_predictor_68_face_landmarks.dat``."""
    return weights_path(PREDICTOR_FILE)


@lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=1)
def _cnn_detector():
    """The MMOD CNN face detector, loaded once per process."""
    import dlib

    return dlib.cnn_face_detection_model_v1(str(weights_path(CNN_FILE)))


@lru_cache(maxsize=1)
def _predictor():
    """The shape predictor, loaded once per process (~0.7 s, 95 MB)."""
    import dlib

    return dlib.shape_predictor(str(predictor_path()))


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"detect_landmarks: expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"detect_landmarks: expected an (H, W, 3) image, got shape {image.shape}")
    return np.ascontiguousarray(image[..., :3])


def _downscaled(image: np.ndarray, max_size: int | None) -> tuple[np.ndarray, float]:
    """The image shrunk so its longer side is ≤ ``max_size`` and the factor ``original / small``."""
    longest = max(image.shape[:2])
    if max_size is None or longest <= max_size:
        return image, 1.0
    from PIL import Image

    factor = longest / max_size
    size = (max(1, round(image.shape[1] / factor)), max(1, round(image.shape[0] / factor)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    return small, factor


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(left, top, right, bottom)`` boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def _run_hog(image: np.ndarray, upsample: int, adjust_threshold: float,
             max_size: int | None) -> list[tuple[np.ndarray, float]]:
    """HOG boxes ``(left, top, right, bottom)`` in the image's pixels, with their scores.

    The detector runs at every upsampling level from ``upsample`` down to 0 and the boxes are merged
    (overlap > ½: the higher score's box is kept): a large face can score above the threshold at one
    pyramid and below it at another (``einstein.jpg``: 0.07 without upsampling, −0.22 with it). Level 0
    costs a quarter of level 1.
    """
    small, factor = _downscaled(image, max_size)
    found: list[tuple[np.ndarray, float]] = []
    for level in range(upsample, -1, -1):
        rects, scores, _ = _detector().run(small, level, adjust_threshold)
        for r, sc in zip(rects, scores):
            box = _box(r, factor)
            same = [i for i, (b, _) in enumerate(found) if _iou(b, box) > 0.5]
            if not same:
                found.append((box, float(sc)))
            elif found[same[0]][1] < sc:
                found[same[0]] = (box, float(sc))
    return found


def _run_cnn(image: np.ndarray, upsample: int, max_size: int | None) -> list[tuple[np.ndarray, float]]:
    """CNN (MMOD) boxes in the image's pixels, with their confidences."""
    small, factor = _downscaled(image, CNN_MAX_SIZE if max_size is None else min(max_size, CNN_MAX_SIZE))
    return [(_box(d.rect, factor), float(d.confidence)) for d in _cnn_detector()(small, upsample)]


def _box(rect, factor: float) -> np.ndarray:
    """A dlib rectangle of the shrunk copy -> ``(left, top, right, bottom)`` in original pixels."""
    # pixel centre i of the small copy sits at (i + 0.5) * factor - 0.5 in the original
    return (np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64) + 0.5) * factor - 0.5


def detect_landmarks(image: np.ndarray, *, all_faces: bool = False, upsample: int = 1,
                     adjust_threshold: float = 0.0, max_size: int | None = 1024,
                     detector: str = "auto") -> list[Detection]:
    """Detect faces and their 68 iBUG landmarks.

    Args:
        image: ``(H, W, 3)`` (or ``(H, W)``, ``(H, W, 4)``) uint8 RGB photo.
        all_faces: return every face; by default only the best-scoring one (upsampling also fires on
            small faces printed on clothes or in the background).
        upsample: how many times dlib doubles the image before HOG detection (finds faces down to
            ~40 px at 1, ~80 px at 0); the CNN fallback runs without upsampling.
        adjust_threshold: added to the HOG detector's threshold (negative finds more, weaker faces).
        max_size: detect on a copy whose longer side is at most this many pixels (``None``: never shrink).
        detector: ``"hog"``, ``"cnn"``, or ``"auto"`` (HOG, then CNN when HOG finds nothing).
    Returns:
        Detections sorted by score, best first (empty when no face is found; at most one unless
        ``all_faces``).
    """
    if detector not in DETECTORS:
        raise ValueError(f"detect_landmarks: detector must be one of {DETECTORS}, got {detector!r}")
    image = _as_rgb_uint8(image)
    kind = "hog"
    found = _run_hog(image, upsample, adjust_threshold, max_size) if detector != "cnn" else []
    if not found and detector != "hog":
        kind, found = "cnn", _run_cnn(image, 0, max_size)
    found.sort(key=lambda f: -f[1])
    if not all_faces:
        found = found[:1]
    return [Detection(box=box, score=score, landmarks=_predict(image, box), detector=kind) for box, score in found]


def _predict(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The shape predictor's 68 points ``(68, 2)`` for the face in ``box`` of a checked RGB uint8 image."""
    import dlib

    shape = _predictor()(image, dlib.rectangle(*(int(round(c)) for c in box)))
    return np.array([(shape.part(k).x, shape.part(k).y) for k in range(shape.num_parts)], dtype=np.float64)


def face_boxes(image: np.ndarray, *, upsample: int = 0, max_size: int | None = None) -> list[tuple[np.ndarray, float]]:
    """HOG face boxes ``(left, top, right, bottom)`` with their scores, without landmarks (e.g. to check
    that a small region around a tracked face still holds one: ``morphable track``)."""
    return _run_hog(_as_rgb_uint8(image), upsample, 0.0, max_size)


def landmarks_in_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The 68 iBUG landmarks ``(68, 2)`` (0-based px) of the face in ``box`` ``(left, top, right, bottom)``,
    without detection (e.g. a box tracked from the previous video frame: ``morphable track``)."""
    return _predict(_as_rgb_uint8(image), np.asarray(box, np.float64))
