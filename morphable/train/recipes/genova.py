"""Genova et al., "Unsupervised Training for 3D Morphable Model Regression" (CVPR 2018): the training recipe.

``morphable train genova -o RUN [--set data.real=DATASET]`` trains :class:`~morphable.nets.genova.GenovaRegressor`
in the paper's two stages, in one run:

* **stage 1** (steps ``1 … stages.stage1_steps``): synthetic faces only, parameter loss
  ``L_param`` (:mod:`~morphable.losses.loopback`);
* **stage 2** (the remaining steps): batches of real photos and synthetic faces. Synthetic faces get
  ``L_param``; real photos get the multi-view identity loss (1 − cos between the photo's dlib descriptor and
  those of ``loss.views`` renders of the prediction at random poses and lights,
  :func:`~morphable.losses.identity.multiview_identity_loss`), the batch-distribution loss
  (:mod:`~morphable.losses.distribution`, λ = 10) and the loopback loss (the first view's render is encoded
  and decoded again; ``L_param`` against the first prediction, λ = 0.07).

Made cheap for a CPU (the encoder is frozen): synthetic faces are rendered once straight into aligned
chips (:mod:`~morphable.train.chip_render`) and only their encoder features are kept (a cache keyed by the
settings that produce it); real photos come from ``morphable data prepare`` with features cached, plus the
features of their mirrored chips. Only stage 2's renders of predictions run the encoder in the loop.

Deviations from the paper, with reasons: dlib's ResNet instead of FaceNet (what we ship; 256-D pooled
features instead of 1024-D); λ_s, λ_t rescaled to our coefficient counts (see
:func:`~morphable.losses.loopback.rescaled_weights`); the low-frequency albedo space of
:mod:`~morphable.fitting.albedo` stands in for BFM's texture PCA for models without one; synthetic faces
carry a mild random expression (robustness to the expressions of real photos); mirrored real chips double
the few real photos we have.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from morphable.fitting.albedo import LowFrequencyAlbedo
from morphable.losses.distribution import batch_distribution_loss
from morphable.losses.identity import cosine_similarity, multiview_identity_loss
from morphable.losses.loopback import parameter_loss, rescaled_weights
from morphable.nets.encoders import DlibEncoder, flip_chips
from morphable.nets.genova import GenovaRegressor, save_regressor
from morphable.train.chip_render import ChipRenderer, random_background, random_lighting, random_rotation
from morphable.train.config import OptimConfig, ScheduleConfig, TrainConfig
from morphable.train.data.cache import cache_root, cached, settings_key
from morphable.train.recipes.base import Recipe, evaluating, frozen_model
from morphable.train.synthetic import ShapeWarp, draw_synthetic_chips


@dataclass(frozen=True)
class ModelSection:
    """name: the morphable model (registry name or file); albedo_modes: harmonic modes per channel."""

    name: str = "ict"
    albedo_modes: int = 8


@dataclass(frozen=True)
class DataSection:
    """real: a folder from ``morphable data prepare`` ("" = synthetic only, stage 2 then trains on
    synthetic faces alone); real_val_fraction: held-out share of the real faces (by key hash);
    synthetic / synthetic_val: cached synthetic faces for training / validation; cache: folder for the
    synthetic cache ("" = ``$MORPHABLE_HOME/train-cache``); max_yaw_deg, expression_scale: synthetic poses
    and expressions; plain_eyes: share of synthetic faces with skin-coloured eyes; shape_warp_mm: amplitude
    of the smooth off-model shape fields (:class:`~morphable.train.synthetic.ShapeWarp`; 0 = model faces
    only, as in the paper); chunk: synthetic faces rendered per batch while building the cache."""

    real: str = ""
    real_val_fraction: float = 0.1
    synthetic: int = 6000
    synthetic_val: int = 200
    cache: str = ""
    max_yaw_deg: float = 40.0
    expression_scale: float = 0.3
    plain_eyes: float = 0.0
    shape_warp_mm: float = 0.0
    chunk: int = 16


@dataclass(frozen=True)
class LossSection:
    """Weights (Genova et al. 2018, Sec. 3.3): lambda_s / lambda_t: parameter loss (≤ 0: the paper's 0.4 /
    0.002 rescaled to our coefficient counts); lambda_batch = 10 and lambda_loop = 0.07 (paper);
    lambda_id = 1 (the identity loss is the reference term); views = 3 renders per real photo (paper);
    view_max_yaw_deg: their random yaw range."""

    lambda_s: float = 0.0
    lambda_t: float = 0.0
    lambda_id: float = 1.0
    lambda_batch: float = 10.0
    lambda_loop: float = 0.07
    views: int = 3
    view_max_yaw_deg: float = 30.0


@dataclass(frozen=True)
class StageSection:
    """stage1_steps: synthetic-only steps (then stage 2 to ``train.steps``); batch sizes of synthetic faces
    and real photos per step."""

    stage1_steps: int = 2500
    batch_synthetic: int = 32
    batch_real: int = 8


@dataclass(frozen=True)
class NetSection:
    """hidden: decoder width (paper: 1024); dropout after each hidden layer (not in the paper: with a few
    thousand synthetic faces the decoder over-fits without it; 0.3 gave the lowest held-out vertex error
    of 0, 0.3 and 0.5); init: start from these weights (a ``genova-*.pt`` file or a checkpoint of another
    run; "" = random), e.g. stage-2 variants from one stage-1 run (set ``stages.stage1_steps=0``)."""

    hidden: int = 1024
    dropout: float = 0.3
    init: str = ""


@dataclass(frozen=True)
class GenovaConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    loss: LossSection = LossSection()
    stages: StageSection = StageSection()
    net: NetSection = NetSection()
    # Adam; the paper does not give its optimiser settings. Weight decay regularises the decoder toward
    # zero (Sec. 3.2).
    optim: OptimConfig = OptimConfig(name="adamw", lr=3e-4, weight_decay=1e-4, grad_clip=10.0)
    schedule: ScheduleConfig = ScheduleConfig(name="cosine", warmup_steps=100, min_lr_ratio=0.05)
    train: TrainConfig = TrainConfig(steps=3500, log_every=25, val_every=500, checkpoint_every=100,
                                     image_every=500)


def _initial_state(path: str) -> dict[str, Tensor]:
    """The regressor state dict in a ``genova-*.pt`` weights file or a training checkpoint (safe loading)."""
    from morphable.errors import ModelFileError
    from morphable.io.checkpoint import load_checkpoint
    from morphable.nets.weights import load_weights

    try:
        return {k: v.float() for k, v in load_weights(path)["state"].items()}
    except ModelFileError:
        return load_checkpoint(path)["model"]


def drawn_albedo_space(renderer: ChipRenderer, modes: int) -> LowFrequencyAlbedo:
    """The albedo space of the regressor's ``albedo`` output on the vertices a :class:`ChipRenderer`
    draws (harmonics symmetrised through the model's mirror pairs among them)."""
    model = renderer.model
    ids = renderer.vertex_ids
    mirror = None
    if model.symmetry is not None:
        local = torch.full((model.n_vertices,), -1, dtype=torch.int64)
        local[ids] = torch.arange(len(ids))
        sym = model.symmetry[ids].to(torch.int64)
        mirror = torch.where(sym >= 0, local[sym.clamp_min(0)], sym)
    return LowFrequencyAlbedo(model.mean[ids], renderer.triangles, mirror, modes)


def frontal_chips(renderer: ChipRenderer, albedo_space: LowFrequencyAlbedo, identity: Tensor,
                  albedo: Tensor) -> Tensor:
    """Chips ``(B, S, S, 3)`` of neutral faces with these coefficients, frontal, lit by the same sequence of
    lights every call (a private generator, so the global RNGs are not consumed), on grey: how validation
    and ``benchmarks/render_recall.py`` look at predictions."""
    B = len(identity)
    g = torch.Generator().manual_seed(12345)
    rotation = random_rotation(B, g, max_yaw_deg=0.0, max_pitch_deg=0.0, max_roll_deg=0.0)
    lighting = random_lighting(B, g)
    background = torch.full((B, renderer.size, renderer.size, 3), 0.5)
    vertices = renderer.model(identity=identity).vertices
    return renderer(vertices, rotation, albedo_space(albedo), lighting, background)


def _key_fraction(key: str) -> float:
    """A stable number in [0, 1) from an item key (for the held-out split)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32


class GenovaRecipe(Recipe):
    """The recipe (see the module docstring)."""

    name = "genova"
    Config = GenovaConfig

    def __init__(self, config: GenovaConfig, run_dir: Path):
        super().__init__(config, run_dir)

        cfg = config
        self.face_model, self.model_label = frozen_model(cfg.model.name)
        self.chip_renderer = ChipRenderer(self.face_model)
        self.albedo_space = drawn_albedo_space(self.chip_renderer, cfg.model.albedo_modes)
        self.encoder = DlibEncoder()
        K, A = self.face_model.n_identity, self.albedo_space.size
        lam_s, lam_t = rescaled_weights(K, A)
        self.lambda_s = cfg.loss.lambda_s if cfg.loss.lambda_s > 0 else lam_s
        self.lambda_t = cfg.loss.lambda_t if cfg.loss.lambda_t > 0 else lam_t
        self.regressor = GenovaRegressor(self.model_label, K, A, hidden=cfg.net.hidden, dropout=cfg.net.dropout,
                                         albedo_modes=cfg.model.albedo_modes, encoder=self.encoder)
        self.synthetic = self._synthetic_set("train", cfg.data.synthetic, seed=cfg.train.seed * 2 + 1)
        self.synthetic_val = self._synthetic_set("val", cfg.data.synthetic_val, seed=cfg.train.seed * 2 + 2,
                                                 keep_chips=True)
        self.real, self.real_val = self._real_sets()
        features = [self.synthetic["pooled"]] + ([self.real["pooled"]] if self.real is not None else [])
        self.regressor.decoder.set_feature_statistics(torch.cat(features))
        if cfg.net.init:
            self.regressor.load_state_dict(_initial_state(cfg.net.init))

    # ----------------------------------------------------------------------------------------- data
    def _synthetic_set(self, split: str, n: int, seed: int, keep_chips: bool = False) -> dict[str, Tensor]:
        """Encoder features of ``n`` synthetic faces (see :func:`synthetic_features`)."""
        cfg = self.config
        settings = dict(split=split, seed=seed, model=cfg.model.name, n_vertices=self.face_model.n_vertices,
                        modes=cfg.model.albedo_modes, yaw=cfg.data.max_yaw_deg, expr=cfg.data.expression_scale,
                        chips=keep_chips, chunk=cfg.data.chunk, triangles=len(self.chip_renderer.triangles), version=2)
        if cfg.data.plain_eyes > 0:  # (absent from older caches' keys, which stay valid)
            settings["plain_eyes"] = cfg.data.plain_eyes
        if cfg.data.shape_warp_mm > 0:
            settings["shape_warp_mm"] = cfg.data.shape_warp_mm
        return synthetic_features(self.chip_renderer, self.albedo_space, self.encoder, n, settings, cache_root(cfg.data.cache),
                                  keep_chips=keep_chips)

    def _real_sets(self) -> tuple[dict[str, Tensor] | None, dict[str, Tensor] | None]:
        """Real faces split by key hash into train/val; train also gets the features of mirrored chips."""
        cfg = self.config
        if not cfg.data.real:
            return None, None
        from morphable.train.data.manifest import load_dataset

        ds = load_dataset(cfg.data.real)
        val = torch.tensor([_key_fraction(i.key) < cfg.data.real_val_fraction for i in ds.items], dtype=torch.bool)
        train_idx, val_idx = (~val).nonzero().squeeze(1), val.nonzero().squeeze(1)
        chips = ds.chips(train_idx)
        with torch.no_grad():
            flipped = torch.cat([self.encoder(flip_chips(chips[i:i + 32])).pooled for i in range(0, len(chips), 32)]) \
                if len(chips) else torch.zeros(0, ds.pooled.shape[1])
            flipped_desc = flipped @ self.encoder.net.fc_weight.T
        train = {"pooled": torch.cat([ds.pooled[train_idx], flipped]),
                 "descriptor": torch.cat([ds.descriptors[train_idx], flipped_desc])}
        real_val = {"pooled": ds.pooled[val_idx], "descriptor": ds.descriptors[val_idx],
                    "chips": (ds.chips(val_idx) * 255).round().to(torch.uint8)} if len(val_idx) else None
        return (train if len(train_idx) else None), real_val

    # --------------------------------------------------------------------------------------- recipe
    def model(self) -> nn.Module:
        return self.regressor

    def stage(self, step: int) -> int:
        return 1 if step <= self.config.stages.stage1_steps or self.real is None else 2

    def batch(self, step: int, generator: torch.Generator) -> dict:
        cfg = self.config
        n_syn = len(self.synthetic["pooled"])
        out = {"synthetic": torch.randint(n_syn, (cfg.stages.batch_synthetic,), generator=generator)}
        if self.stage(step) == 2:
            B, V = cfg.stages.batch_real, cfg.loss.views
            out["real"] = torch.randint(len(self.real["pooled"]), (B,), generator=generator)
            out["rotation"] = random_rotation(B * V, generator, max_yaw_deg=cfg.loss.view_max_yaw_deg)
            lighting = random_lighting(B * V, generator)
            out["lights"] = (lighting.positions, lighting.colors, lighting.ambient, lighting.specular)
            out["background"] = random_background(B * V, generator, size=self.chip_renderer.size)
        return out

    def render_views(self, prediction: dict[str, Tensor], rotation: Tensor, lights: tuple, background: Tensor,
                     views: int) -> Tensor:
        """Chips ``(B·V, S, S, 3)`` of the neutral predicted faces, each repeated for ``views`` poses/lights."""
        from morphable.train.chip_render import Lighting

        vertices = self.face_model(identity=prediction["identity"]).vertices.repeat_interleave(views, 0)
        albedo = self.albedo_space(prediction["albedo"]).repeat_interleave(views, 0)
        return self.chip_renderer(vertices, rotation, albedo, Lighting(*lights), background)

    def loss(self, batch: dict, step: int) -> dict[str, Tensor]:
        cfg = self.config
        syn = batch["synthetic"]
        pred_syn = self.regressor(self.synthetic["pooled"][syn])
        l_param = parameter_loss(pred_syn["identity"], self.synthetic["identity"][syn], pred_syn["albedo"],
                                 self.synthetic["albedo"][syn], lambda_s=self.lambda_s, lambda_t=self.lambda_t)
        terms = {"param": l_param}
        total = l_param
        if "real" in batch:
            V = cfg.loss.views
            real = batch["real"]
            pred = self.regressor(self.real["pooled"][real])
            chips = self.render_views(pred, batch["rotation"], batch["lights"], batch["background"], V)
            enc = self.encoder(chips)
            B = len(real)
            l_id = multiview_identity_loss(self.real["descriptor"][real], enc.descriptor.reshape(B, V, -1))
            l_batch = batch_distribution_loss(pred["identity"]) + batch_distribution_loss(pred["albedo"])
            again = self.regressor(enc.pooled.reshape(B, V, -1)[:, 0])  # loopback through the first view
            l_loop = parameter_loss(again["identity"], pred["identity"], again["albedo"], pred["albedo"],
                                    lambda_s=self.lambda_s, lambda_t=self.lambda_t)
            total = total + cfg.loss.lambda_id * l_id + cfg.loss.lambda_batch * l_batch + cfg.loss.lambda_loop * l_loop
            terms.update(identity=l_id, batch_distribution=l_batch, loopback=l_loop)
        terms["loss"] = total
        terms["stage"] = float(self.stage(step))
        return terms

    # ----------------------------------------------------------------------------------- validation
    def validate(self, step: int) -> dict[str, float]:
        """Synthetic held-out faces: coefficient RMSE and face-region vertex error (mm) against the mean
        face's; real held-out photos: cosine similarity of photo and frontal render descriptors."""
        with torch.no_grad(), evaluating(self.regressor):
            out = synthetic_shape_errors(self.regressor, self.face_model, self.synthetic_val)
            if self.real_val is not None:
                out["real_val_cos"] = self._real_similarity(self.real_val)
        return out

    def _real_similarity(self, real: dict[str, Tensor]) -> float:
        pred = self.regressor(real["pooled"])
        chips = self._frontal_chips(pred)
        return float(cosine_similarity(real["descriptor"], self.encoder(chips).descriptor).mean())

    def _frontal_chips(self, pred: dict[str, Tensor]) -> Tensor:
        return frontal_chips(self.chip_renderer, self.albedo_space, pred["identity"], pred["albedo"])

    def image_grid(self, batch: dict, step: int) -> Tensor | None:
        """Rows: held-out real photo chips over the frontal renders of their predictions (or synthetic)."""
        src = self.real_val if self.real_val is not None else self.synthetic_val
        n = min(8, len(src["pooled"]))
        with torch.no_grad(), evaluating(self.regressor):
            chips = self._frontal_chips(self.regressor(src["pooled"][:n]))
        photos = src["chips"][:n].float() / 255
        from morphable.train.logging import tile_images

        return tile_images(torch.cat([photos, chips]), columns=n)

    def finish(self, run_dir: Path) -> None:
        """Choose the landmark fit's prior precision on held-out synthetic faces and export the weights
        (``RUN/genova-<model>.pt``) with their provenance."""
        with torch.no_grad(), evaluating(self.regressor):
            choice = choose_prior_precision(self.regressor, self.face_model, self.synthetic_val)
        self.regressor.prior_precision = choice["prior_precision"]
        metrics = self.validate(self.config.train.steps)
        meta = self.provenance(run_dir, {**metrics, **{k: v for k, v in choice.items() if k != "prior_precision"}})
        save_regressor(self.regressor, Path(run_dir) / f"genova-{self.model_label}.pt", meta)
        with open(Path(run_dir) / "summary.json", "w") as f:
            json.dump({"metrics": metrics, "prior_precision": choice}, f, indent=2)


BLOCK = 500
"""Synthetic faces per cache file: a block is generated (and survives an interruption) as a unit."""


def synthetic_block(renderer: ChipRenderer, albedo_space: LowFrequencyAlbedo, encoder: DlibEncoder, settings: dict,
                    index: int, size: int, cache: Path, keep_chips: bool = False) -> dict[str, Tensor]:
    """Block ``index`` of :func:`synthetic_features` (``size`` faces): loaded from ``cache`` or made and
    saved atomically (a corrupt file is made again)."""
    block_settings = {**settings, "block": index, "block_size": size}
    key = settings_key(block_settings)

    def make() -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(int(key[:12], 16))
        warp_mm = float(settings.get("shape_warp_mm", 0.0))
        warper = ShapeWarp(renderer.model) if warp_mm > 0 else None
        parts: dict[str, list[Tensor]] = {}
        done = 0
        while done < size:
            b = min(int(settings.get("chunk", 16)), size - done)
            s = draw_synthetic_chips(renderer, albedo_space, b, generator, max_yaw_deg=float(settings["yaw"]),
                                     expression_scale=float(settings["expr"]),
                                     plain_eyes=float(settings.get("plain_eyes", 0.0)), shape_warp=warper,
                                     shape_warp_mm=warp_mm)
            with torch.no_grad():
                enc = encoder(s.chips)
            row = {"pooled": enc.pooled, "descriptor": enc.descriptor, "identity": s.identity, "albedo": s.albedo,
                   "landmarks": s.landmarks}
            if keep_chips:
                row["chips"] = (s.chips * 255).round().to(torch.uint8)
            for k, v in row.items():
                parts.setdefault(k, []).append(v)
            done += b
        return {k: torch.cat(v) for k, v in parts.items()}

    return cached(cache / f"genova-synthetic-{key}.pt", make)


def synthetic_features(renderer: ChipRenderer, albedo_space: LowFrequencyAlbedo, encoder: DlibEncoder, n: int,
                       settings: dict, cache: Path, *, keep_chips: bool = False) -> dict[str, Tensor]:
    """``n`` synthetic faces (:func:`~morphable.train.synthetic.draw_synthetic_chips`) reduced to what
    training needs: encoder ``pooled`` ``(n, 256)`` and ``descriptor`` ``(n, 128)`` features, true
    ``identity`` / ``albedo`` coefficients, chip ``landmarks`` ``(n, 68, 2)`` (and ``chips`` uint8 if asked).

    Faces are made in blocks of :data:`BLOCK` (or one block of ``n`` when smaller), each from its own seed
    (``settings`` + block index), and cached as ``cache/genova-synthetic-<hash>.pt`` (atomic writes): a
    larger ``n`` reuses the blocks already made, an interrupted build resumes at the first missing block,
    and several processes can fill one cache (:func:`synthetic_block`).
    """
    from tqdm import tqdm

    size = min(BLOCK, n)  # small sets (tests) are one block of their own size
    blocks = []
    with tqdm(total=n, desc=f"synthetic faces ({settings.get('split', '')})", unit="face", disable=n < 64) as bar:
        for index in range((n + size - 1) // size):
            blocks.append(synthetic_block(renderer, albedo_space, encoder, settings, index, size, cache, keep_chips))
            bar.update(min(size, n - bar.n))
    return {k: torch.cat([b[k] for b in blocks])[:n] for k in blocks[0]}


def _face_ids(model) -> Tensor:
    return model.region_ids("face")


def synthetic_shape_errors(regressor: GenovaRegressor, model, data: dict[str, Tensor]) -> dict[str, float]:
    """Held-out synthetic faces: ``coef_rmse`` of the identity, and ``vertex_mm`` / ``mean_face_mm``: mean
    per-vertex distance over the face region between the predicted (resp. mean) and true neutral shapes."""
    pred = regressor(data["pooled"])["identity"]
    true = data["identity"]
    ids = _face_ids(model)
    V_pred = model(identity=pred).vertices[:, ids]
    V_true = model(identity=true).vertices[:, ids]
    V_mean = model.mean[ids][None]
    return {"coef_rmse": float((pred - true).pow(2).mean().sqrt()),
            "vertex_mm": float((V_pred - V_true).norm(dim=-1).mean()),
            "mean_face_mm": float((V_mean - V_true).norm(dim=-1).mean())}


def choose_prior_precision(regressor: GenovaRegressor, model, data: dict[str, Tensor],
                           candidates: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
                           landmark_noise_px: float = 1.5) -> dict[str, float]:
    """The λ of ``fit_landmarks(identity_prior_mean=regressed, lambda_identity=λ)`` with the lowest mean
    face-region vertex error on held-out synthetic faces (their exact chip landmarks + Gaussian noise of
    ``landmark_noise_px``, about a detector's error at chip scale). Returns ``prior_precision`` and the
    errors (mm) of each candidate and of the plain landmark fit."""
    from morphable.fitting.landmarks import fit_landmarks

    g = torch.Generator().manual_seed(7)
    lm = data["landmarks"] + landmark_noise_px * torch.randn(data["landmarks"].shape, generator=g)
    lm = torch.where(model.landmark_mask[None, :, None], lm, torch.full_like(lm, float("nan")))
    mu = regressor(data["pooled"])["identity"]
    ids = _face_ids(model)
    V_true = model(identity=data["identity"]).vertices[:, ids]

    def error(fit) -> float:
        return float((model(identity=fit.identity.float()).vertices[:, ids] - V_true).norm(dim=-1).mean())

    out = {"landmarks_only_mm": error(fit_landmarks(model, lm))}
    best = None
    for lam in candidates:
        e = error(fit_landmarks(model, lm, identity_prior_mean=mu, lambda_identity=lam))
        out[f"lambda_{lam:g}_mm"] = e
        if best is None or e < best[1]:
            best = (lam, e)
    out["prior_precision"] = best[0]
    return out
