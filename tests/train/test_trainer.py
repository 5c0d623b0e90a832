"""The trainer on a real (small) recipe: convergence to the known optimum, schedules, clipping, non-finite
steps, checkpoints, bit-identical resume, logs."""
from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from morphable.errors import MorphableError
from morphable.train.config import ScheduleConfig, load_config
from morphable.train.logging import read_log, tile_images, truncate_log
from morphable.train.optim import build_optimizer, build_scheduler, clip_gradients, grad_norm
from morphable.train.recipes import UnknownRecipeError, get_recipe, register
from morphable.train.trainer import Trainer, TrainingError, list_checkpoints, seed_everything, train
from tests.train._toy_recipe import ToyConfig, ToyRecipe, truth

TIMING = {"time", "steps_per_s", "samples_per_s"}


@pytest.fixture(autouse=True)
def toy_registered():
    register("toy", ToyRecipe)


def make(run_dir, *overrides, resume=False) -> Trainer:
    cfg = load_config(ToyConfig, overrides=overrides)
    seed_everything(cfg.train.seed)
    return Trainer(ToyRecipe(cfg, run_dir), cfg, run_dir, resume=resume, progress=False)


def rows(run_dir, validation=False) -> list[dict]:
    """Logged rows without events and timing columns (what must match between runs)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_log(run_dir / "log.jsonl")
            if "event" not in r and bool(r.get("validation")) == validation]


def test_converges_to_the_known_solution(tmp_path):
    metrics = train("toy", tmp_path / "run", progress=False,
                    overrides=["train.steps=300", "train.val_every=100", "schedule.name=cosine"])
    w, b = truth(ToyConfig().data)
    saved = torch.load(tmp_path / "run" / "toy_weights.pt", weights_only=True)  # written by finish()
    assert (saved["weight"][0] - w).norm() < 3e-3 and (saved["bias"][0] - b).abs() < 3e-3
    assert metrics["step"] == 300 and metrics["val_weight_error"] < 3e-3 and metrics["loss"] < 2e-4
    val = rows(tmp_path / "run", validation=True)
    assert [r["step"] for r in val] == [100, 200, 300]
    assert val[0]["weight_error"] > val[-1]["weight_error"]
    steps = [c for c, _ in list_checkpoints(tmp_path / "run")]
    assert steps == [200, 250, 300]  # every 50, the newest 3 kept
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "ckpt_000300.pt\n"


def test_schedule_values_match_the_closed_form():
    """Hand-computed factors for a 7-step run: warm-up 2 steps, then 5 more (cosine: 1 → 0.2 through
    cos(π/4) = √2/2)."""
    expected = {
        "constant": [0.5, 1, 1, 1, 1, 1, 1],
        "step": [0.5, 1, 1, 1, 0.5, 0.5, 0.25],  # gamma 0.5 every 2 steps after warm-up
        "cosine": [0.5, 1, 1, 0.2 + 0.8 * (1 + math.sqrt(0.5)) / 2, 0.6, 0.2 + 0.8 * (1 - math.sqrt(0.5)) / 2, 0.2],
    }
    for name, factors in expected.items():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = build_optimizer([p], load_config(ToyConfig, overrides=["optim.lr=2.0"]).optim)
        sched = build_scheduler(opt, ScheduleConfig(name=name, warmup_steps=2, step_size=2, gamma=0.5,
                                                    min_lr_ratio=0.2), total_steps=7)
        lrs = []
        for _ in factors:
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert lrs == pytest.approx([2.0 * f for f in factors], abs=1e-12), name


def test_logged_lr_follows_the_schedule(tmp_path):
    make(tmp_path, "train.steps=6", "train.log_every=1", "schedule.name=step", "schedule.warmup_steps=2",
         "schedule.step_size=2", "schedule.gamma=0.5", "optim.lr=0.1").run()
    assert [r["lr"] for r in rows(tmp_path)] == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.05, 0.05])


def test_gradient_clipping(tmp_path):
    p = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    p[0].grad, p[1].grad = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 12.0])  # norm sqrt(9+16+144) = 13
    norm = grad_norm(p)
    assert float(norm) == pytest.approx(13.0)
    clip_gradients(p, 1.3, norm)
    assert p[0].grad.tolist() == pytest.approx([0.3, 0.0, 0.4], rel=1e-6)
    assert float(grad_norm(p)) == pytest.approx(1.3, rel=1e-6)
    # in the trainer: the norm the optimiser sees is min(raw, clip), the raw norm is what is logged
    trainer = make(tmp_path, "train.steps=20", "train.log_every=1", "optim.grad_clip=0.5")
    seen = []
    trainer.optimizer.register_step_pre_hook(lambda *_: seen.append(float(grad_norm(trainer.params))))
    trainer.run()
    raw = [r["grad_norm"] for r in rows(tmp_path)]
    assert max(raw) > 1.0 and min(raw) < 0.5  # both regimes occur
    assert seen == pytest.approx([min(r, 0.5) for r in raw], rel=1e-5)


@pytest.mark.parametrize("hook", ["nan_loss_steps", "nan_grad_steps"])
def test_nonfinite_step_is_skipped_and_logged(tmp_path, hook):
    trainer = make(tmp_path, "train.steps=8", "train.log_every=1", f"data.{hook}=[5]")
    trainer.run(until=4)
    before = [p.detach().clone() for p in trainer.params]
    with pytest.warns(RuntimeWarning, match="step 5: non-finite"):
        trainer.run(until=5)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.params))  # no update at step 5
    trainer.run()
    assert not torch.equal(before[0], trainer.params[0])  # training went on
    log = read_log(tmp_path / "log.jsonl")
    events = [r for r in log if r.get("event") == "nonfinite"]
    assert [e["step"] for e in events] == [5]
    assert ("loss" if hook == "nan_loss_steps" else "gradient") in events[0]["message"]
    row5 = next(r for r in log if r["step"] == 5 and "event" not in r)
    assert row5["grad_norm"] is None and (row5["loss"] is None) == (hook == "nan_loss_steps")
    assert [r["step"] for r in rows(tmp_path)] == list(range(1, 9))


def test_too_many_nonfinite_steps_stop(tmp_path):
    with pytest.warns(RuntimeWarning):
        make(tmp_path / "a", "train.steps=10", "train.max_nonfinite=3", "data.nan_loss_steps=[3, 4, 6, 7]").run()
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingError, match="3 consecutive non-finite steps"):
        make(tmp_path / "b", "train.steps=10", "train.max_nonfinite=3", "data.nan_loss_steps=[3, 4, 5]").run()


RESUME = ["train.steps=40", "train.log_every=5", "train.checkpoint_every=10", "train.val_every=10",
          "train.image_every=20", "schedule.name=cosine", "schedule.warmup_steps=5", "optim.grad_clip=1.0"]


def test_resume_is_bit_identical(tmp_path):
    full = make(tmp_path / "full", *RESUME)
    full.run()
    first = make(tmp_path / "split", *RESUME)
    first.run(until=20)
    assert not torch.equal(first.params[0], full.params[0])
    metrics = train("toy", tmp_path / "split", resume=True, progress=False)  # config from the run folder
    second = torch.load(tmp_path / "split" / "toy_weights.pt", weights_only=True)
    assert torch.equal(second["weight"], full.module.weight.detach())
    assert torch.equal(second["bias"], full.module.bias.detach())
    assert rows(tmp_path / "split") == rows(tmp_path / "full")  # every logged loss term, exactly
    assert rows(tmp_path / "split", True) == rows(tmp_path / "full", True)
    assert metrics["loss"] == rows(tmp_path / "full")[-1]["loss"]
    assert (tmp_path / "split" / "images" / "step_000040.png").read_bytes() == \
        (tmp_path / "full" / "images" / "step_000040.png").read_bytes()
    resumes = [r for r in read_log(tmp_path / "split" / "log.jsonl") if r.get("event") == "resume"]
    assert [r["step"] for r in resumes] == [20]


def test_resume_extends_steps_and_refuses_other_changes(tmp_path):
    base = ["train.log_every=5", "train.checkpoint_every=10", "schedule.name=step", "schedule.step_size=15"]
    full = make(tmp_path / "full", "train.steps=40", *base)
    full.run()
    short = make(tmp_path / "ext", "train.steps=25", *base)
    short.run()
    assert short.recipe.finished == 1
    with pytest.raises(TrainingError, match=r"optim.lr: saved 0.05, now 0.01\); only train.steps may change"):
        make(tmp_path / "ext", "train.steps=40", "optim.lr=0.01", *base, resume=True)
    with pytest.raises(TrainingError, match="train.steps=20 is below the checkpoint's step 25"):
        make(tmp_path / "ext", "train.steps=20", *base, resume=True)
    longer = make(tmp_path / "ext", "train.steps=40", *base, resume=True)
    longer.run()
    assert all(torch.equal(a, b) for a, b in zip(longer.params, full.params))
    assert rows(tmp_path / "ext") == rows(tmp_path / "full")
    assert "steps: 40" in (tmp_path / "ext" / "config.yaml").read_text()


def test_resume_falls_back_past_a_corrupt_checkpoint(tmp_path):
    full = make(tmp_path / "full", "train.steps=30")
    full.run()
    run = tmp_path / "run"
    make(run, "train.steps=30", "train.checkpoint_every=10").run(until=20)
    newest = run / "checkpoints" / "ckpt_000020.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # torn file under a final name
    with pytest.warns(RuntimeWarning, match="ckpt_000020.pt: truncated or corrupt"):
        trainer = make(run, "train.steps=30", "train.checkpoint_every=10", resume=True)
    assert trainer.step == 10 and (run / "checkpoints" / "ckpt_000020.pt.corrupt").exists()
    trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(trainer.params, full.params))
    fallback = [r for r in read_log(run / "log.jsonl") if r.get("event") == "checkpoint_fallback"]
    assert [r["step"] for r in fallback] == [20] and "ckpt_000020.pt.corrupt" in fallback[0]["message"]
    full_rows = {r["step"]: r for r in rows(tmp_path / "full")}
    assert [r["loss"] for r in rows(run)] == [full_rows[r["step"]]["loss"] for r in rows(run)]
    assert [r["step"] for r in rows(run)] == [10, 20, 30]
    for _, path in list_checkpoints(run):
        path.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingError, match="no checkpoint could be read"):
        make(run, "train.steps=30", "train.checkpoint_every=10", resume=True)


def test_threads_setting(tmp_path):
    before = torch.get_num_threads()
    try:
        make(tmp_path, "train.steps=1", "train.threads=1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_run_folder_guards(tmp_path):
    make(tmp_path / "a", "train.steps=2").run()
    with pytest.raises(TrainingError, match="already holds a training run"):
        make(tmp_path / "a", "train.steps=2")
    with pytest.raises(TrainingError, match="folder is not empty"):
        train("toy", tmp_path / "a", progress=False)
    with pytest.raises(UnknownRecipeError, match=r"unknown recipe 'nope' \(known: .*toy"):
        get_recipe("nope")
    assert issubclass(UnknownRecipeError, MorphableError)


class NoLoss(ToyRecipe):
    def loss(self, batch, step):
        return {"mse": super().loss(batch, step)["mse"]}


class VectorTerm(ToyRecipe):
    def loss(self, batch, step):
        return {**super().loss(batch, step), "per_sample": batch["y"]}


@pytest.mark.parametrize("cls, words", [(NoLoss, "loss\\(\\) returned no 'loss' term \\(got mse\\)"),
                                        (VectorTerm, "loss term 'per_sample' must be a scalar, got shape \\(16,\\)")])
def test_recipe_contract_errors(tmp_path, cls, words):
    cfg = load_config(ToyConfig, overrides=["train.steps=3", "train.log_every=1"])
    with pytest.raises(TrainingError, match=words):
        Trainer(cls(cfg, tmp_path), cfg, tmp_path, progress=False).run()


def test_extra_recipes_from_the_environment(monkeypatch):
    monkeypatch.setenv("MORPHABLE_EXTRA_RECIPES", "other=tests.train._toy_recipe:ToyRecipe, bad=x")
    with pytest.raises(UnknownRecipeError, match="expected name=module:Class, got 'bad=x'"):
        get_recipe("other")
    monkeypatch.setenv("MORPHABLE_EXTRA_RECIPES", "other=tests.train._toy_recipe:ToyRecipe,"
                                                  "notone=tests.train._toy_recipe:truth")
    assert get_recipe("other") is ToyRecipe
    with pytest.raises(UnknownRecipeError, match="not a Recipe subclass"):
        get_recipe("notone")


def test_tensorboard_when_installed(tmp_path, monkeypatch):
    calls = []

    class Writer:  # records what the trainer sends to TensorBoard
        def __init__(self, log_dir, purge_step):
            calls.append(("init", purge_step))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def add_text(self, tag, text, step):
            calls.append((tag, step))

        def add_image(self, tag, image, step, dataformats):
            calls.append((tag, step, tuple(image.shape), dataformats))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    make(tmp_path, "train.steps=10", "train.log_every=5", "train.image_every=10", "train.val_every=10").run(until=5)
    make(tmp_path, "train.steps=10", "train.log_every=5", "train.image_every=10", "train.val_every=10",
         resume=True).run()
    assert calls[0] == ("init", None) and ("init", 6) in calls  # resumed: TensorBoard drops events >= 6
    assert ("train/loss", 5) in calls and ("train/loss", 10) in calls and ("val/weight_error", 10) in calls
    assert ("images", 10, (8, 8, 3), "HWC") in calls  # two 1 x 4 strips in a column, 2 px gaps and border
    assert ("event/resume", 5) in calls and calls[-1] == ("close",)


def test_log_reader_tile_and_truncate(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "event": "x", "message": "m"}\n{"step": 3, "lo')
    assert [r["step"] for r in read_log(path)] == [1, 2]  # the torn last line is ignored
    assert truncate_log(path, 1) == 1
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n'
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(MorphableError, match="log.jsonl: line 2 is not valid JSON"):
        read_log(path)
    images = torch.stack([torch.full((2, 3, 3), v) for v in (0.1, 0.2, 0.3)])
    grid = tile_images(images, pad=1, background=0.0)
    assert grid.shape == (7, 9, 3)  # 2 x 2 cells of 2 x 3 with 1 px gaps
    assert grid[1, 1, 0] == pytest.approx(0.1) and grid[1, 5, 0] == pytest.approx(0.2)
    assert grid[4, 1, 0] == pytest.approx(0.3) and grid[4, 5, 0] == 0.0 and grid[0, 0, 0] == 0.0
