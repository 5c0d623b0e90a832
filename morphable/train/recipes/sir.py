"""SIR (Jiang et al., arXiv 2104.03515, 2021): the training recipe, ``morphable train sir -o RUN``.

Mixed data, each row with label flags (an identity label; landmarks and how much to trust them):

* **synthetic identity groups** (``data.synthetic_identities`` × ``data.synthetic_images``): one ICT identity
  and albedo per group, every image its own pose (yaw up to ±``data.max_yaw_deg``), expression, lights and
  background, rendered straight into dlib's aligned chip (:class:`~morphable.train.chip_render.ChipRenderer`);
  identity label, exact landmarks, and the true shape / expression / rotation (our stand-in for the paper's
  3D-labelled 300W-LP: ``loss.lambda_param``);
* **identity-labelled photos without landmarks** (``data.identity_real``, a ``morphable data prepare``
  folder, only the identities listed in ``data.train_identities``): the SIR terms apply, the landmark term
  does not (the landmarks only aligned the chip);
* **photos with landmarks but no identity** (``data.landmark_real``): the landmark term applies (annotated
  points weight 1, dlib-detected ones ``data.detected_landmark_weight``), the identification terms do not.

A step draws ``batch.identities`` (P) identity groups × ``batch.images`` (K) rows
(:class:`~morphable.train.data.sampler.IdentitySampler`, real identity groups drawn with probability
``data.real_identity_share``), ``batch.landmark`` rows with landmarks and no identity, and in stage 2
``batch.pixel`` real rows for the pixel and face-recognition losses. The loss is

    L = λ_lm L_lm + λ_param L_param + λ_SIR (λ_inter L_inter + λ_center L_center + λ_KL L_KL)
        + λ_e ‖ψ‖² + λ_a ‖a‖²  [+ stage 2: λ_pix L_pix + λ_fr L_fr]

* ``L_lm``: per-landmark distance in the chip (÷ 75 px, the chip's half side) between the decoded 68 points
  (static points and the pose's jaw contour, :class:`~morphable.nets.ringnet.RingNetDecoder`, camera
  :func:`~morphable.nets.sir.chip_camera`) and the labelled ones, in the heteroscedastic form ``ℓ/σ + log σ``
  with σ the confidence map's landmark channel at each point (:func:`~morphable.losses.sir.heteroscedastic_loss`);
* ``L_param``: synthetic rows' squared errors of shape, expression and rotation (per coefficient);
* SIR (:mod:`morphable.losses.sir`) on the shapes of the identity rows: inter-class separation with margin
  ``loss.margin``, the weighted center loss against one moving-average centre per identity (rate
  ``loss.center_rate``, sample weights 1 / mean σ of the pixel confidence channel, normalised to mean 1), and
  the KL of the whole batch's shapes against N(0, I);
* stage 2 (steps after ``stages.stage1_steps``): the predicted face (shape, expression, rotation, albedo,
  light) rendered into the chip over the photo: ``L_pix`` the per-pixel L1 colour error over the rendered
  face in the form ``ℓ/σ + log σ`` (pixel confidence channel), and ``L_fr`` = 1 − cos between the dlib
  descriptors of the render and of the photo (the paper's face-recognition loss).

Ablations of the paper's table: ``--set loss.lambda_sir=0`` (no SIR), ``loss.lambda_kl=0`` (no prior term),
``loss.lambda_center=0`` (no weighted center loss).

Several processes (``torchrun``, :mod:`morphable.train.distributed`): the trainer shards each part of the batch
(identity, landmark, pixel rows) across the processes and averages gradients; each process updates its own
copy of the centres from its shard's shapes (moving averages of the same identities' shapes), and checkpoints
keep the first process's.

Made cheap for a CPU: dlib's trunk is frozen, so each row's trunk features (2560 values), its 64 px chip
(the confidence network's input) and, for real rows, its 150 px chip are cached once (keyed by the settings
that produce them); only stage 2 renders and runs dlib's network in the loop, on ``batch.pixel`` rows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from morphable.losses.identity import identity_loss
from morphable.losses.prior import prior_loss
from morphable.losses.sir import (
    heteroscedastic_loss,
    inter_class_separation,
    kl_to_standard_normal,
    update_centers,
    weighted_center_loss,
)
from morphable.models.functional import barycentric_points
from morphable.nets.ringnet import RingNetDecoder
from morphable.nets.sir import (
    CHIP_SIZE,
    chip_camera,
    landmarks_to_chip,
    lighting_from_params,
    new_sir,
    sample_map,
    save_sir,
    small_chips,
)
from morphable.train.chip_render import ChipRenderer, random_background, random_lighting, random_rotation
from morphable.train.config import OptimConfig, ScheduleConfig, TrainConfig
from morphable.train.data.cache import cache_root, cached, settings_key
from morphable.train.data.sampler import IdentitySampler
from morphable.train.recipes.base import Recipe, frozen_model


@dataclass(frozen=True)
class ModelSection:
    """name: the morphable model (registry name or file); albedo_modes: harmonic modes of the albedo space."""

    name: str = "ict"
    albedo_modes: int = 8


@dataclass(frozen=True)
class DataSection:
    """identity_real: prepared folder of identity-labelled photos ("" = none); train_identities: the
    comma-separated identities of it used for training (the others are never loaded: held out);
    landmark_real: comma-separated prepared folders of photos with landmarks (identities ignored);
    detected_landmark_weight: landmark-term weight of dlib-detected points; real_identity_share: probability
    that a drawn identity group is a real one; synthetic_identities × synthetic_images: synthetic groups;
    synthetic_val_identities: held-out groups; max_yaw_deg, max_pitch_deg, expression_scale: synthetic poses
    and expressions; cache: folder of cached rows ("" = ``$MORPHABLE_HOME/train-cache``); chunk: chips per
    trunk call."""

    identity_real: str = ""
    train_identities: str = ""
    landmark_real: str = ""
    detected_landmark_weight: float = 0.5
    real_identity_share: float = 0.25
    synthetic_identities: int = 150
    synthetic_images: int = 6
    synthetic_val_identities: int = 20
    max_yaw_deg: float = 60.0
    max_pitch_deg: float = 20.0
    expression_scale: float = 0.5
    cache: str = ""
    chunk: int = 16


@dataclass(frozen=True)
class BatchSection:
    """identities × images: P identity groups × K rows; landmark: rows with landmarks and no identity;
    pixel: real rows rendered in stage 2."""

    identities: int = 8
    images: int = 4
    landmark: int = 16
    pixel: int = 4


@dataclass(frozen=True)
class LossSection:
    """Weights. lambda_sir scales the three SIR terms (lambda_inter, lambda_center, lambda_kl); margin: of the
    inter-class separation, in mean squared coefficient difference (independent N(0, I) shapes are at 2);
    center_rate: γ of the moving-average centres (Wen et al.: 0.5); lambda_param: synthetic parameter loss;
    lambda_expression, lambda_albedo: N(0, I) priors; lambda_pixel, lambda_fr: stage 2."""

    lambda_landmark: float = 1.0
    lambda_param: float = 1.0
    lambda_sir: float = 1.0
    lambda_inter: float = 1.0
    lambda_center: float = 1.0
    lambda_kl: float = 1.0
    margin: float = 1.0
    center_rate: float = 0.5
    lambda_expression: float = 1e-3
    lambda_albedo: float = 1e-3
    lambda_pixel: float = 1.0
    lambda_fr: float = 1.0


@dataclass(frozen=True)
class StageSection:
    """stage1_steps: steps without the pixel and face-recognition losses (stage 2 runs to ``train.steps``)."""

    stage1_steps: int = 1500


@dataclass(frozen=True)
class NetSection:
    """hidden: encoder module 1's trainable layer; dropout after it."""

    hidden: int = 512
    dropout: float = 0.1


