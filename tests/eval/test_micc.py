"""MICC/Genova protocol on a synthetic face: crop, ICP with scale (from landmarks or nose tips), offsets,
partial overlap."""
import numpy as np
import pytest
import torch

from morphable.eval.micc import crop_around, micc_errors
from morphable.geometry.align import Similarity
from morphable.geometry.rotation import axis_angle_to_matrix


def _rot(r):
    return axis_angle_to_matrix(torch.as_tensor(r, dtype=torch.float64)).numpy()


def test_crop_around_by_hand():
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0]])
    triangles = np.array([[0, 1, 2], [1, 3, 2]])
    ids, tri = crop_around(vertices, triangles, np.zeros(3), radius=2.0)
    assert ids.tolist() == [0, 1, 2] and tri.tolist() == [[0, 1, 2]]


def test_identical_surface_after_similarity_with_landmarks(patch):
    vertices, triangles, ids = patch
    move = Similarity(0.01, _rot([0.3, -2.0, 0.5]), np.array([0.1, 0.2, -0.3]))   # e.g. metres, any pose
    pred = move.apply(vertices)
    noisy = pred[ids] + np.random.default_rng(0).normal(size=(7, 3)) * 0.03      # 3 mm at this scale
    result = micc_errors(vertices, triangles, pred, triangles, gt_landmarks=vertices[ids], pred_landmarks=noisy)
    assert result.transform.scale == pytest.approx(100.0, rel=1e-6)
    assert result.mean_mm < 1e-3 and result.median_mm < 1e-3
    assert len(result.gt_to_pred) > 0.9 * len(result.gt_ids) and len(result.pred_to_gt) > 1000


def test_nose_tip_start_without_landmarks(patch):
    vertices, triangles, _ = patch
    move = Similarity(1.08, _rot([0.05, -0.06, 0.03]), np.array([30.0, -20.0, 500.0]))
    result = micc_errors(vertices, triangles, move.apply(vertices), triangles)
    assert result.transform.scale == pytest.approx(1 / 1.08, rel=1e-6)
    assert result.mean_mm < 1e-3


@pytest.mark.parametrize("offset", [0.3, 1.0])
def test_no_align_measures_a_known_offset(patch, normals_of, offset):
    vertices, triangles, _ = patch
    pred = vertices + offset * normals_of(vertices, triangles)
    result = micc_errors(vertices, triangles, pred, triangles, align=False)
    assert result.mean_mm == pytest.approx(offset, rel=0.02)
    assert result.std_mm < 0.05 * offset


def test_partial_prediction_is_measured_on_the_overlap(patch):
    """A prediction covering only the central face: no error from the scan beyond its rim."""
    vertices, triangles, _ = patch
    tip = vertices[np.argmax(vertices[:, 2])]
    keep, tri = crop_around(vertices, triangles, tip, radius=45.0)
    move = Similarity(1.1, _rot([0.02, 0.03, -0.02]), np.array([2.0, -1.0, 1.0]))
    result = micc_errors(vertices, triangles, move.apply(vertices[keep]), tri)
    assert result.mean_mm < 1e-3
    assert result.gt_overlap.sum() < 0.7 * len(result.gt_ids)
    rigid = micc_errors(vertices, triangles, move.apply(vertices[keep]), tri, scale=False)
    assert rigid.mean_mm > 0.1                       # a 10 % size error cannot be aligned away rigidly
