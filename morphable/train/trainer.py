"""The generic training loop: optimiser, schedule, clipping, non-finite steps, checkpoints, resume, logs.

One step (1-based ``step``)::

    batch = recipe.batch(step, generator)          # generator: the trainer's own torch.Generator
    terms = recipe.loss(batch, step)               # {"loss": 0-d tensor, other terms...}
    loss.backward(); norm = ||all gradients||_2    # skipped if the loss is not finite
    if loss and norm are finite: clip to optim.grad_clip (if > 0); optimizer.step()
    else: no update, a "nonfinite" warning (log.jsonl event + RuntimeWarning)
    zero the gradients; scheduler.step()           # the schedule advances on skipped steps too

then, by step count: a ``log.jsonl`` row (``train.log_every``), an image grid (``image_every``), validation
(``val_every``, also at the last step), a checkpoint (``checkpoint_every``, also at the last step). After
``train.max_nonfinite`` consecutive non-finite steps training stops with :class:`TrainingError`.

Run folder::

    RUN/config.yaml                  fully resolved config (rewritten when a resume raises train.steps)
    RUN/log.jsonl                    rows and events (morphable.train.logging)
    RUN/images/step_XXXXXX.png       image grids
    RUN/checkpoints/ckpt_XXXXXX.pt   the newest train.keep_checkpoints checkpoints
    RUN/checkpoints/latest           name of the newest checkpoint (written after it)
    RUN/tensorboard/                 when tensorboard is installed

Resume (``resume=True``) loads the newest checkpoint that reads (a corrupt newest one is renamed
``*.corrupt`` and the previous one used), restores the model, optimiser, scheduler, every RNG, the recipe's
state and the non-finite streak, cuts ``log.jsonl`` back to that step and continues: the result is
bit-identical to an uninterrupted run. The config must equal the saved one except ``train.steps``, which
may be raised (a cosine schedule is then stretched over the new length).

Several processes (``torchrun``, :mod:`morphable.train.distributed`): every process draws the same global
batch and trains on its part (``recipe.shard``), gradients and logged loss terms are averaged over the
processes, and only rank 0 writes (config, log, images, validation, checkpoints, ``finish``). A checkpoint
also holds every process's recipe state; resuming with the same number of processes is bit-identical.
"""
from __future__ import annotations

import dataclasses
import random
import re
import time
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from morphable.errors import MorphableError
from morphable.io.atomic import atomic_write, remove_temporaries
from morphable.io.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state,
                                     save_checkpoint)
from morphable.train import distributed
from morphable.train.config import (ConfigError, OptimConfig, ScheduleConfig, TrainConfig, config_hash,
                                    config_to_dict, flatten_config, load_config, save_config)
from morphable.train.logging import RunLog, read_log, truncate_log
from morphable.train.optim import (build_optimizer, build_scheduler, clip_gradients, grad_norm,
                                   trainable_parameters)
from morphable.train.recipes import get_recipe
from morphable.train.recipes.base import Recipe

CHECKPOINT_FORMAT = 1
_CKPT = re.compile(r"^ckpt_(\d+)\.pt$")
_RUN_FILES = ("config.yaml", "log.jsonl", "checkpoints")


class TrainingError(MorphableError):
    """Training cannot start or go on: a run folder in use, a config that does not match the checkpoint,
    no readable checkpoint, too many non-finite steps, a recipe breaking its contract."""


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch's (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resume_hash(config: Any) -> str:
    """:func:`config_hash` of ``config`` with ``train.steps`` set to 0: equal for configs a run may be
    resumed with."""
    return config_hash(dataclasses.replace(config, train=dataclasses.replace(config.train, steps=0)))


def checkpoint_path(run_dir: str | PathLike, step: int) -> Path:
    """``RUN/checkpoints/ckpt_XXXXXX.pt`` for ``step``."""
    return Path(run_dir) / "checkpoints" / f"ckpt_{step:06d}.pt"


