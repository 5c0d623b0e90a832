"""Face detection and iBUG-68 landmarks with dlib (HOG detector + ERT shape predictor).

* Detector: dlib's frontal HOG + linear SVM detector (``get_frontal_face_detector``), run through
  ``detector.run(image, upsample, adjust_threshold)`` so every box comes with its SVM score.
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

from morphable.errors import MorphableError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


@dataclass(frozen=True)
class Detection:
    """One detected face.

    Attributes:
        box: ``(4,)`` float64 ``(left, top, right, bottom)`` in 0-based pixels of the input image.
        score: the HOG-SVM detection score (higher = more face-like; 0 is dlib's default threshold).
        landmarks: ``(68, 2)`` float64 iBUG-68 points, 0-based pixels (x right, y down).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray


def predictor_path() -> Path:
    """Path of ``shape_predictor_68_face_landmarks.dat`` inside the ``face_recognition_models`` wheel."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MorphableError("the dlib 68-point landmark model is missing: pip install face_recognition_models")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise MorphableError(f"{path}: dlib 68-point landmark model not found (reinstall face_recognition_models)")
    return path


@lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


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


def detect_landmarks(image: np.ndarray, *, all_faces: bool = False, upsample: int = 1,
                     adjust_threshold: float = 0.0, max_size: int | None = 1024) -> list[Detection]:
    """Detect faces and their 68 iBUG landmarks.

    Args:
        image: ``(H, W, 3)`` (or ``(H, W)``, ``(H, W, 4)``) uint8 RGB photo.
        all_faces: return every face; by default only the best-scoring one (upsampling also fires on
            small faces printed on clothes or in the background).
        upsample: how many times dlib doubles the image before detecting (finds faces down to ~40 px
            at 1, ~80 px at 0).
        adjust_threshold: added to the detector's threshold (negative finds more, weaker faces).
        max_size: detect on a copy whose longer side is at most this many pixels (``None``: never shrink).
    Returns:
        Detections sorted by score, best first (empty when no face is found; at most one unless
        ``all_faces``).
    """
    import dlib

    image = _as_rgb_uint8(image)
    small, factor = _downscaled(image, max_size)
    rects, scores, _ = _detector().run(small, upsample, adjust_threshold)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    if not all_faces:
        order = order[:1]
    predictor = _predictor()
    out = []
    for i in order:
        r = rects[int(i)]
        # pixel centre i of the small copy sits at (i + 0.5) * factor - 0.5 in the original
        box = (np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.float64) + 0.5) * factor - 0.5
        rect = dlib.rectangle(*(int(round(c)) for c in box))
        shape = predictor(image, rect)
        points = np.array([(shape.part(k).x, shape.part(k).y) for k in range(shape.num_parts)], dtype=np.float64)
        out.append(Detection(box=box, score=float(scores[int(i)]), landmarks=points))
    return out
