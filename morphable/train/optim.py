"""Optimiser, learning-rate schedule and gradient clipping from :class:`OptimConfig` / :class:`ScheduleConfig`.

Step numbering: the optimiser step with 0-based index ``k`` (the trainer's 1-based step ``k + 1``) uses
``lr = optim.lr * lr_factor(schedule, k, total_steps)``; that is what
:class:`torch.optim.lr_scheduler.LambdaLR` computes when ``scheduler.step()`` follows every optimiser step.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from morphable.train.config import OptimConfig, ScheduleConfig


def lr_factor(schedule: ScheduleConfig, k: int, total_steps: int) -> float:
    """The factor on the peak learning rate for the optimiser step with 0-based index ``k``.

    * warm-up (``k < warmup_steps``): ``(k + 1) / warmup_steps`` (linear, reaching 1 at the last warm-up step);
    * then, with ``j = k - warmup_steps`` steps after warm-up and ``J = total_steps - warmup_steps``:
      ``constant``: 1; ``step``: ``gamma ** (j // step_size)``; ``cosine``:
      ``m + (1 - m) (1 + cos(π min(j / max(J - 1, 1), 1))) / 2`` with ``m = min_lr_ratio`` (1 at the first
      step after warm-up, ``m`` at the last step of the run).
    """
    w = schedule.warmup_steps
    if k < w:
        return (k + 1) / w
    j = k - w
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "step":
        return schedule.gamma ** (j // schedule.step_size)
    if schedule.name == "cosine":
        t = min(j / max(total_steps - w - 1, 1), 1.0)
        m = schedule.min_lr_ratio
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {schedule.name!r}")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``model`` that require a gradient, in ``model.parameters()`` order."""
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(params: Iterable[nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params`` with the config's lr, betas and weight decay."""
    params = list(params)
    if not params:
        raise ValueError("the recipe's model has no parameter that requires a gradient")
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optim.name]
    return cls(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: ScheduleConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` (call ``.step()`` once after each optimiser step)."""
    def factor(k: int) -> float:
        return lr_factor(schedule, k, total_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def grad_norm(params: Iterable[nn.Parameter]) -> Tensor:
    """Global L2 norm of the gradients (parameters without a gradient count as zero), a 0-d tensor.

    ``sqrt(sum_p ||grad_p||²)``: what :func:`torch.nn.utils.clip_grad_norm_` measures; inf or nan when
    any gradient entry is.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float, total_norm: Tensor) -> None:
    """Scale all gradients by ``min(1, max_norm / (total_norm + 1e-6))`` in place (as
    :func:`torch.nn.utils.clip_grad_norm_`, reusing an already measured ``total_norm``)."""
    torch.nn.utils.clip_grads_with_norm_(list(params), max_norm, total_norm)
