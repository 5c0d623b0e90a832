"""FineNet training (Guo, Zhang et al., TPAMI 2018; seed ``zhang-deep-3d-face-modeling.txt``):
``morphable train fine -o RUN`` trains :class:`~morphable.nets.fine.FineNet` to predict, from a chip and the
coarse mesh rendered into it, the per-pixel displacement along the coarse normals.

Data (:mod:`morphable.train.fine_data`): the photos and split of CoarseNet's recipe (every eighth of
:data:`~morphable.train.inverse_rendered.TRAIN_PHOTOS` validates, the held-out photos are never loaded here);
per photo the cached coarse fit, its chips' inpainted backgrounds (CoarseNet's cache files when the settings
match) and the detail stage's displacement (~1 s per photo, cached). Every step draws new faces: pose,
identity, expression, light, shift, and a displacement (own or another photo's, × gain), rendered displaced
over a cached background; the coarse mesh's normal map, mask and the displacement map come from the same
draw. Validation uses one fixed set of such chips of the validation photos (drawn from ``train.seed``).

Loss: the mean squared difference of the predicted and true displacement maps (mm²) over the coarse
mesh's pixels. (An L1 run, the reported figure's own norm, at lr 2e-3 for 1500 steps, ended at the same
validation error and a slightly worse held-out one, 0.948 against 0.941 of the coarse error; ``docs/fine.md``.)

Defaults: Adam 4e-3, cosine to 2 %, 50 warm-up steps, 2000 steps of 16 chips, sized to run within an hour
on one CPU thread, data included (``docs/fine.md``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from morphable.nets.fine import BaseMaps, FineNet, save_fine, vertex_displacement
from morphable.train.config import OptimConfig, ScheduleConfig, TrainConfig
from morphable.train.data.cache import cache_root
from morphable.train.fine_data import (
    DetailSettings,
    FineRenderers,
    build_fine_set,
    detail_errors,
    draw_fine,
    render_fine,
)
from morphable.train.inverse_rendered import TRAIN_PHOTOS
from morphable.train.recipes.base import Recipe, evaluating, frozen_model
from morphable.train.recipes.coarse import PhotoSetSection, split_photos

VALIDATION_SEED_OFFSET = 7717
"""The validation chips are drawn from ``train.seed + VALIDATION_SEED_OFFSET`` (never the training stream)."""


@dataclass(frozen=True)
class ModelSection:
    """name: the morphable model (``sfm``; see ``docs/fine.md`` for why not ICT)."""

    name: str = "sfm"


@dataclass(frozen=True)
class DataSection(PhotoSetSection):
    """The coarse recipe's photo sets (:class:`~morphable.train.recipes.coarse.PhotoSetSection`: variants /
    val_variants are cached backgrounds per training / validation photo), and detail: how displacements are
    drawn (:class:`~morphable.train.fine_data.DetailSettings`)."""

    detail: DetailSettings = DetailSettings()


@dataclass(frozen=True)
class LossSection:
    """batch: chips per step."""

    batch: int = 16

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")


@dataclass(frozen=True)
class FineConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    loss: LossSection = LossSection()
    optim: OptimConfig = OptimConfig(name="adam", lr=4e-3, grad_clip=10.0)
    schedule: ScheduleConfig = ScheduleConfig(name="cosine", warmup_steps=50, min_lr_ratio=0.02)
    train: TrainConfig = TrainConfig(steps=2000, log_every=25, val_every=500, checkpoint_every=250, image_every=500)


def map_loss(predicted: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute difference (mm) of displacement maps ``(B, S, S)`` over the ``mask`` ``(B, S, S)`` pixels."""
    m = mask.to(predicted.dtype)
    return ((predicted - target).abs() * m).sum() / m.sum().clamp_min(1)


def evaluate(net: FineNet, chips: dict[str, Tensor], batch: int = 64) -> dict[str, Tensor]:
    """FineNet on rendered chips (:func:`~morphable.train.fine_data.render_fine`'s dict), in eval mode, no
    gradient: ``map_l1`` ``()`` (:func:`map_loss`), per chip ``base_err_mm`` / ``fine_err_mm`` ``(B,)``
    (:func:`~morphable.train.fine_data.detail_errors`: the coarse mesh's and the refined mesh's mean distance to
    the true displaced mesh over the seen vertices) and ``displacement`` ``(B, V_r)`` the prediction per vertex."""
    maps, d = [], []
    with torch.no_grad(), evaluating(net):
        for i in range(0, len(chips["images"]), batch):
            s = slice(i, i + batch)
            m = net(chips["images"][s], chips["normals"][s], chips["mask"][s])
            maps.append(m)
            d.append(vertex_displacement(m, BaseMaps(chips["normals"][s], chips["mask"][s], chips["visible"][s],
                                                     chips["points"][s], None)))
    dmap, d = torch.cat(maps), torch.cat(d)
    base, fine = detail_errors(d, chips["displacement"], chips["visible"])
    return {"map_l1": map_loss(dmap, chips["target"], chips["mask"]), "base_err_mm": base, "fine_err_mm": fine,
            "displacement": d}


