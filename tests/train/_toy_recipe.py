"""A small real recipe for the trainer's tests: least-squares linear regression with a known solution.

Data: ``x ~ N(0, I_d)`` from the trainer's generator, ``y = x·w* + b* + σ ε`` with ``w*`` and ``b*``
fixed by ``data.truth_seed`` (so the optimum the model must reach is known) and the noise ``ε`` drawn
from torch's global RNG. Each sample gets a weight ``1 + 0.1 u`` (``u`` from numpy's global RNG) and the
batch is shuffled with Python's ``random``: every RNG source the trainer checkpoints is used, so the
resume tests cover them all. The recipe keeps an exponential moving average of the loss as extra state
(``state_dict``), logged as ``loss_ema``.

Test hooks: ``data.nan_loss_steps`` makes the loss NaN at those steps, ``data.nan_grad_steps`` keeps the
loss finite but the gradient NaN (``0·sqrt(0·w)``: value 0, derivative 0·∞).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from morphable.io.checkpoint import save_checkpoint
from morphable.train.config import OptimConfig, ScheduleConfig, TrainConfig
from morphable.train.logging import tile_images
from morphable.train.recipes.base import Recipe


@dataclass(frozen=True)
class ToyDataConfig:
    dim: int = 4
    batch_size: int = 16
    noise: float = 0.01
    truth_seed: int = 123
    nan_loss_steps: tuple[int, ...] = ()
    nan_grad_steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class ToyConfig:
    optim: OptimConfig = OptimConfig(lr=0.05)
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig(steps=200, log_every=10, checkpoint_every=50)
    data: ToyDataConfig = ToyDataConfig()


def truth(data: ToyDataConfig) -> tuple[Tensor, Tensor]:
    """The known optimum ``(w* (d,), b* ())``."""
    g = torch.Generator().manual_seed(data.truth_seed)
    return torch.randn(data.dim, generator=g), torch.randn((), generator=g)


class ToyRecipe(Recipe):
    name = "toy"
    Config = ToyConfig

    def __init__(self, config: ToyConfig, run_dir: Path):
        super().__init__(config, run_dir)
        self.net = nn.Linear(config.data.dim, 1)  # initialised from torch's global RNG
        self.w_true, self.b_true = truth(config.data)
        self.ema = torch.zeros(())
        self.finished = 0

    def model(self) -> nn.Module:
        return self.net

    def batch(self, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        d = self.config.data
        x = torch.randn(d.batch_size, d.dim, generator=generator)
        y = x @ self.w_true + self.b_true + d.noise * torch.randn(d.batch_size)
        weight = torch.as_tensor(1 + 0.1 * np.random.rand(d.batch_size), dtype=torch.float32)
        order = list(range(d.batch_size))
        random.shuffle(order)
        return {"x": x[order], "y": y[order], "weight": weight}

    def loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        residual = self.net(batch["x"])[:, 0] - batch["y"]
        mse = (batch["weight"] * residual**2).mean()
        loss = mse
        if step in self.config.data.nan_loss_steps:
            loss = loss * float("nan")
        if step in self.config.data.nan_grad_steps:
            loss = loss + 0.0 * torch.sqrt(0.0 * self.net.weight.sum())
        self.ema = 0.9 * self.ema + 0.1 * mse.detach()
        return {"loss": loss, "mse": mse.detach(), "loss_ema": self.ema}

    def validate(self, step: int) -> dict[str, float]:
        return {"weight_error": float((self.net.weight[0] - self.w_true).norm()),
                "bias_error": float((self.net.bias[0] - self.b_true).abs())}

    def image_grid(self, batch: dict[str, Tensor], step: int) -> Tensor:
        """Two 1 × d grey strips (learnt and true weights, mapped from [-3, 3] to [0, 1]), tiled."""
        strips = torch.stack([self.net.weight[0], self.w_true]).clamp(-3, 3).div(6).add(0.5)
        return tile_images(strips[:, None, :, None].expand(-1, 1, -1, 3).contiguous(), columns=1)

    def state_dict(self) -> dict:
        return {"ema": self.ema.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"].clone()

    def finish(self, run_dir: Path) -> None:
        self.finished += 1
        save_checkpoint(run_dir / "toy_weights.pt", {"weight": self.net.weight.detach(), "bias": self.net.bias.detach()})
