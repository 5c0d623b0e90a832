"""Real faces for the identity tests: dlib HOG detection + 68 landmarks on a downscaled copy (fast),
landmarks mapped back to the full photo, and dlib's own 150 x 150 chip of the full photo."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import dlib
import numpy as np
from PIL import Image

from morphable.identity.dlib_serialization import default_weights_path
from morphable.io.image import read_image

# The 13 identities of deepface/tests/unit/dataset (../shared/data/MANIFEST.md).
DEEPFACE_IDENTITIES = (
    (1, 2, 4, 5, 6, 7, 10, 11), (26, 27, 28, 42, 43, 44, 45, 46), (8, 9, 47, 48, 49, 50, 51),
    (3, 12, 53, 54, 55, 56), (16, 17, 59, 61, 62), (13, 14, 15, 57, 58), (29, 30, 31, 32, 33),
    (38, 39, 40, 41), (34, 35, 36, 37), (18, 19, 67), (20, 21), (22, 23), (24, 25),
)


@dataclass(frozen=True)
class Face:
    image: np.ndarray  # (H, W, 3) uint8 RGB, full resolution
    landmarks68: np.ndarray  # (68, 2) px in the full image
    landmarks5: np.ndarray  # (5, 2) px in the full image
    chip: np.ndarray  # dlib.get_face_chip(image, 68-point shape, 150, 0.25)


@lru_cache(maxsize=None)
def _models():
    folder = default_weights_path().parent
    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat")),
            dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat")))


def _points(shape) -> np.ndarray:
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


@lru_cache(maxsize=None)
def largest_face(path: Path, max_side: int = 640) -> Face | None:
    """The largest face dlib finds in the photo (detected on a copy at most ``max_side`` px wide/high)."""
    detector, predictor68, predictor5 = _models()
    image = read_image(path)
    factor = max(1.0, max(image.shape[:2]) / max_side)
    small = np.asarray(Image.fromarray(image).resize(
        (round(image.shape[1] / factor), round(image.shape[0] / factor)), Image.BILINEAR))
    boxes = detector(small, 0) or detector(small, 1)
    if not boxes:
        return None
    box = max(boxes, key=lambda b: b.area())
    full_box = dlib.rectangle(*(round(v * factor) for v in (box.left(), box.top(), box.right(), box.bottom())))
    shape68, shape5 = predictor68(image, full_box), predictor5(image, full_box)
    chip = dlib.get_face_chip(image, shape68, 150, 0.25)
    return Face(image, _points(shape68), _points(shape5), chip)
