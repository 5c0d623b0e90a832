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
