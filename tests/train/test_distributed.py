"""Several processes (``morphable.train.distributed``): 2 processes × batch B train exactly like 1 process ×
batch 2B, resume bit-identically, and ``fit`` / ``evaluate nme`` shared over 2 processes write what 1 writes.

The processes are forked from the test (gloo on the CPU) with the environment torchrun gives its workers
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so they do not import torch
again (torchrun's agent and workers would cost about 10 s of imports on a small machine).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from morphable.cli import cli
from morphable.detect.formats import read_landmarks, write_pts
from morphable.io.checkpoint import load_checkpoint
from morphable.train import distributed
from morphable.train.config import load_config
from morphable.train.logging import read_log
from morphable.train.recipes import register
from morphable.train.trainer import Trainer, list_checkpoints, seed_everything, train
from tests.conftest import data_file
from tests.train._toy_recipe import ToyConfig, ToyRecipe

TIMING = {"time", "steps_per_s", "samples_per_s"}
# global batch 16: 2 processes × 8 against 1 × 16; checkpoints at 6 and 12 (the resume point is 6)
TOY = ["data.batch_size=16", "train.steps=12", "train.log_every=2", "train.checkpoint_every=6", "optim.lr=0.05"]
LFPW = "superviseddescent/examples/data/ibug_lfpw_trainset"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, job, args) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    job(*args)
    sys.stdout.flush()


def launch(job, *args, world: int = 2, timeout: float = 120) -> None:
    """Run ``job(*args)`` in ``world`` forked processes joined like torchrun's workers; fail unless all exit 0."""
    context, port = multiprocessing.get_context("fork"), _free_port()
    procs = [context.Process(target=_worker, args=(r, world, port, job, args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0] * world


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_log(run_dir / "log.jsonl")
            if "event" not in r]


def _train_two_ways(one: Path, resumed: Path) -> None:
    """In each of the processes: an uninterrupted run, then one stopped at step 6 and resumed in a new trainer;
    then draws inside and after :func:`distributed.rank_rng` saved to ``one/rng_<rank>.pt``."""
    train("toy", one, overrides=TOY, progress=False)
    for stop in (6, None):
        cfg = load_config(ToyConfig, overrides=TOY)
        seed_everything(cfg.train.seed)
        Trainer(ToyRecipe(cfg, resumed), cfg, resumed, resume=stop is None, progress=False).run(until=stop)
    torch.manual_seed(7)
    draws = {}
    for name in ("inside", "again"):
        with distributed.rank_rng(seed=0, step=5):
            draws[name] = torch.rand(4)
    draws["after"] = torch.rand(4)
    torch.save(draws, one / f"rng_{distributed.rank()}.pt")


@pytest.fixture(autouse=True)
def toy_registered():
    register("toy", ToyRecipe)


def test_two_processes_update_like_one_with_twice_the_batch(tmp_path):
    single = tmp_path / "single"
    train("toy", single, overrides=TOY, progress=False)  # this process alone: 1 × 16
    launch(_train_two_ways, tmp_path / "two", tmp_path / "resumed")
    two = tmp_path / "two"
    w1 = torch.load(single / "toy_weights.pt", weights_only=True)
    w2 = torch.load(two / "toy_weights.pt", weights_only=True)  # written once, by rank 0's finish()
    # Adam after 12 steps: equal up to the rounding of a mean of 16 vs the mean of two means of 8
    torch.testing.assert_close(w2["weight"], w1["weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(w2["bias"], w1["bias"], rtol=0, atol=1e-6)
    assert (w1["weight"] - ToyRecipe(load_config(ToyConfig, overrides=TOY), tmp_path).net.weight).abs().max() > 0.1
    # one log, by rank 0, with the loss terms averaged over the processes: those of the whole batch
    r1, r2 = rows(single), rows(two)
    assert [r["step"] for r in r2] == [2, 4, 6, 8, 10, 12]
    for a, b in zip(r1, r2):
        assert b.keys() == a.keys() and b["lr"] == a["lr"]
        for key in ("loss", "mse", "loss_ema", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    # every process's recipe state is checkpointed: the EMAs of each half's loss differ, their mean is the whole's
    ckpt = load_checkpoint(list_checkpoints(two)[-1][1])
    emas = [float(s["ema"]) for s in ckpt["recipe_ranks"]]
    assert len(emas) == 2 and abs(emas[0] - emas[1]) > 1e-4 * abs(emas[0])
    assert float(ckpt["recipe"]["ema"]) == emas[0]
    assert np.mean(emas) == pytest.approx(r1[-1]["loss_ema"], rel=1e-5)
    # stopped at 6 and resumed on 2 processes: bit-identical to the uninterrupted 2-process run
    resumed = tmp_path / "resumed"
    assert rows(resumed) == r2
    final = load_checkpoint(list_checkpoints(resumed)[-1][1])
    assert all(torch.equal(final["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    # the loss's RNG: per process and step (dropout differs), reproducible, the shared stream left in step
    d0, d1 = (torch.load(two / f"rng_{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(d0["inside"], d0["again"]) and not torch.equal(d0["inside"], d1["inside"])
    torch.manual_seed(7)
    assert torch.equal(d0["after"], d1["after"]) and torch.equal(d0["after"], torch.rand(4))


def test_shard_batch_splits_every_tensor_into_contiguous_parts():
    batch = {"x": torch.arange(12).reshape(6, 2), "views": torch.arange(18), "scalar": torch.tensor(3.0),
             "pair": (torch.arange(6), "name")}
    parts = [distributed.shard_batch(batch, r, 3) for r in range(3)]
    assert [p["x"][:, 0].tolist() for p in parts] == [[0, 2], [4, 6], [8, 10]]
    assert parts[1]["views"].tolist() == [6, 7, 8, 9, 10, 11]  # 3 views per item stay with their item
    assert parts[2]["pair"][0].tolist() == [4, 5] and parts[2]["pair"][1] == "name"
    assert all(p["scalar"] is batch["scalar"] for p in parts)
    with pytest.raises(distributed.DistributedError, match=r"batch\['x'\] has 6 rows, which 4 processes"):
        distributed.shard_batch(batch, 0, 4)


# -- fit and evaluate over several processes -----------------------------------------------------------------

def _cli(args: list[str], transcript: Path) -> None:
    """Run ``morphable ARGS``; rank 0 writes its exit code, stdout and stderr to ``transcript``."""
    result = CliRunner().invoke(cli, args)
    if distributed.is_main():
        transcript.write_text(json.dumps({"code": result.exit_code, "out": result.stdout, "err": result.stderr}))
    elif result.exit_code != 0:
        raise SystemExit(f"rank {distributed.rank()}: exit {result.exit_code}: {result.output}")


def _fit_and_evaluate(fit_args: list[str], nme_args: list[str], folder: Path) -> None:
    _cli(fit_args, folder / "fit.json")
    _cli(nme_args, folder / "nme.json")


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (``params.json`` without its timings)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "params.json":
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "timings"}).encode()
            out[str(path.relative_to(folder))] = data
    return out


def test_fit_and_evaluate_shared_over_two_processes_write_what_one_writes(tmp_path):
    data_file("eos/share/sfm_shape_3448.bin")
    photos = [data_file(f"{LFPW}/image_000{i}.png") for i in (1, 2, 3)]
    missing = tmp_path / "missing.png"  # the 4th photo: rank 1's share, reported by rank 0
    marks = [a for p in photos for a in ("--landmarks", str(p.with_suffix(".pts")))]
    # evaluate nme: ground truth = the corpus's points, predictions = shifted copies, one missing
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for i, p in enumerate(photos):
        points = read_landmarks(p.with_suffix(".pts"))
        write_pts(gt / f"{p.stem}.pts", points)
        if i < 2:
            write_pts(pred / f"{p.stem}.pts", points + 1.5 * (i + 1))
    runs = {}
    for label in ("one", "two"):
        folder = tmp_path / label
        folder.mkdir()
        fit_args = ["fit", *map(str, photos), str(missing), *marks, "--landmarks", str(photos[0].with_suffix(".pts")),
                    "-o", str(folder / "out"), "--model", "sfm", "--texture-size", "32", "--iterations", "2",
                    "--max-side", "256", "--no-report", "-q"]
        nme_args = ["evaluate", "nme", "--pred", str(pred), "--gt", str(gt), "--protocol", "300w",
                    "--json", str(folder / "nme_out.json")]
        if label == "one":
            _fit_and_evaluate(fit_args, nme_args, folder)
        else:
            launch(_fit_and_evaluate, fit_args, nme_args, folder)
        runs[label] = folder
    for label, folder in runs.items():
        fit = json.loads((folder / "fit.json").read_text())
        assert fit["code"] == 1 and "1 of 4 images failed" in fit["err"], (label, fit)
        assert "failed: " in fit["err"] and "missing.png" in fit["err"], label
        assert fit["out"].count("wrote ") == 3 if label == "one" else fit["out"].count("wrote ") == 2
        nme = json.loads((folder / "nme.json").read_text())
        assert nme["code"] == 0 and "3 images, 1 failed" in nme["out"], (label, nme)
    one, two = _outputs(runs["one"] / "out"), _outputs(runs["two"] / "out")
    assert sorted({k.split("/")[0] for k in one}) == ["image_0001", "image_0002", "image_0003"]
    assert one.keys() == two.keys() and all(one[k] == two[k] for k in one)
    report_one, report_two = (json.loads((runs[k] / "nme_out.json").read_text()) for k in ("one", "two"))
    assert report_two == report_one and report_one["failures"] == 1
    assert list(report_one["per_image"]) == [p.stem for p in photos]
