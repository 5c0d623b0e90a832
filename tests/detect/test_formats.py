"""Landmark files: .pts with/without header (1-based on disk), JSON (0-based), clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from morphable.detect.formats import read_landmarks, write_landmarks_json, write_pts
from morphable.errors import InputError
from tests.conftest import data_file


def _raw_numbers(path):
    """The coordinates exactly as written in the file (independent of our parser)."""
    rows = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2:
            try:
                rows.append((float(fields[0]), float(fields[1])))
            except ValueError:
                pass
    return np.array(rows)


def test_pts_with_header_is_shifted_to_zero_based():
    path = data_file("superviseddescent/examples/data/ibug_lfpw_trainset/image_0001.pts")
    assert path.read_text().startswith("version")
    points = read_landmarks(path)
    raw = _raw_numbers(path)
    assert points.shape == (68, 2) and raw.shape == (68, 2)
    np.testing.assert_allclose(points, raw - 1.0)


def test_pts_without_header_afw():
    path = data_file("Spinkoo-Face-alignement/afw/afw/1139324862_1.pts")
    assert not path.read_text().startswith("version")
    points = read_landmarks(path)
    np.testing.assert_allclose(points, _raw_numbers(path) - 1.0)
    np.testing.assert_allclose(points[0], [228.197518, 234.632827])


def test_all_afw_files_parse():
    folder = data_file("Spinkoo-Face-alignement/afw/afw")
    files = sorted(folder.glob("*.pts"))
    assert len(files) == 94
    stack = np.stack([read_landmarks(f) for f in files])
    assert np.isfinite(stack).all()


def test_write_pts_round_trip_and_header(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 500, (68, 2))
    path = tmp_path / "a.pts"
    write_pts(path, points)
    text = path.read_text()
    assert text.startswith("version: 1\nn_points: 68\n{\n") and text.rstrip().endswith("}")
    np.testing.assert_allclose(_raw_numbers(path), points + 1.0, atol=1e-6)
    np.testing.assert_allclose(read_landmarks(path), points, atol=1e-6)


def test_json_list_object_and_missing(tmp_path):
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 100, (68, 2))
    (tmp_path / "list.json").write_text(json.dumps(points.tolist()))
    np.testing.assert_allclose(read_landmarks(tmp_path / "list.json"), points)  # JSON is 0-based: no shift
    points[5] = np.nan
    write_landmarks_json(tmp_path / "obj.json", points)
    back = read_landmarks(tmp_path / "obj.json")
    assert np.isnan(back[5]).all()
    np.testing.assert_allclose(np.delete(back, 5, 0), np.delete(points, 5, 0))


@pytest.mark.parametrize("name, content, words", [
    ("short.pts", "1 2\n3 4\n", "expected 68 landmarks"),
    ("bad.pts", "1 2\nx y\n", "line 2"),
    ("count.pts", "version: 1\nn_points: 67\n{\n" + "1 2\n" * 68 + "}\n", "n_points 67"),
    ("open.pts", "version: 1\nn_points: 68\n{\n" + "1 2\n" * 68, "closing"),
    ("nan.pts", "nan 1\n" * 68, "non-finite"),
    ("bad.json", "[[1, 2], ", "invalid JSON"),
    ("key.json", '{"points": []}', "'landmarks'"),
    ("pair.json", "[[1, 2, 3]]", "landmark 0"),
    ("short.json", "[[1, 2]]", "expected 68 landmarks"),
    ("binary.pts", b"\xff\xfe\x00", "cannot read"),
])
def test_bad_files_raise_input_error_naming_the_file(tmp_path, name, content, words):
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(InputError) as err:
        read_landmarks(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        read_landmarks(tmp_path / "none.pts")


def test_write_rejects_nan(tmp_path):
    with pytest.raises(ValueError):
        write_pts(tmp_path / "x.pts", np.full((68, 2), np.nan))