@dataclass(frozen=True)
class SIRConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    batch: BatchSection = BatchSection()
    loss: LossSection = LossSection()
    stages: StageSection = StageSection()
    net: NetSection = NetSection()
    optim: OptimConfig = OptimConfig(name="adamw", lr=3e-4, weight_decay=1e-4, grad_clip=10.0)
    schedule: ScheduleConfig = ScheduleConfig(name="cosine", warmup_steps=100, min_lr_ratio=0.05)
    train: TrainConfig = TrainConfig(steps=1800, log_every=25, val_every=300, checkpoint_every=300)


def _pair_aucs(shapes: Tensor, meshes: Tensor, groups: Tensor) -> tuple[float, float]:
    """Same/different-identity ROC AUCs over all pairs of ``shapes`` ``(N, K)`` (Euclidean distance) and of their
    neutral face-region ``meshes`` ``(N, V, 3)`` (RMS vertex distance; neutral meshes of one model share its
    frame, so no rigid alignment as in ``benchmarks/identity_consistency.py``), ``groups`` ``(N,)`` labels."""
    from morphable.losses.identity import roc_auc

    i, j = torch.triu_indices(len(groups), len(groups), offset=1)
    same = groups[i] == groups[j]
    d_coeff = torch.cdist(shapes, shapes)[i, j]
    flat = meshes.reshape(len(meshes), -1)
    d_mesh = torch.cdist(flat, flat)[i, j] / meshes.shape[1] ** 0.5
    return roc_auc(-d_coeff, same), roc_auc(-d_mesh, same)


