"""Parameter files: numpy/torch values stored as lists, read back equal; bad JSON -> InputError."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from morphable.errors import InputError
from morphable.io import read_params, write_params


def test_round_trip_values(tmp_path):
    identity = np.random.default_rng(0).normal(size=(2, 5))
    params = {
        "identity": identity,
        "expression": torch.tensor([[0.25, -1.5]], dtype=torch.float64, requires_grad=True),
        "camera": {"scale": np.float32(0.5), "rotation": (0.1, 0.2, 0.3), "kind": "scaled_orthographic"},
        "landmarks": [[1.0, float("nan")]],
        "image": Path("photo.jpg"),
        "frames": np.int64(3),
    }
    write_params(tmp_path / "p.json", params)
    back = read_params(tmp_path / "p.json")
    np.testing.assert_array_equal(np.asarray(back["identity"]), identity)  # shortest repr: exact float64
    assert back["expression"] == [[0.25, -1.5]]
    assert back["camera"] == {"scale": 0.5, "rotation": [0.1, 0.2, 0.3], "kind": "scaled_orthographic"}
    assert math.isnan(back["landmarks"][0][1])
    assert back["image"] == "photo.jpg" and back["frames"] == 3


def test_unstorable_values(tmp_path):
    with pytest.raises(TypeError, match="camera.obj"):
        write_params(tmp_path / "p.json", {"camera": {"obj": object()}})
    with pytest.raises(TypeError):
        write_params(tmp_path / "p.json", [1, 2])
    assert not (tmp_path / "p.json").exists()


def test_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text('{"a": [1, 2')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    for name in ("bad.json", "list.json", "bin.json", "missing.json"):
        with pytest.raises(InputError, match=name):
            read_params(tmp_path / name)


def test_fit_schema_upgrades_the_old_dialects(tmp_path):
    from morphable.io.params import PARAMS_VERSION, read_fit_params, upgrade_params

    old_fit = {"model": "sfm", "image_size": {"width": 120, "height": 150}, "rotation": [0.1, 0.2, 0.3],
               "translation": [60.0, 70.0], "scale": 0.4, "light": [0.0] * 27, "energies": {"total": 1.0}}
    new = upgrade_params(old_fit)
    assert new["version"] == PARAMS_VERSION and new["schema"] == "morphable.params"
    assert new["camera"] == {"type": "scaled_orthographic", "scale": 0.4, "rotation": [0.1, 0.2, 0.3],
                             "translation": [60.0, 70.0]}
    assert "rotation" not in new and new["photometric"] == {"light": [0.0] * 27, "energies": {"total": 1.0}}
    old_stn = {"model": "sfm", "image_size": [150, 120], "rotation": [0, 0, 0], "translation": [1, 2], "scale": 2.0}
    assert upgrade_params(old_stn)["image_size"] == {"width": 120, "height": 150}
    perspective = {"model": "ict", "image_size": [100, 200], "rotation": [0, 0, 0], "translation": [0, 0, -500],
                   "focal": 300.0}
    assert upgrade_params(perspective)["camera"]["principal_point"] == [99.5, 49.5]
    assert upgrade_params(new) == new  # the current version passes unchanged
    path = tmp_path / "p.json"
    write_params(path, old_fit)
    assert read_fit_params(path) == new


@pytest.mark.parametrize("params, message", [
    ({"model": "sfm", "image_size": [10, 10]}, "missing camera"),
    ({"image_size": [10, 10], "camera": {}}, "missing model"),
    ({"model": "sfm", "image_size": [0, 10], "scale": 1, "rotation": [0, 0, 0], "translation": [0, 0]},
     "must be positive"),
    ({"model": "sfm", "image_size": "big", "camera": {"type": "x"}}, "image_size must be"),
    ({"model": "sfm", "image_size": [10, 10], "camera": {"type": "fisheye"}}, "cannot build the camera"),
    ({"model": "sfm", "image_size": [10, 10], "camera": {"type": "scaled_orthographic", "scale": 1,
                                                         "rotation": [0, 0], "translation": [0, 0]}},
     "cannot build the camera"),
    ({"model": "sfm", "image_size": [10, 10], "scale": 1, "rotation": [0, 0, 0], "translation": [0, 0],
      "identity": ["a"]}, "identity must be a list of numbers"),
    ({"version": 99, "model": "sfm"}, "params version 99 is not supported"),
])
def test_fit_schema_rejects_bad_files(params, message):
    from morphable.io.params import upgrade_params

    with pytest.raises(InputError, match=message):
        upgrade_params(params, "p.json")