def list_checkpoints(run_dir: str | PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_*.pt`` in ``RUN/checkpoints``, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name))]
    return sorted(found)


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TrainingError(f"loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
        return float(value.detach())
    if isinstance(value, int | float):
        return float(value)
    raise TrainingError(f"loss term {name!r} must be a tensor or a number, got {type(value).__name__}")


def _check_config(config: Any) -> None:
    for section, cls in (("optim", OptimConfig), ("schedule", ScheduleConfig), ("train", TrainConfig)):
        if not isinstance(getattr(config, section, None), cls):
            raise TypeError(f"a recipe config needs a '{section}: {cls.__name__}' section, "
                            f"{type(config).__name__} has none")


class Trainer:
    """Trains ``recipe.model()`` with the recipe's batches and losses (see the module docstring).

    Args:
        recipe: the method (already built with ``config``).
        config: the recipe's config (``optim``, ``schedule`` and ``train`` sections used here).
        run_dir: the run folder; created if missing.
        resume: continue from the newest checkpoint in ``run_dir`` (from step 0 when there is none).
        progress: show a tqdm progress bar with ETA (only on a terminal).
    Raises:
        TrainingError: ``run_dir`` already holds a run and ``resume`` is false; on resume, a config
            that differs from the saved one, or no readable checkpoint.
    """

    def __init__(self, recipe: Recipe, config: Any, run_dir: str | PathLike, *, resume: bool = False,
                 progress: bool = True):
        _check_config(config)
        self.recipe, self.config, self.run_dir, self.progress = recipe, config, Path(run_dir), progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and any((self.run_dir / name).exists() for name in _RUN_FILES):
            raise TrainingError(f"{self.run_dir}: already holds a training run; resume it or choose a new folder")
        distributed.barrier()  # every process has looked before rank 0 writes
        self.main = distributed.is_main()
        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        self.module = recipe.model()
        distributed.broadcast_module(self.module)
        self.params = trainable_parameters(self.module)
        try:
            self.optimizer = build_optimizer(self.params, config.optim)
        except ValueError as err:
            raise TrainingError(f"recipe {recipe.name!r}: {err}") from None
        self.scheduler = build_scheduler(self.optimizer, config.schedule, config.train.steps)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        self.step = 0
        self.nonfinite_streak = 0
        self.resumed_from: int | None = None
        self._events: list[tuple[int, str, str]] = []  # written once the log is open
        if resume:
            self._resume()
        elif self.main:
            save_config(config, self.run_dir / "config.yaml")

    # -- resume ------------------------------------------------------------------------------------

    def _check_saved_config(self) -> None:
        """Compare with ``RUN/config.yaml``; refuse any change but ``train.steps`` (it is then rewritten)."""
        path = self.run_dir / "config.yaml"
        if not path.exists():
            if self.main:
                save_config(self.config, path)
            return
        try:
            saved = load_config(type(self.config), path)
        except ConfigError as err:
            raise TrainingError(f"cannot resume: the saved config does not load ({err})") from None
        old, new = flatten_config(config_to_dict(saved)), flatten_config(config_to_dict(self.config))
        changed = [k for k in new if old.get(k) != new[k]]
        refused = [k for k in changed if k != "train.steps"]
        if refused:
            diff = "; ".join(f"{k}: saved {old.get(k)!r}, now {new[k]!r}" for k in refused)
            raise TrainingError(f"{path}: cannot resume with a different config ({diff}); only train.steps "
                                "may change")
        if changed and self.main:
            save_config(self.config, path)

    def _load_newest(self) -> dict | None:
        """The newest checkpoint that loads; corrupt newer ones are renamed ``*.corrupt``."""
        found = list_checkpoints(self.run_dir)
        latest = self.run_dir / "checkpoints" / "latest"
        order = [p for _, p in reversed(found)]
        if latest.is_file():
            named = latest.parent / latest.read_text(encoding="utf-8").strip()
            if named in order:  # `latest` is written after its checkpoint, so it is never newer
                order.remove(named)
                order.insert(0, named)
        for path in order:
            try:
                state = load_checkpoint(path)
                missing = {"step", "model", "optimizer", "scheduler", "rng", "recipe", "nonfinite_streak",
                           "resume_hash"} - state.keys()
                if missing:
                    raise CheckpointError(path, f"not a training checkpoint (missing {', '.join(sorted(missing))})")
                return state
            except CheckpointError as err:
                path.replace(path.with_name(path.name + ".corrupt"))
                message = f"{err}; renamed to {path.name}.corrupt, trying the previous checkpoint"
                warnings.warn(message, RuntimeWarning, stacklevel=3)
                match = _CKPT.match(path.name)
                self._events.append((int(match.group(1)) if match else 0, "checkpoint_fallback", message))
        if found:
            raise TrainingError(f"{self.run_dir / 'checkpoints'}: no checkpoint could be read "
                                f"({', '.join(p.name for _, p in found)} all corrupt)")
        return None

    def _resume(self) -> None:
        self._check_saved_config()
        if self.main:  # rank 0 cleans up and reads; the others get its checkpoint
            for folder in (self.run_dir, self.run_dir / "checkpoints", self.run_dir / "images"):
                remove_temporaries(folder)  # left by a killed run
        state: dict | TrainingError | None = None
        if self.main:
            try:
                state = self._load_newest()
            except TrainingError as err:  # raised on every process, not only here
                state = err
        state = distributed.broadcast_object(state)
        if isinstance(state, TrainingError):
            raise state
        if state is None:
            self.resumed_from = 0
            self._events.append((0, "resume", "no checkpoint: starting from step 0"))
            if self.main:
                truncate_log(self.run_dir / "log.jsonl", 0)
            return
        step = int(state["step"])
        if state["resume_hash"] != resume_hash(self.config):
            raise TrainingError(f"{self.run_dir}: the checkpoint at step {step} was written with a different "
                                "config (hash mismatch); only train.steps may change on resume")
        if self.config.train.steps < step:
            raise TrainingError(f"train.steps={self.config.train.steps} is below the checkpoint's step {step}")
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        saved_world, world = len(state.get("recipe_ranks", [None])), distributed.world_size()
        if saved_world == world:
            self.recipe.load_state_dict(state["recipe_ranks"][distributed.rank()] if world > 1 else state["recipe"])
        else:
            self.recipe.load_state_dict(state["recipe"])
            self._events.append((step, "resume", f"checkpoint written by {saved_world} process(es), resumed on "
                                 f"{world}: rank 0's recipe state for all; not bit-identical to an uninterrupted run"))
        restore_rng_state(state["rng"], {"batch": self.generator})
        self.step = self.resumed_from = step
        self.nonfinite_streak = int(state["nonfinite_streak"])
        if self.main:
            truncate_log(self.run_dir / "log.jsonl", step)
        self._events.append((step, "resume", f"resumed from checkpoint at step {step}"))

    # -- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write ``ckpt_<step>.pt`` (atomic), then ``latest``, then delete all but the newest few. With
        several processes rank 0 writes, with every process's recipe state, while the others wait."""
        path = checkpoint_path(self.run_dir, self.step)
        recipe_ranks = distributed.gather_objects(self.recipe.state_dict()) if distributed.is_distributed() else None
        if not self.main:
            distributed.barrier()
            return path
        path.parent.mkdir(exist_ok=True)
        save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state({"batch": self.generator}),
            "recipe": self.recipe.state_dict(),
            "nonfinite_streak": self.nonfinite_streak,
            "config_hash": config_hash(self.config),
            "resume_hash": resume_hash(self.config),
            **({"recipe_ranks": recipe_ranks} if recipe_ranks is not None else {}),
        })
        with atomic_write(path.parent / "latest", "w") as f:
            f.write(path.name + "\n")
        for _, old in list_checkpoints(self.run_dir)[:-self.config.train.keep_checkpoints]:
            old.unlink()
        distributed.barrier()
        return path

    # -- the loop ----------------------------------------------------------------------------------

    def _nonfinite(self, logger: RunLog | None, step: int, what: str) -> None:
        self.nonfinite_streak += 1
        message = f"step {step}: non-finite {what}; step skipped (no update)"
        if logger is not None:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            logger.event(step, "nonfinite", message)
        if self.nonfinite_streak >= self.config.train.max_nonfinite:
            raise TrainingError(f"{self.nonfinite_streak} consecutive non-finite steps (last at step {step}); "
                                f"see {self.run_dir / 'log.jsonl'}. Lower optim.lr or set optim.grad_clip")

    def _train_step(self, logger: RunLog | None, step: int) -> tuple[Any, dict[str, Any], float | None]:
        """One optimiser step; returns the batch (this process's part), the loss terms and the gradient
        norm (None if skipped)."""
        batch = self.recipe.batch(step, self.generator)
        if distributed.is_distributed():
            batch = self.recipe.shard(batch, distributed.rank(), distributed.world_size())
        with distributed.rank_rng(self.config.train.seed, step, [p.device for p in self.params]):
            terms = self.recipe.loss(batch, step)
        if "loss" not in terms:
            raise TrainingError(f"recipe {self.recipe.name!r}: loss() returned no 'loss' term "
                                f"(got {', '.join(terms) or 'nothing'})")
        loss = terms["loss"]
        norm = None
        finite = bool(torch.isfinite(loss).all())
        if finite:
            loss.backward()
        if not distributed.average_gradients(self.params, finite):  # the same answer on every process
            self._nonfinite(logger, step, "loss" if not finite else "loss on another process")
        else:
            total = grad_norm(self.params)
            if not bool(torch.isfinite(total)):
                self._nonfinite(logger, step, "gradient")
            else:
                if self.config.optim.grad_clip > 0:
                    clip_gradients(self.params, self.config.optim.grad_clip, total)
                self.optimizer.step()
                self.nonfinite_streak = 0
                norm = float(total)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return batch, terms, norm

    def run(self, until: int | None = None) -> dict[str, float]:
        """Train to ``train.steps`` (or stop after step ``until``, writing a checkpoint there, as an
        interrupted run would be resumed from).

        Returns:
            the final metrics: ``step``, the loss terms of the last step, and ``val_<name>`` for each
            validation metric of the last step (when ``val_every`` > 0).
        """
        cfg: TrainConfig = self.config.train
        total = cfg.steps
        stop = total if until is None else min(until, total)
        logger = RunLog(self.run_dir, purge_step=None if self.resumed_from is None else self.resumed_from + 1) \
            if self.main else None
        for event in self._events if logger is not None else ():
            logger.event(*event)
        self._events.clear()
        bar = tqdm(total=total, initial=self.step, disable=None if self.progress and self.main else True, unit="step",
                   desc=getattr(self.recipe, "name", "train"), dynamic_ncols=True)
        self.module.train()
        tick, samples, ticks = time.perf_counter(), 0, 0
        try:
            while self.step < stop:
                step = self.step + 1
                lr = self.optimizer.param_groups[0]["lr"]
                batch, terms, norm = self._train_step(logger, step)
                self.step = step
                samples, ticks = samples + self.recipe.batch_size(batch), ticks + 1
                if step % cfg.log_every == 0 or step == total:
                    now = time.perf_counter()
                    values = {"lr": lr, **distributed.average_scalars({k: _scalar(k, v) for k, v in terms.items()}),
                              "grad_norm": norm, "time": time.time(), "steps_per_s": ticks / max(now - tick, 1e-9),
                              "samples_per_s": samples * distributed.world_size() / max(now - tick, 1e-9)}
                    if logger is not None:
                        logger.scalars(step, values)
                    bar.set_postfix(loss=f"{values['loss']:.4g}", refresh=False)
                    tick, samples, ticks = now, 0, 0
                if logger is not None and cfg.image_every and step % cfg.image_every == 0:
                    with torch.no_grad():
                        grid = self.recipe.image_grid(batch, step)
                    if grid is not None:
                        logger.image(step, grid)
                    self.module.train()
                del batch, terms
                if logger is not None and cfg.val_every and (step % cfg.val_every == 0 or step == total):
                    with torch.no_grad():
                        metrics = {k: _scalar(k, v) for k, v in self.recipe.validate(step).items()}
                    logger.scalars(step, metrics, validation=True)
                    self.module.train()
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == stop:
                    self.save_checkpoint()
                bar.update(1)
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        if self.step == total and self.main:
            self.recipe.finish(self.run_dir)
        return distributed.broadcast_object(self._final_metrics() if self.main else None)

    def _final_metrics(self) -> dict[str, float]:
        """From ``log.jsonl``: the training row and validation row of the current step."""
        out: dict[str, float] = {"step": self.step}
        skip = {"step", "lr", "grad_norm", "time", "steps_per_s", "samples_per_s", "validation"}
        for row in read_log(self.run_dir / "log.jsonl"):
            if row["step"] != self.step or "event" in row:
                continue
            prefix = "val_" if row.get("validation") else ""
            out.update({prefix + k: v for k, v in row.items() if k not in skip})
        return out


