"""Dataset adapters: identity trees, CelebA identity files, 300W-LP / AFLW2000-3D MATLAB landmarks."""
import numpy as np
import pytest
import scipy.io

from morphable.detect.formats import read_landmarks
from morphable.errors import InputError
from morphable.train.data.adapters import (
    celeba_identities,
    identity_tree,
    label_flags,
    read_mat_landmarks,
    stage_mat_landmarks,
)
from morphable.train.data.manifest import ManifestItem
from tests.conftest import data_file


def test_identity_tree_lists_photos_per_folder(tmp_path):
    for who, n in (("n0001", 2), ("n0002", 1)):
        (tmp_path / who).mkdir()
        for i in range(n):
            (tmp_path / who / f"{i:04d}_01.jpg").write_bytes(b"x")
    photos = identity_tree(tmp_path)
    assert [(p.parent.name, p.name) for p in photos] == [("n0001", "0000_01.jpg"), ("n0001", "0001_01.jpg"),
                                                         ("n0002", "0000_01.jpg")]
    (tmp_path / "loose.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="directly in the root"):
        identity_tree(tmp_path)
    (tmp_path / "empty" / "n0003").mkdir(parents=True)
    with pytest.raises(InputError, match="no identity folder"):
        identity_tree(tmp_path / "empty")


def test_celeba_identity_file(tmp_path):
    f = tmp_path / "identity_CelebA.txt"
    f.write_text("000001.jpg 2880\n000002.jpg 2937\n\n000003.jpg 2880\n")
    assert celeba_identities(f) == {"000001": "2880", "000002": "2937", "000003": "2880"}
    f.write_text("000001.jpg 2880\n000002.jpg x\n")
    with pytest.raises(InputError, match=r"identity_CelebA.txt:2"):
        celeba_identities(f)
    f.write_text("000001.jpg 1\n000001.jpg 2\n")
    with pytest.raises(InputError, match="twice"):
        celeba_identities(f)


def test_mat_landmarks_of_both_datasets_and_staging(tmp_path):
    aflw = data_file("PRNet/TestImages/AFLW2000/image00050.mat")
    reference = read_landmarks(data_file("_derived/aflw2000_3d/image00050.orig_pt3d68_xy.pts"))
    pts = read_mat_landmarks(aflw)
    # the derived .pts holds the same numbers written as 0-based (read as 1-based: off by one)
    np.testing.assert_allclose(pts, reference + 1.0, atol=1e-5)
    lp = read_mat_landmarks(data_file("face3d/examples/Data/IBUG_image_008_1_0.mat"))
    assert lp.shape == (68, 2) and np.isfinite(lp).all()
    scipy.io.savemat(tmp_path / "x_pts.mat", {"pts_2d": np.arange(136.0).reshape(68, 2)})
    np.testing.assert_array_equal(read_mat_landmarks(tmp_path / "x_pts.mat"), np.arange(136.0).reshape(68, 2))
    scipy.io.savemat(tmp_path / "bad.mat", {"pt2d": np.zeros((2, 21))})
    with pytest.raises(InputError, match="no 68-point"):
        read_mat_landmarks(tmp_path / "bad.mat")
    photo = data_file("PRNet/TestImages/AFLW2000/image00050.jpg")
    staged = stage_mat_landmarks([photo, data_file("PRNet/TestImages/AFLW2000/image00081.jpg")], tmp_path / "s")
    assert [p.name for p in staged] == ["image00050.jpg", "image00081.jpg"]
    assert staged[0].resolve() == photo.resolve()
    np.testing.assert_allclose(read_landmarks(tmp_path / "s" / "image00050.pts"), pts, atol=1e-5)


def test_label_flags():
    base = dict(key="k", path="/p.jpg", face=0, landmarks=np.zeros((68, 2)), box=(0, 0, 1, 1), source="s",
                chip="chips/k.png")
    assert label_flags(ManifestItem(identity="a", landmarks_from="file", **base)).landmarks
    f = label_flags(ManifestItem(identity=None, landmarks_from="dlib", **base))
    assert not f.identity and not f.landmarks
