"""JSONL manifests: round trip, torn last line, one-line errors naming file and line; load_dataset."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from morphable.errors import InputError, MorphableError
from morphable.train.data.manifest import ManifestItem, load_dataset, read_manifest, write_manifest


def _item(k: int, identity: str | None = "alice") -> ManifestItem:
    rng = np.random.default_rng(k)
    return ManifestItem(key=f"{k:016x}", path=f"/photos/p{k}.jpg", face=k % 2, identity=identity,
                        landmarks=rng.uniform(0, 500, (68, 2)), box=(1.5, 2.0, 300.25, 400.0), source="test",
                        chip=f"chips/{k:016x}.png", landmarks_from=("file", "dlib")[k % 2])


def _same(a: ManifestItem, b: ManifestItem) -> bool:
    return (a.key, a.path, a.face, a.identity, a.box, a.source, a.chip, a.landmarks_from) == \
        (b.key, b.path, b.face, b.identity, b.box, b.source, b.chip, b.landmarks_from) \
        and np.array_equal(a.landmarks, b.landmarks)


def test_round_trip_is_exact(tmp_path):
    items = [_item(0), _item(1, None), _item(2)]
    write_manifest(tmp_path / "m.jsonl", items)
    text = (tmp_path / "m.jsonl").read_text()
    assert text.count("\n") == 3 and text.endswith("\n")
    back = read_manifest(tmp_path / "m.jsonl")
    assert len(back) == 3 and all(_same(a, b) for a, b in zip(items, back))
    assert back[1].identity is None and back[0].landmarks.dtype == np.float64


def test_torn_last_line_is_dropped_but_a_complete_one_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [_item(0), _item(1)])
    whole = json.dumps(_item(2).to_json())
    path.write_text(path.read_text() + whole[: len(whole) // 2])  # a writer killed mid-line
    assert [i.key for i in read_manifest(path)] == [_item(0).key, _item(1).key]
    path.write_text(path.read_text().rsplit("\n", 1)[0] + "\n\n" + whole)  # complete, no final newline
    assert [i.key for i in read_manifest(path)] == [_item(k).key for k in range(3)]


def _with(**changes) -> dict:
    obj = _item(0).to_json()
    for key, value in changes.items():
        if value is KeyError:
            del obj[key]
        else:
            obj[key] = value
    return obj


@pytest.mark.parametrize("obj, message", [
    (_with(landmarks=[[1.0, 2.0]] * 67), r"'landmarks' must have shape \(68, 2\)"),
    (_with(landmarks=[[1.0, 2.0]] * 67 + [[float("nan"), 1.0]]), "'landmarks' must hold finite numbers"),
    (_with(landmarks=[[1.0, 2.0]] * 67 + [[True, 1.0]]), "'landmarks' must hold finite numbers"),
    (_with(box=[0, 0, 1]), r"'box' must have shape \(4,\)"),
    (_with(face=-1), "'face' must be an integer >= 0"),
    (_with(face=1.0), "'face' must be an integer >= 0"),
    (_with(identity=3), "'identity' must be a string or null"),
    (_with(landmarks_from="guess"), "'landmarks_from' must be one of"),
    (_with(key="../x"), "'key' must be a non-empty file-name-safe string"),
    (_with(chip="/abs/chip.png"), "'chip' must be a path inside the dataset folder"),
    (_with(chip="../chip.png"), "'chip' must be a path inside the dataset folder"),
    (_with(source=""), "'source' must be a non-empty string"),
    (_with(box=KeyError), "missing field"),
    (_with(extra=1), "unknown field"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_line_names_file_and_line(tmp_path, obj, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_item(5).to_json()) + "\n\n" + json.dumps(obj) + "\n")
    with pytest.raises(MorphableError, match=message) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert "\n" not in str(err.value)


def test_invalid_json_in_the_middle_and_repeated_keys_are_errors(tmp_path):
    path = tmp_path / "m.jsonl"
    good = json.dumps(_item(0).to_json())
    path.write_text(good + "\n{\"key\": \n" + json.dumps(_item(1).to_json()) + "\n")
    with pytest.raises(InputError, match=rf"^{path}:2: invalid JSON"):
        read_manifest(path)
    path.write_text(good + "\n" + json.dumps(_item(1).to_json()) + "\n" + good + "\n")
    with pytest.raises(InputError, match=rf"^{path}:3: key '0000000000000000' repeats line 1"):
        read_manifest(path)
    with pytest.raises(InputError, match="cannot read manifest"):
        read_manifest(tmp_path / "absent.jsonl")


def _fake_dataset(folder, n: int = 3):
    """A dataset folder written by hand: random chips, features and landmarks."""
    rng = np.random.default_rng(7)
    (folder / "chips").mkdir(parents=True)
    items = [_item(k) for k in range(n)]
    chips = rng.integers(0, 256, (n, 150, 150, 3), dtype=np.uint8)
    for item, chip in zip(items, chips):
        Image.fromarray(chip).save(folder / item.chip)
    descriptors = rng.normal(size=(n, 128)).astype(np.float32)
    pooled = rng.uniform(size=(n, 256)).astype(np.float32)
    np.save(folder / "descriptors.npy", descriptors)
    np.save(folder / "pooled.npy", pooled)
    write_manifest(folder / "manifest.jsonl", items)
    return items, chips, descriptors, pooled


def test_load_dataset_gives_tensors_in_manifest_order(tmp_path):
    items, chips, descriptors, pooled = _fake_dataset(tmp_path)
    ds = load_dataset(tmp_path)
    assert len(ds) == 3 and [i.key for i in ds.items] == [i.key for i in items]
    assert torch.equal(ds.descriptors, torch.from_numpy(descriptors))
    assert torch.equal(ds.pooled, torch.from_numpy(pooled))
    assert ds.landmarks.shape == (3, 68, 2) and ds.landmarks.dtype == torch.float32
    assert np.allclose(ds.landmarks[1].numpy(), items[1].landmarks, atol=1e-4)
    got = ds.chips([2, 0])
    assert got.shape == (2, 150, 150, 3) and got.dtype == torch.float32
    assert torch.equal(got, torch.from_numpy(chips[[2, 0]]).float() / 255)
    # read once, then served from memory
    (tmp_path / items[2].chip).unlink()
    assert torch.equal(ds.chips(torch.tensor([2])), got[:1])
    (tmp_path / items[1].chip).unlink()  # never read: the error names it
    with pytest.raises(InputError, match=f"{items[1].key}.png: no such image file"):
        ds.chips([1, 1])
    assert ds.chips([]).shape == (0, 150, 150, 3)


def test_load_dataset_refuses_mismatched_or_missing_files(tmp_path):
    with pytest.raises(InputError, match="no manifest.jsonl"):
        load_dataset(tmp_path)
    _fake_dataset(tmp_path)
    np.save(tmp_path / "pooled.npy", np.zeros((2, 256), np.float32))
    with pytest.raises(InputError, match=r"pooled.npy: expected a \(3, 256\) float32 array"):
        load_dataset(tmp_path)
    (tmp_path / "descriptors.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="descriptors.npy: cannot read array"):
        load_dataset(tmp_path)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / _item(0).chip)
    np.save(tmp_path / "descriptors.npy", np.zeros((3, 128), np.float32))
    np.save(tmp_path / "pooled.npy", np.zeros((3, 256), np.float32))
    with pytest.raises(InputError, match="expected a 150 x 150 RGB chip"):
        load_dataset(tmp_path).chips([0])