def train(recipe_name: str, run_dir: str | PathLike, *, config_file: str | PathLike | None = None,
          overrides: Sequence[str] = (), resume: bool = False, progress: bool = True) -> dict[str, float]:
    """Train the recipe ``recipe_name`` into ``run_dir`` (what ``morphable train`` runs).

    The config is the recipe's defaults, then ``config_file`` (on resume without one: the run's own
    ``config.yaml``), then ``overrides`` (``"optim.lr=1e-4"``). The global RNGs are seeded with
    ``train.seed`` before the recipe is built, so its initial weights are reproducible too.

    Returns:
        the final metrics (see :meth:`Trainer.run`).
    Raises:
        UnknownRecipeError, ConfigError, TrainingError: one line each, naming the recipe, key or file.
    """
    cls = get_recipe(recipe_name)
    distributed.init()  # under torchrun; a no-op otherwise
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"{run_dir}: is a file, not a run folder")
    if not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        raise TrainingError(f"{run_dir}: folder is not empty; pass --resume to continue that run, or choose a "
                            "new folder")
    if resume and config_file is None and (run_dir / "config.yaml").is_file():
        config_file = run_dir / "config.yaml"
    config = load_config(cls.Config, config_file, overrides)
    distributed.barrier()  # every process has looked at run_dir before rank 0 writes there
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.train.seed)
    with distributed.main_first():  # rank 0 fills the recipe's caches, the others read them
        recipe = cls(config, run_dir)
    return Trainer(recipe, config, run_dir, resume=resume, progress=progress).run()


__all__ = ["Trainer", "TrainingError", "checkpoint_path", "list_checkpoints", "resume_hash", "seed_everything",
           "train"]
