"""``morphable data prepare``: the command's output and exit status, --identities, and SIGKILL at random
moments (no corrupt file under a final name; a rerun finishes)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from morphable.cli import cli
from morphable.io.image import read_image
from morphable.train.data import load_dataset, read_manifest
from tests.conftest import ROOT, data_file

LFPW = "superviseddescent/examples/data/ibug_lfpw_trainset"


def _annotated_photos() -> list[Path]:
    """Six corpus photos with a .pts beside them (no detection: fast)."""
    lfpw = [data_file(f"{LFPW}/image_000{k}.png") for k in range(1, 6)]
    return lfpw + [data_file("eos/examples/data/image_0010.png")]


def test_prepare_reports_bad_items_and_exits_1(tmp_path):
    photos = _annotated_photos()[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "ds"
    options = ["-o", str(out), "--source", "lfpw", "--quiet"]
    result = CliRunner().invoke(cli, ["data", "prepare", *map(str, photos), str(broken), *options])
    assert result.exit_code == 1
    assert f"{out}: 2 faces from 3 photos (0 resumed, 1 bad)" in result.output
    assert f"bad: {broken}: cannot read image" in result.output
    assert "Error: 1 of 3 photos gave no face" in result.output and "Traceback" not in result.output
    ds = load_dataset(out)
    assert [i.source for i in ds.items] == ["lfpw", "lfpw"] and ds.descriptors.shape == (2, 128)
    rerun = CliRunner().invoke(cli, ["data", "prepare", *map(str, photos), *options])  # resumes, exit 0
    assert rerun.exit_code == 0, rerun.output
    assert "2 faces from 2 photos (2 resumed, 0 bad)" in rerun.output
    assert (out / "bad.jsonl").read_text() == ""
    other = CliRunner().invoke(cli, ["data", "prepare", *map(str, photos), *options, "--detector", "hog"])
    assert "2 faces from 2 photos (0 resumed, 0 bad)" in other.output  # other options: prepared again


def test_identities_option_and_usage_errors(tmp_path):
    photos = _annotated_photos()
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"p1": ["image_0001", "image_0003"], "p2": ["image_0010"], "p3": ["image_0099"]}))
    out = tmp_path / "ds"
    result = CliRunner().invoke(cli, ["data", "prepare", *map(str, photos), "-o", str(out), "--identities", str(ids),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert "3 faces from 3 photos (0 resumed, 3 not in --identities, 0 bad)" in result.output
    assert "listed in --identities but not found: image_0099" in result.output
    assert [(Path(i.path).name, i.identity) for i in load_dataset(out).items] == \
        [("image_0001.png", "p1"), ("image_0003.png", "p1"), ("image_0010.png", "p2")]
    both = CliRunner().invoke(cli, ["data", "prepare", str(photos[0]), "-o", str(out), "--identities", str(ids),
                                    "--identity-from-folder"])
    assert both.exit_code == 2 and "not both" in both.output
    ids.write_text("{not json")
    bad = CliRunner().invoke(cli, ["data", "prepare", str(photos[0]), "-o", str(out), "--identities", str(ids)])
    assert bad.exit_code == 1 and f"Error: {ids}: cannot read identities" in bad.output
    missing = CliRunner().invoke(cli, ["data", "prepare", str(tmp_path / "nope"), "-o", str(out)])
    assert missing.exit_code == 1 and "no such photo or folder" in missing.output


def _check_final_files(out: Path) -> int:
    """Every file under a final (non-temporary) name is complete; returns the manifest's length or -1."""
    for path in out.rglob("*"):
        if path.is_dir() or path.name.startswith("."):
            continue
        rel = path.relative_to(out).as_posix()
        if rel.startswith("chips/"):
            assert read_image(path).shape == (150, 150, 3), rel
        elif rel.startswith("items/"):
            with np.load(path) as npz:
                assert npz["descriptor"].shape == (128,) and npz["pooled"].shape == (256,), rel
        elif rel.startswith("photos/"):
            assert json.loads(path.read_text())["faces"], rel
        elif rel in ("descriptors.npy", "pooled.npy"):
            assert np.load(path).shape[1] in (128, 256)
        elif rel == "bad.jsonl":
            assert all(json.loads(line) for line in path.read_text().splitlines())
        elif rel != "manifest.jsonl":
            raise AssertionError(f"unexpected file {rel}")
    if not (out / "manifest.jsonl").exists():
        return -1
    text = (out / "manifest.jsonl").read_text()
    assert text == "" or text.endswith("\n")  # never torn
    ds = load_dataset(out)  # arrays match the manifest
    for item, descriptor in zip(ds.items, ds.descriptors.numpy()):
        with np.load(out / "items" / f"{item.key}.npz") as npz:
            assert np.array_equal(npz["descriptor"], descriptor)
    return len(read_manifest(out / "manifest.jsonl"))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_finishes(tmp_path):
    photos = _annotated_photos()
    out = tmp_path / "ds"
    command = [sys.executable, "-m", "morphable", "data", "prepare", *map(str, photos), "-o", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(11)
    killed_mid_run = 0
    for _ in range(4):
        done_before = len(list((out / "photos").glob("*.json"))) if out.exists() else 0
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        # wait until the run has finished a photo (imports and weights take seconds), then kill at random
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and len(list((out / "photos").glob("*.json"))) > done_before:
                break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.2))
        if proc.poll() is None:
            killed_mid_run += 1
        proc.kill()
        proc.wait()
        _check_final_files(out)
    assert killed_mid_run >= 1
    finished = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert _check_final_files(out) == 6
    assert not [p for p in out.rglob(".*.tmp")]  # a kill's leftovers are cleaned up
    assert len(list((out / "photos").glob("*.json"))) == 6
    # the same figures as an uninterrupted run
    clean = tmp_path / "clean"
    CliRunner().invoke(cli, ["data", "prepare", *map(str, photos), "-o", str(clean), "--quiet"])
    assert (clean / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    assert np.array_equal(np.load(clean / "pooled.npy"), np.load(out / "pooled.npy"))