class SIRRecipe(Recipe):
    """The recipe (see the module docstring)."""

    name = "sir"
    Config = SIRConfig

    def __init__(self, config: SIRConfig, run_dir: Path):
        super().__init__(config, run_dir)
        from morphable.nets.encoders import DlibEncoder
        from morphable.train.recipes.genova import drawn_albedo_space

        cfg = config
        self.face_model, self.model_label = frozen_model(cfg.model.name)
        self.renderer = ChipRenderer(self.face_model)
        self.albedo_space = drawn_albedo_space(self.renderer, cfg.model.albedo_modes)
        self.encoder = DlibEncoder()
        self.net = new_sir(self.face_model, self.model_label, self.albedo_space.size, hidden=cfg.net.hidden,
                           dropout=cfg.net.dropout, albedo_modes=cfg.model.albedo_modes, net=self.encoder.net)
        self.decoder = RingNetDecoder(self.face_model)
        self.K = self.net.layouts["shape"].size
        self.E = self.net.layouts["pose"].sizeof("expression")
        train = self._synthetic("train", cfg.data.synthetic_identities, cfg.train.seed * 2 + 1)
        self.val = self._synthetic("val", cfg.data.synthetic_val_identities, cfg.train.seed * 2 + 2)
        real_id, real_lm = self._real()
        self._build_table(train, real_id, real_lm)
        self.net.set_feature_statistics(self.table["features"].float())

    # ----------------------------------------------------------------------------------------- data
    def _synthetic(self, split: str, groups: int, seed: int) -> dict[str, Tensor]:
        d = self.config.data
        settings = dict(split=split, seed=seed, model=self.config.model.name, V=self.face_model.n_vertices,
                        groups=groups, images=d.synthetic_images, yaw=d.max_yaw_deg, pitch=d.max_pitch_deg,
                        expr=d.expression_scale, modes=self.config.model.albedo_modes, version=1)
        return cached(cache_root(self.config.data.cache) / f"sir-synthetic-{settings_key(settings)}.pt",
                       lambda: self._make_synthetic(groups, torch.Generator().manual_seed(seed)))

    def _make_synthetic(self, groups: int, g: torch.Generator) -> dict[str, Tensor]:
        """Synthetic identity groups rendered into chips: trunk features, 64 px chips, chip landmarks, true
        shape / expression / rotation, group labels."""
        from tqdm import tqdm

        cfg, m = self.config, self.face_model
        n = cfg.data.synthetic_images
        out: dict[str, list[Tensor]] = {}
        for _ in tqdm(range(groups), desc="synthetic identity groups", unit="group", disable=groups < 8):
            shape = torch.randn(1, self.K, generator=g).expand(n, -1)
            expr = torch.zeros(n, self.E)
            if self.E:
                if m.expression_kind == "blendshapes":
                    for b in range(n):
                        active = torch.randperm(self.E, generator=g)[:3]
                        expr[b, active] = cfg.data.expression_scale * torch.rand(3, generator=g)
                else:
                    expr = cfg.data.expression_scale * torch.randn(n, self.E, generator=g)
            R = random_rotation(n, g, max_yaw_deg=cfg.data.max_yaw_deg, max_pitch_deg=cfg.data.max_pitch_deg)
            albedo = self.albedo_space(torch.randn(1, self.albedo_space.size, generator=g)).expand(n, -1, -1)
            with torch.no_grad():
                vertices = m(identity=self._pad(shape), expression=self._pad_expression(expr)).vertices
                chips = self.renderer(vertices, R, albedo, random_lighting(n, g), random_background(n, g))
                chips = (chips + 0.01 * torch.randn(chips.shape, generator=g)).clamp(0, 1)
                rotation = matrix_to_axis_angle(R)
                params = {"shape": shape, "expression": expr, "rotation": rotation}
                landmarks = self._landmarks(params)
                features = self._features(chips)
            row = {"features": features, "small": (small_chips(chips) * 255).round().to(torch.uint8),
                   "landmarks": landmarks, "shape": shape.clone(), "expression": expr, "rotation": rotation}
            for k, v in row.items():
                out.setdefault(k, []).append(v)
        data = {k: torch.cat(v) for k, v in out.items()}
        data["group"] = torch.arange(groups).repeat_interleave(n)
        return data

    def _features(self, chips: Tensor) -> Tensor:
        """Trunk features ``(N, 2560)`` float16 of chips, ``data.chunk`` at a time."""
        with torch.no_grad():
            return torch.cat([self.net.trunk(chips[i:i + self.config.data.chunk]).half()
                              for i in range(0, len(chips), self.config.data.chunk)])

    def _real(self) -> tuple[dict[str, Tensor] | None, list[dict[str, Tensor]]]:
        """The identity-labelled training photos (only ``data.train_identities``) and the landmark folders."""
        d = self.config.data
        real_id = None
        if d.identity_real:
            keep = [s.strip() for s in d.train_identities.split(",") if s.strip()]
            if not keep:
                raise ValueError("data.identity_real needs data.train_identities (the identities to train on; "
                                 "the others stay held out)")
            real_id = self._real_rows(d.identity_real, keep)
        real_lm = [self._real_rows(f.strip(), None) for f in d.landmark_real.split(",") if f.strip()]
        return real_id, real_lm

    def _real_rows(self, folder: str, identities: list[str] | None) -> dict[str, Tensor]:
        """Rows of a prepared folder: with ``identities``, only those people's faces (identity rows, no
        landmark term); else every face (landmark rows, no identity)."""
        from morphable.train.data.adapters import label_flags
        from morphable.train.data.manifest import load_dataset

        ds = load_dataset(folder)
        if identities is None:
            index = list(range(len(ds)))
        else:
            unknown = sorted(set(identities) - {i.identity for i in ds.items})
            if unknown:
                raise ValueError(f"data.train_identities: {', '.join(unknown)} not in {folder}")
            index = [i for i, item in enumerate(ds.items) if item.identity in identities]
        items = [ds.items[i] for i in index]
        settings = dict(folder=str(Path(folder).resolve()), keys=[i.key for i in items], version=1)

        def make() -> dict[str, Tensor]:
            chips = ds.chips(index)
            return {"features": self._features(chips), "small": (small_chips(chips) * 255).round().to(torch.uint8),
                    "chips": (chips * 255).round().to(torch.uint8)}

        data = dict(cached(cache_root(self.config.data.cache) / f"sir-real-{settings_key(settings)}.pt", make))
        data["descriptor"] = ds.descriptors[index]
        data["landmarks"] = landmarks_to_chip(ds.landmarks[index])
        if identities is None:
            data["lm_weight"] = torch.tensor([1.0 if label_flags(i).landmarks else
                                              self.config.data.detected_landmark_weight for i in items])
            data["identity"] = [None] * len(items)
        else:
            data["lm_weight"] = torch.zeros(len(items))
            data["identity"] = [i.identity for i in items]
        return data

    def _build_table(self, synthetic: dict[str, Tensor], real_id: dict | None, real_lm: list[dict]) -> None:
        """One table of rows (synthetic, then real identity rows, then landmark rows), the identity labels,
        the centres, and the samplers' row lists."""
        parts = [synthetic] + ([real_id] if real_id is not None else []) + real_lm
        n_syn = len(synthetic["features"])
        self.n_synthetic = n_syn
        table = {k: torch.cat([p[k] for p in parts]) for k in ("features", "small", "landmarks")}
        table["lm_weight"] = torch.cat([torch.ones(n_syn)] + [p["lm_weight"] for p in parts[1:]])
        labels = [f"synthetic:{int(i)}" for i in synthetic["group"]]
        for p in parts[1:]:
            labels += [None if i is None else f"real:{i}" for i in p["identity"]]
        names = sorted({x for x in labels if x is not None}, key=lambda s: (not s.startswith("synthetic"), s))
        index = {name: i for i, name in enumerate(names)}
        table["label"] = torch.tensor([-1 if x is None else index[x] for x in labels])
        # real rows keep their 150 px chip and descriptor (stage 2); synthetic rows point to none
        real_parts = parts[1:]
        self.real_chips = torch.cat([p["chips"] for p in real_parts]) if real_parts else torch.zeros(0, 150, 150, 3,
                                                                                                       dtype=torch.uint8)
        self.real_descriptors = torch.cat([p["descriptor"] for p in real_parts]) if real_parts else torch.zeros(0, 128)
        self.table = table
        self.truth = {k: synthetic[k] for k in ("shape", "expression", "rotation")}
        self.centers = torch.zeros(len(names), self.K)  # one moving-average centre per identity label
        identity_rows = (table["label"] >= 0).nonzero().squeeze(1)
        self.identity_rows = identity_rows
        row_labels = [labels[i] for i in identity_rows.tolist()]
        real_groups = {x for x in row_labels if x.startswith("real:")}
        syn_groups = len(names) - len(real_groups)
        share = self.config.data.real_identity_share
        w_real = share / max(1 - share, 1e-6) * syn_groups / max(len(real_groups), 1)
        group_weights = [w_real if name.startswith("real:") else 1.0 for name in
                         dict.fromkeys(row_labels)]  # IdentitySampler orders groups by first appearance
        self.sampler = IdentitySampler(row_labels, self.config.batch.identities, self.config.batch.images,
                                       weights=group_weights)
        self.landmark_rows = ((table["label"] < 0) & (table["lm_weight"] > 0)).nonzero().squeeze(1)
        self.pixel_rows = torch.arange(n_syn, len(labels))  # every real row has its chip

    def _pad(self, shape: Tensor) -> Tensor:
        return torch.cat([shape, shape.new_zeros(len(shape), self.face_model.n_identity - shape.shape[1])], 1)

    def _pad_expression(self, expr: Tensor) -> Tensor | None:
        if not self.face_model.n_expression:
            return None
        return torch.cat([expr, expr.new_zeros(len(expr), self.face_model.n_expression - expr.shape[1])], 1)

    def _landmarks(self, params: dict[str, Tensor], target: Tensor | None = None) -> Tensor:
        """Chip landmarks ``(B, 68, 2)`` of ``shape``, ``expression`` and ``rotation``: the chip camera of the
        static points, then the decoder's 68 points with the pose's jaw contour."""
        m = self.face_model
        sub = {"shape": params["shape"], "expression": params["expression"]}
        verts = self.decoder.vertices(sub)
        static = barycentric_points(verts, self.decoder.local[m.landmark_indices], m.landmark_weights)
        camera = chip_camera(static, params["rotation"], valid=m.landmark_mask)
        return self.decoder.landmarks(sub, camera, target)

    # --------------------------------------------------------------------------------------- recipe
    def model(self) -> nn.Module:
        return self.net

    def stage(self, step: int) -> int:
        return 1 if step <= self.config.stages.stage1_steps or not len(self.pixel_rows) else 2

    def batch(self, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``identity`` ``(P·K,)`` rows (group-major), ``landmark`` rows, and in stage 2 ``pixel`` rows."""
        b = self.config.batch
        items, _ = self.sampler.draw(generator)
        out = {"identity": self.identity_rows[items.reshape(-1)]}
        if len(self.landmark_rows) and b.landmark:
            out["landmark"] = self.landmark_rows[torch.randint(len(self.landmark_rows), (b.landmark,),
                                                               generator=generator)]
        if self.stage(step) == 2 and b.pixel:
            out["pixel"] = self.pixel_rows[torch.randint(len(self.pixel_rows), (b.pixel,), generator=generator)]
        return out

    def loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        L = self.config.loss
        parts = [batch["identity"]] + [batch[k] for k in ("landmark", "pixel") if k in batch]
        rows = torch.cat(parts)
        n_id = len(batch["identity"])
        params = self.net.encode(self.table["features"][rows].float())
        log_sigma = self.net.confidence(self.table["small"][rows].float() / 255)  # (N, 2, 64, 64)
        terms: dict[str, Tensor] = {}

        # landmark term, where landmarks exist
        w = self.table["lm_weight"][rows]
        has = w > 0
        l_lm = params["shape"].new_zeros(())
        if has.any():
            target = self.table["landmarks"][rows][has]
            sub = {k: params[k][has] for k in ("shape", "expression", "rotation")}
            pred = self._landmarks(sub, target)
            resid = (pred - target).norm(dim=-1) / (CHIP_SIZE / 2)  # (n, 68)
            weights = w[has][:, None] * self.face_model.landmark_mask[None].to(resid)
            l_lm = heteroscedastic_loss(resid, sample_map(log_sigma[has, 1], target), weights)
        terms["landmark"] = l_lm

        # synthetic parameter loss
        syn = rows < self.n_synthetic
        l_param = params["shape"].new_zeros(())
        if syn.any():
            r = rows[syn]
            l_param = sum(((params[k][syn] - self.truth[k][r]) ** 2).mean()
                          for k in ("shape", "expression", "rotation"))
        terms["param"] = l_param

        # SIR on the identity rows (labels), KL on every row's shape
        shapes, labels = params["shape"][:n_id], self.table["label"][batch["identity"]]
        confidence = 1 / torch.exp(log_sigma[:n_id, 0].detach()).mean((1, 2))
        weights = confidence / confidence.mean()
        l_inter = inter_class_separation(shapes, labels, L.margin)
        l_center = weighted_center_loss(shapes, self.centers, labels, weights)
        l_kl = kl_to_standard_normal(params["shape"])
        update_centers(self.centers, shapes, labels, weights, rate=L.center_rate)
        terms.update(inter=l_inter, center=l_center, kl=l_kl)
        l_sir = L.lambda_inter * l_inter + L.lambda_center * l_center + L.lambda_kl * l_kl

        l_exp = prior_loss(params["expression"]) / max(self.E, 1)
        l_alb = prior_loss(params["albedo"]) / params["albedo"].shape[1]
        total = (L.lambda_landmark * l_lm + L.lambda_param * l_param + L.lambda_sir * l_sir
                 + L.lambda_expression * l_exp + L.lambda_albedo * l_alb)
        terms.update(expression_prior=l_exp, albedo_prior=l_alb)

        if "pixel" in batch:
            n_px = len(batch["pixel"])
            px = {k: v[-n_px:] for k, v in params.items()}
            l_pix, l_fr = self._stage2(px, batch["pixel"], log_sigma[-n_px:, 0])
            total = total + L.lambda_pixel * l_pix + L.lambda_fr * l_fr
            terms.update(pixel=l_pix, face_recognition=l_fr)
        terms["loss"] = total
        terms["stage"] = float(self.stage(step))
        return terms

    def _render(self, params: dict[str, Tensor], background: Tensor) -> tuple[Tensor, Tensor]:
        """The predicted faces drawn into their chips over ``background`` ``(B, 150, 150, 3)``: image and
        coverage ``(B, 150, 150)``."""
        from morphable.render.renderer import PointLights

        m, r = self.face_model, self.renderer
        vertices = m(identity=self._pad(params["shape"]), expression=self._pad_expression(params["expression"])).vertices
        camera = chip_camera(m.landmarks(vertices), params["rotation"], valid=m.landmark_mask)
        albedo = r.albedo(self.albedo_space(params["albedo"]))
        positions, colors, ambient, specular = lighting_from_params(params["light"])
        lights = PointLights(positions, colors, ambient=ambient,  # as ChipRenderer lights its chips
                             specular=specular * albedo.mean(-1, keepdim=True).mean(1, keepdim=True) * 2,
                             shininess=20.0)
        out = r.renderer(vertices[:, r.vertex_ids], camera, colors=albedo, lights=lights, background=background)
        return out.image.clamp(0, 1), out.alpha

    def _stage2(self, params: dict[str, Tensor], rows: Tensor, log_sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Pixel loss (heteroscedastic, over the rendered face) and face-recognition loss of real rows."""
        import torch.nn.functional as F

        real = rows - self.n_synthetic
        photo = self.real_chips[real].float() / 255
        image, alpha = self._render(params, photo)
        resid = (image - photo).abs().mean(-1)  # (B, 150, 150)
        sigma = F.interpolate(log_sigma[:, None], size=resid.shape[1:], mode="bilinear", align_corners=False)[:, 0]
        l_pix = heteroscedastic_loss(resid, sigma, (alpha >= 0.5).to(resid))
        l_fr = identity_loss(self.real_descriptors[real], self.encoder(image).descriptor)
        return l_pix, l_fr

    def state_dict(self) -> dict:
        return {"centers": self.centers.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.centers = state["centers"].clone()

    # ----------------------------------------------------------------------------------- validation
    def validate(self, step: int) -> dict[str, float]:
        """Held-out synthetic groups: face-region vertex error of the neutral shape (mm; and the mean face's),
        shape coefficient RMSE, inner-51 landmark NME (outer-eye-corner normalised), rotation error (°), and
        the same/different-identity AUCs of coefficient and neutral-mesh distances over all pairs of held-out images
        (:func:`_pair_aucs`)."""
        v = self.val
        was = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                params = self.net.encode(v["features"].float())
                pred = self._landmarks(params)
        finally:
            self.net.train(was)
        m = self.face_model
        ids = m.region_ids("face")
        Vp = m(identity=self._pad(params["shape"])).vertices[:, ids]
        Vt = m(identity=self._pad(v["shape"])).vertices[:, ids]
        gt = v["landmarks"]
        eye = (gt[:, 36] - gt[:, 45]).norm(dim=-1)
        nme = ((pred[:, 17:] - gt[:, 17:]).norm(dim=-1).mean(-1) / eye).mean()
        Rd = axis_angle_to_matrix(params["rotation"]) @ axis_angle_to_matrix(v["rotation"]).transpose(1, 2)
        angle = torch.rad2deg(torch.arccos(((Rd.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
        auc_coeff, auc_mesh = _pair_aucs(params["shape"], m(identity=self._pad(params["shape"])).vertices[:, ids],
                                         v["group"])
        return {"vertex_mm": float((Vp - Vt).norm(dim=-1).mean()),
                "mean_face_mm": float((m.mean[ids][None] - Vt).norm(dim=-1).mean()),
                "shape_rmse": float((params["shape"] - v["shape"]).pow(2).mean().sqrt()),
                "nme_inner51": float(nme), "rotation_deg": float(angle.mean()), "auc_coeff": auc_coeff, "auc_mesh": auc_mesh}

    def finish(self, run_dir: Path) -> None:
        """Choose the landmark fit's prior precision on held-out synthetic faces and export
        ``RUN/sir-<model>.pt`` (float16, with the command, config and final metrics) and ``summary.json``."""
        from morphable.train.recipes.genova import choose_prior_precision

        v = self.val
        with torch.no_grad():
            self.net.eval()
            data = {"pooled": v["features"].float(), "landmarks": v["landmarks"], "identity": self._pad(v["shape"])}
            choice = choose_prior_precision(lambda f: {"identity": self._pad(self.net.encode(f)["shape"])},
                                            self.face_model, data)
        self.net.prior_precision = choice["prior_precision"]
        metrics = self.validate(self.config.train.steps)
        meta = self.provenance(run_dir, {**metrics, **{k: v for k, v in choice.items() if k != "prior_precision"}})
        save_sir(self.net, Path(run_dir) / f"sir-{self.model_label}.pt", meta)
        with open(Path(run_dir) / "summary.json", "w") as f:
            json.dump({"metrics": metrics, "prior_precision": choice}, f, indent=2)
