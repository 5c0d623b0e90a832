"""Depth images (io/depth.py): 16-bit PNG / TIFF and .npy to millimetres, holes as NaN, bad files as one-line
errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from morphable.errors import InputError
from morphable.io.depth import read_depth


def test_16_bit_png_and_tiff_in_millimetres(tmp_path):
    rng = np.random.default_rng(0)
    units = rng.integers(1, 65535, size=(30, 40)).astype(np.uint16)
    units[3, 4] = 0  # no reading
    for name in ("d.png", "d.tif"):
        Image.fromarray(units).save(tmp_path / name)
        depth = read_depth(tmp_path / name, unit_mm=0.2)  # TUM RGB-D: 5000 units per metre
        assert depth.shape == (30, 40) and depth.dtype == np.float32
        assert np.isnan(depth[3, 4]) and np.isnan(depth).sum() == 1
        ok = units > 0
        np.testing.assert_allclose(depth[ok], units[ok].astype(np.float64) * 0.2, rtol=1e-6)


def test_npy_holes(tmp_path):
    d = np.array([[600.5, 0.0, -3.0], [np.inf, np.nan, 700.25]])
    np.save(tmp_path / "d.npy", d)
    out = read_depth(tmp_path / "d.npy")
    assert np.isnan(out).tolist() == [[False, True, True], [True, True, False]]
    assert out[0, 0] == np.float32(600.5) and out[1, 2] == np.float32(700.25)


def test_bad_depth_files(tmp_path):
    Image.fromarray(np.full((5, 5), 100, np.uint8)).save(tmp_path / "eight.png")
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(tmp_path / "empty.png")
    np.save(tmp_path / "cube.npy", np.ones((2, 3, 4)))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "d.exr").write_bytes(b"")
    cases = {"eight.png": "16- or 32-bit", "empty.png": "no reading", "cube.npy": "2-D numeric",
             "objects.npy": "not a readable .npy", "junk.png": "cannot read depth", "d.exr": "unknown depth format",
             "absent.png": "no such depth file"}
    for name, message in cases.items():
        with pytest.raises(InputError, match=message) as err:
            read_depth(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unit_mm"):
        read_depth(tmp_path / "eight.png", unit_mm=0)
