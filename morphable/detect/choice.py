"""Which detected face to reconstruct: the one rule every command and :func:`morphable.reconstruct` use.

``face`` is ``"largest"`` (the default: the photo's subject — the best HOG score also fires on sharp small
faces in the background, as in ``einstein.jpg``), ``"best"`` (highest detector score), ``"all"``, or an
index into the faces ordered largest first (the order of ``"all"``).

"Largest" is the biggest detection box, except that boxes of about the same size (area at least
``SIMILAR_AREA`` of the biggest) are decided by the detector's score: two boxes of similar size are as
likely to be a face and a face-like pattern (``astronaut``: her face, 87 px, and the patch on her suit,
89 px, score 1.53 against 0.12) as two faces.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from morphable.detect.dlib68 import Detection

FACE_CHOICES = ("largest", "best", "all")
SIMILAR_AREA = 0.5
"""Boxes with at least this fraction of the biggest box's area count as the same size for ``largest``."""


def parse_face(value: str | int) -> str | int:
    """``"largest"``/``"best"``/``"all"`` or a non-negative index (also given as a string, e.g. ``"2"``).

    Raises:
        ValueError: anything else (the message lists the choices).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"face index must be >= 0, got {value}")
        return value
    text = str(value).strip().lower()
    if text in FACE_CHOICES:
        return text
    if text.isdigit():
        return int(text)
    raise ValueError(f"face must be one of largest, best, all or an index (0 = largest), got {value!r}")


def box_area(detection: Detection) -> float:
    """Area of the detection box, px²."""
    left, top, right, bottom = np.asarray(detection.box, dtype=np.float64)
    return max(0.0, right - left) * max(0.0, bottom - top)


def by_size(detections: Sequence[Detection]) -> list[Detection]:
    """Detections ordered largest box first (ties: higher score first)."""
    return sorted(detections, key=lambda d: (-box_area(d), -d.score))


def choose_faces(detections: Sequence[Detection], face: str | int = "largest") -> list[tuple[int, Detection]]:
    """The faces to reconstruct, each with its index in the largest-first order.

    Args:
        detections: every face found in one photo (any order).
        face: see the module docstring.
    Returns:
        ``[(index, detection), ...]``: one pair, or every face for ``"all"``; empty when ``detections`` is.
    Raises:
        ValueError: an index past the number of faces, or an unknown choice.
    """
    face = parse_face(face)
    ordered = by_size(detections)
    if not ordered:
        return []
    if face == "all":
        return list(enumerate(ordered))
    if face == "largest":
        similar = [i for i, d in enumerate(ordered) if box_area(d) >= SIMILAR_AREA * box_area(ordered[0])]
        pick = max(similar, key=lambda i: ordered[i].score)
        return [(pick, ordered[pick])]
    if face == "best":
        best = max(range(len(ordered)), key=lambda i: ordered[i].score)
        return [(best, ordered[best])]
    if face >= len(ordered):
        raise ValueError(f"face index {face} asked for, but only {len(ordered)} face(s) found (0 = largest)")
    return [(face, ordered[face])]


def describe_choice(chosen: Sequence[tuple[int, Detection]], found: int, face: str | int) -> str | None:
    """One line saying which face was used when several were found (``None`` for a lone face)."""
    if found < 2 or len(chosen) != 1:
        return None
    index, d = chosen[0]
    width = d.box[2] - d.box[0]
    rule = face if isinstance(face, str) else "index"
    return (f"{found} faces found; using face {index} ({rule}: {width:.0f} px wide, score {d.score:.2f}); "
            "--face largest|best|all|INDEX chooses another")


def detect_faces(image: np.ndarray, face: str | int = "largest", *, detector: str = "auto",
                 max_size: int | None = 1024) -> tuple[list[tuple[int, Detection]], str | None]:
    """Detect every face in a photo with dlib and keep the chosen ones (:func:`choose_faces`).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        face, detector, max_size: see :func:`choose_faces` and
            :func:`~morphable.detect.dlib68.detect_landmarks`.
    Returns:
        The chosen ``(index, detection)`` pairs (empty when no face is found) and the
        :func:`describe_choice` line (``None`` unless several faces were found and one was kept).
    """
    from morphable.detect.dlib68 import detect_landmarks

    face = parse_face(face)
    found = detect_landmarks(image, all_faces=True, detector=detector, max_size=max_size)
    chosen = choose_faces(found, face)
    return chosen, describe_choice(chosen, len(found), face)