class FineRecipe(Recipe):
    """The recipe (see the module docstring)."""

    name = "fine"
    Config = FineConfig

    def __init__(self, config: FineConfig, run_dir: Path):
        super().__init__(config, run_dir)
        cfg = config
        self.face_model, self.model_label = frozen_model(cfg.model.name)
        m = self.face_model
        train_photos, val_photos = split_photos(TRAIN_PHOTOS, cfg.data.val_every_photo, cfg.data.photos)
        settings, cache, seed = cfg.data.variant, cache_root(cfg.data.cache), cfg.train.seed
        # the coarse recipe's seeds: its cached variants (backgrounds) are reused
        self.train_set = build_fine_set(m, cfg.model.name, train_photos, cfg.data.variants, 2 * seed + 1, settings,
                                        name="train", cache=cache, progress=True)
        val_set = build_fine_set(m, cfg.model.name, val_photos, cfg.data.val_variants, 2 * seed + 2, settings,
                                 name="val", cache=cache, progress=True)
        self.renderers = FineRenderers(m, self.train_set["region_vertices"], settings.size)
        g = torch.Generator().manual_seed(seed + VALIDATION_SEED_OFFSET)
        draws = draw_fine(m, val_set, torch.arange(len(val_set["backgrounds"])), g, settings, cfg.data.detail)
        self.val_chips = render_fine(m, self.renderers, val_set, draws)
        self.net = FineNet(cfg.model.name, settings.size)
        self.net.scale.fill_(float(self.train_set["displacement"].pow(2).mean().sqrt()))

    # --------------------------------------------------------------------------------------- recipe
    def model(self) -> nn.Module:
        return self.net

    def batch(self, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """:func:`~morphable.train.fine_data.draw_fine`'s draws for ``loss.batch`` random cached chips."""
        data = self.train_set
        index = torch.randint(len(data["backgrounds"]), (self.config.loss.batch,), generator=generator)
        return draw_fine(self.face_model, data, index, generator, self.config.data.variant, self.config.data.detail)

    def loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """The squared map error (mm²) over the coarse mesh's pixels; logged beside it, the map L1 (mm) of the
        prediction and of "no detail" (``target_l1``)."""
        chips = render_fine(self.face_model, self.renderers, self.train_set, batch)
        predicted = self.net(chips["images"], chips["normals"], chips["mask"])
        m = chips["mask"].to(predicted.dtype)
        loss = ((predicted - chips["target"]) ** 2 * m).sum() / m.sum().clamp_min(1)
        return {"loss": loss, "map_l1": map_loss(predicted, chips["target"], chips["mask"]),
                "target_l1": map_loss(torch.zeros_like(predicted), chips["target"], chips["mask"])}

    # ----------------------------------------------------------------------------------- validation
    def validate(self, step: int) -> dict[str, float]:
        """The fixed validation chips: the map L1 (mm), the coarse and refined meshes' mean vertex distance to
        the true displaced mesh (mm, seen vertices) and their ratio."""
        out = evaluate(self.net, self.val_chips)
        base, fine = float(out["base_err_mm"].mean()), float(out["fine_err_mm"].mean())
        return {"map_l1": float(out["map_l1"]), "base_err_mm": base, "fine_err_mm": fine, "ratio": fine / base}

    def image_grid(self, batch: dict[str, Tensor], step: int) -> Tensor | None:
        """Rows: validation chips, their true displacement maps, the predicted ones (grey = 0, ±1.5 mm = white / black)."""
        from morphable.train.logging import tile_images

        v = self.val_chips
        index = torch.arange(0, len(v["images"]), max(1, len(v["images"]) // 8))[:8]
        with torch.no_grad(), evaluating(self.net):
            predicted = self.net(v["images"][index], v["normals"][index], v["mask"][index])

        def grey(x: Tensor) -> Tensor:
            return (0.5 + x / 3).clamp(0, 1)[..., None].expand(-1, -1, -1, 3)

        return tile_images(torch.cat([v["images"][index], grey(v["target"][index]), grey(predicted)]),
                           columns=len(index))

    def finish(self, run_dir: Path) -> None:
        """Export ``RUN/fine-<model>.pt`` with its provenance and validation metrics, and ``summary.json``."""
        metrics = self.validate(self.config.train.steps)
        save_fine(self.net, Path(run_dir) / f"fine-{self.model_label}.pt", self.provenance(run_dir, metrics))
        with open(Path(run_dir) / "summary.json", "w") as f:
            json.dump({"metrics": metrics, "data": asdict(self.config.data)}, f, indent=2)
