"""``morphable train``: end to end, one-line errors, and SIGKILL at random points followed by ``--resume``."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from morphable.cli import cli
from morphable.io.checkpoint import load_checkpoint
from morphable.io.image import read_image
from morphable.train.config import load_config
from morphable.train.logging import read_log
from morphable.train.trainer import list_checkpoints, train
from tests.train._toy_recipe import ToyConfig

ROOT = Path(__file__).resolve().parents[2]
TOY = "toy=tests.train._toy_recipe:ToyRecipe"


@pytest.fixture
def toy_env(monkeypatch):
    monkeypatch.setenv("MORPHABLE_EXTRA_RECIPES", TOY)


def invoke(*args: str):
    return CliRunner().invoke(cli, ["train", *args])


def test_train_and_resume_from_the_command_line(tmp_path, toy_env):
    config = tmp_path / "toy.yaml"
    config.write_text("optim:\n  lr: 0.02\ntrain:\n  steps: 30\n  log_every: 5\n")
    run = tmp_path / "run"
    result = invoke("toy", "--config", str(config), "--set", "train.steps=20", "-o", str(run), "--quiet")
    assert result.exit_code == 0, result.output
    assert f"run folder: {run}" in result.output and "step: 20" in result.output
    saved = load_config(ToyConfig, run / "config.yaml")
    assert saved.optim.lr == 0.02 and saved.train.steps == 20 and saved.train.log_every == 5
    loss20 = [r for r in read_log(run / "log.jsonl") if r["step"] == 20][0]["loss"]
    assert f"loss: {loss20:.6g}" in result.output
    result = invoke("toy", "-o", str(run), "--resume", "--set", "train.steps=40")  # progress bar on (not a TTY)
    assert result.exit_code == 0, result.output
    assert "step: 40" in result.output
    assert [c for c, _ in list_checkpoints(run)] == [20, 40]


@pytest.mark.parametrize("args, words", [
    (["nope", "-o", "{tmp}/new"], "unknown recipe 'nope' (known: "),
    (["toy", "-o", "{tmp}/new", "--set", "optim.lrr=1"], "--set optim.lrr=1: optim.lrr: unknown key"),
    (["toy", "-o", "{tmp}/new", "--set", "train.steps=x"], "train.steps: expected int, got 'x'"),
    (["toy", "-o", "{tmp}/new", "--config", "{tmp}/missing.yaml"], "missing.yaml: config file not found"),
    (["toy", "-o", "{tmp}/used"], "used: folder is not empty; pass --resume"),
    (["toy", "-o", "{tmp}/used", "--resume", "--set", "optim.lr=0.5"], "cannot resume with a different config"),
])
def test_errors_are_one_line(tmp_path, toy_env, args, words):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "config.yaml").write_text("train:\n  steps: 5\n")
    result = invoke(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and words in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "new" / "checkpoints").exists()


def _check_no_corrupt_file(run: Path) -> int:
    """Every file under a final name is whole; returns the last step logged."""
    for _, path in list_checkpoints(run):
        assert load_checkpoint(path)["step"] >= 0
    latest = run / "checkpoints" / "latest"
    if latest.exists():
        assert load_checkpoint(latest.parent / latest.read_text().strip())["step"] > 0
    if (run / "config.yaml").exists():
        assert load_config(ToyConfig, run / "config.yaml").train.steps == 300
    for image in (run / "images").glob("*.png") if (run / "images").exists() else ():
        assert read_image(image).shape[2] == 3
    if not (run / "log.jsonl").exists():
        return 0
    lines = (run / "log.jsonl").read_text().split("\n")
    assert len(read_log(run / "log.jsonl")) == sum(1 for line in lines[:-1] if line)  # only the last may be torn
    return max((r["step"] for r in read_log(run / "log.jsonl") if "event" not in r), default=0)


def _last_step(run: Path) -> int:
    """The last training step in ``log.jsonl`` (safe to call while the run writes it)."""
    if not (run / "log.jsonl").exists():
        return 0
    return max((r["step"] for r in read_log(run / "log.jsonl") if "event" not in r), default=0)


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path, toy_env):
    """Kill ``morphable train`` with SIGKILL at random points (seeded) while it trains and checkpoints every
    5 steps; nothing under a final name is corrupt, each ``--resume`` loses at most 5 steps, and the
    finished run logs exactly the losses of an uninterrupted one."""
    sets = ["train.steps=300", "train.log_every=1", "train.checkpoint_every=5", "train.image_every=10"]
    run = tmp_path / "run"
    command = [sys.executable, "-m", "morphable", "train", "toy", "--quiet", "-o", str(run)]
    for s in sets:
        command += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    rng = random.Random(11)
    reached = 0
    for attempt in range(3):
        proc = subprocess.Popen(command + (["--resume"] if attempt else []), env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and _last_step(run) <= reached:  # until it trains past the last kill
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        finished = proc.wait() == 0
        if attempt:  # the resumed process restarted at most one checkpoint interval before the last kill
            assert reached - _resume_steps(run)[-1] <= 5
        reached = _check_no_corrupt_file(run)
        if finished:
            break
    done = subprocess.run(command + ["--resume"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step: 300" in done.stdout
    assert reached - _resume_steps(run)[-1] <= 5
    assert _check_no_corrupt_file(run) == 300
    assert not [p for p in run.rglob(".*.tmp")]  # killed saves' temporary files were cleaned up on resume
    assert len(_resume_steps(run)) >= 2  # at least one kill landed mid-run (the last resume adds one)
    train("toy", tmp_path / "reference", overrides=sets, progress=False)
    strip = {"time", "steps_per_s", "samples_per_s"}
    rows = [{k: v for k, v in r.items() if k not in strip} for r in read_log(run / "log.jsonl") if "event" not in r]
    expected = [{k: v for k, v in r.items() if k not in strip} for r in read_log(tmp_path / "reference" / "log.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, 301))
    assert rows == expected  # the killed-and-resumed run is bit-identical to an uninterrupted one


def _resume_steps(run: Path) -> list[int]:
    return [r["step"] for r in read_log(run / "log.jsonl") if r.get("event") == "resume"]
