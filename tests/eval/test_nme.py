"""Landmark NME: hand-computed cases, the yaw-bin convention, failures, and the AFLW2000-3D arrays."""
import json

import numpy as np
import pytest

from morphable.eval.nme import bbox_size, nme_300w, nme_aflw2000, outer_eye_distance


def _face(rng, n=1):
    gt = rng.uniform(100, 300, size=(n, 68, 2))
    gt[:, 0] = [100, 100]                                     # fixes the box: 200 x 50 -> sqrt = 100
    gt[:, 1] = [300, 150]
    gt[:, 2:, 1] = np.clip(gt[:, 2:, 1], 100, 150)
    return gt


def test_bbox_normalisation_by_hand():
    gt = _face(np.random.default_rng(0))
    assert bbox_size(gt)[0] == pytest.approx(100.0)
    report = nme_aflw2000(gt + [3.0, 4.0], gt, [10.0])      # every point 5 px off
    assert report.per_image[0] == pytest.approx(0.05)
    assert report.headline == pytest.approx(0.05) and report.bins[0][2] == 1 and report.bins[1][2] == 0


def test_300w_normalisation_by_hand():
    gt = _face(np.random.default_rng(1))
    gt[0, 36], gt[0, 45] = [120, 120], [180, 200]              # 100 px apart
    assert outer_eye_distance(gt)[0] == pytest.approx(100.0)
    pred = gt.copy()
    pred[0, :34] += [0, 2]                                    # half the points 2 px off -> mean 1 px
    assert nme_300w(pred, gt).headline == pytest.approx(0.01)


def test_yaw_bins_and_headline():
    """3DDFA's bins: |yaw| <= 30, 30 < |yaw| <= 60, |yaw| > 60; headline = mean of the bin means."""
    rng = np.random.default_rng(2)
    gt = _face(rng, 7)
    offsets = np.array([1.0, 2, 3, 4, 5, 6, 7])               # NME_i = offset_i / 100
    pred = gt + offsets[:, None, None] * [1.0, 0.0]
    yaws = [0.0, -30.0, 30.5, -60.0, 61.0, 95.0, 12.0]
    report = nme_aflw2000(pred, gt, yaws)
    assert [b[2] for b in report.bins] == [3, 2, 2]
    bin_means = [np.mean([1, 2, 7]) / 100, np.mean([3, 4]) / 100, np.mean([5, 6]) / 100]
    assert [b[3] for b in report.bins] == pytest.approx(bin_means)
    assert report.headline == pytest.approx(np.mean(bin_means))
    assert report.mean == pytest.approx(offsets.mean() / 100)


def test_failures_are_counted_not_averaged():
    rng = np.random.default_rng(3)
    gt = _face(rng, 3)
    pred = gt + [1.0, 0.0]
    pred[1] = np.nan
    report = nme_300w(pred, gt)
    assert report.failures == 1 and np.isnan(report.per_image[1]) and np.isfinite(report.mean)
    with pytest.raises(ValueError, match="equal shape"):
        nme_300w(pred[:, :60], gt)


def test_aflw2000_arrays_follow_the_sorted_file_names(data):
    """The 8 corpus images' ground truth is the stated row of the 3DDFA arrays; their yaws bin 5/2/1."""
    from scipy.io import loadmat

    index = json.loads(data("_derived/aflw2000_3d/index.json").read_text())
    pts68 = np.load(data("3DDFA/test.configs/AFLW2000-3D.pts68.npy"))
    reannotated = np.load(data("3DDFA/test.configs/AFLW2000-3D-Reannotated.pts68.npy"))
    yaw = np.load(data("3DDFA/test.configs/AFLW2000-3D.pose.npy"))
    rows = [entry["npy_row"] for entry in index]
    for entry in index:
        mat = loadmat(data(entry["gt_mat"]))
        np.testing.assert_allclose(mat["pt3d_68"][:2], pts68[entry["npy_row"], :2], atol=1e-4)
    report = nme_aflw2000(pts68[rows, :2].transpose(0, 2, 1), reannotated[rows].transpose(0, 2, 1), yaw[rows])
    assert [b[2] for b in report.bins] == [5, 2, 1]
    assert 0.0 < report.headline < 0.1                          # two annotations of the same faces
