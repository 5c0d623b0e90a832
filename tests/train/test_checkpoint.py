"""Checkpoint files: round trip, every RNG restored, atomic writes, clear errors for corrupt files."""
from __future__ import annotations

import random
from collections import OrderedDict

import numpy as np
import pytest
import torch

from morphable.io.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state,
                                     save_checkpoint)


def _draw(generator: torch.Generator) -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
            torch.rand(3).tolist(), torch.rand(2, generator=generator).tolist())


def test_round_trip_and_rng_states(tmp_path):
    g = torch.Generator().manual_seed(5)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    np.random.randn()  # and in numpy's
    state = {"step": 7, "model": OrderedDict(w=torch.arange(6.0).reshape(2, 3)), "names": ["a", "b"],
             "nothing": None, "rng": capture_rng_state({"batch": g})}
    expected = _draw(g)
    save_checkpoint(tmp_path / "c.pt", state)
    _draw(g)  # move every generator on
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["step"] == 7 and loaded["names"] == ["a", "b"] and loaded["nothing"] is None
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    restore_rng_state(loaded["rng"], {"batch": g})
    assert _draw(g) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary file left


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"step": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 2, "bad": lambda: 0})  # a lambda cannot be pickled
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


class Payload:  # a class: torch.save pickles it, weights_only loading must refuse it
    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("damage, words", [
    (lambda data: data[: len(data) // 2], "truncated or corrupt"),
    (lambda data: b"", "empty"),
    (lambda data: b"not a checkpoint at all" * 10, "truncated or corrupt"),
])
def test_corrupt_files_raise_naming_the_file(tmp_path, damage, words):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.randn(100, 100)})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_refuses_pickled_objects_and_non_dicts(tmp_path):
    torch.save({"obj": Payload()}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="refused: holds a pickled Python object .*Payload"):
        load_checkpoint(tmp_path / "code.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
