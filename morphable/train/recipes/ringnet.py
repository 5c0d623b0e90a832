"""RingNet (Sanyal et al., CVPR 2019): the training recipe, ``morphable train ringnet -o RUN``.

Each step draws ``ring.identities`` (P) groups × ``ring.size − 1`` (K) images
(:class:`~morphable.train.data.sampler.IdentitySampler`), regresses every image
(:class:`~morphable.nets.ringnet.RingNet`), and minimises the paper's objective (Eq. 4)

    L = λ_SC · L_SC + λ_proj · L_proj + λ_β ‖β‖² + λ_ψ ‖ψ‖²

* ``L_SC``: the ring loss (:func:`~morphable.losses.consistency.ring_loss`) over rings of R = K + 1: a
  group's K shapes and the first shape of the next group (:func:`~morphable.train.data.sampler.rings`);
* ``L_proj``: the L1 norm of the 2D distances between the decoded 68 landmarks (static points and the
  pose-dependent jawline, :class:`~morphable.nets.ringnet.RingNetDecoder`) and the labelled ones, weighted by
  visibility and label validity (:func:`~morphable.losses.landmark.landmark_loss`), in crop coordinates scaled
  to [−1, 1] (as HMR and RingNet normalise keypoints);
* priors on the shape β and expression ψ (:func:`~morphable.losses.prior.prior_loss`).

Defaults are the paper's (Sec. 5, implementation details): R = 6, η = 0.5, λ_SC = 1, λ_proj = 60,
λ_β = λ_ψ = 1e-4, Adam with a constant learning rate of 1e-4, IEF with 3 iterations of 2 × FC-512.

Data (all cached as the trunk's frozen pass, so a step runs only the tuned blocks, the regressor and the
decoder):

* **synthetic identity groups** (``data.synthetic_identities`` × ``data.synthetic_images``): one identity,
  each image with its own pose (yaw up to ±``data.max_yaw_deg``), expression, lights and background
  (:mod:`~morphable.train.chip_render`), rendered straight into the crop a photo of it would give
  (:class:`CropRenderer`), with crop jitter; the labelled landmarks are the model's, jawline on the
  silhouette;
* **real photos** (``data.real``: comma-separated folders from ``morphable data prepare``): ``data.crops``
  jittered crops per face; faces with an identity label are grouped by it, the others are groups of one
  whose ring mates are other crops of the same photo (the paper's trick); landmarks from a file weigh 1,
  dlib-detected ones ``data.detected_landmark_weight`` (:func:`~morphable.train.data.adapters.label_flags`).

Deviations, with reasons: dlib's recognition ResNet (frozen but for ``net.finetune_blocks``) instead of an
ImageNet ResNet-50 fine-tuned end to end (what we ship, and a CPU can train it); the ring loss is averaged
rather than summed over pairs (λ_SC independent of R and P); optional ``loss.lambda_param`` supervises
synthetic images' shape, expression and pose directly (0 = the paper; useful when real identity-labelled
data are few, as on this machine).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import matrix_to_axis_angle
from morphable.losses.consistency import ring_loss
from morphable.losses.landmark import landmark_loss
from morphable.losses.prior import prior_loss
from morphable.nets.ringnet import (
    CROP_SCALE,
    CROP_SIZE,
    TAPS,
    FrozenPass,
    RingNet,
    TRUNKS,
    RingNetDecoder,
    face_crop,
    landmark_box,
    new_ringnet,
    save_ringnet,
)
from morphable.train.chip_render import ChipRenderer, random_background, random_lighting, random_rotation
from morphable.train.config import ConfigError, OptimConfig, ScheduleConfig, TrainConfig
from morphable.train.data.cache import cache_root, cached, settings_key
from morphable.train.data.sampler import IdentitySampler, rings
from morphable.train.recipes.base import Recipe, frozen_model


@dataclass(frozen=True)
class ModelSection:
    """name: the morphable model (registry name or file)."""

    name: str = "ict"


@dataclass(frozen=True)
class DataSection:
    """real: comma-separated prepared datasets ("" = synthetic only); crops: jittered crops per real face;
    synthetic_identities × synthetic_images: synthetic groups for training; synthetic_val_identities: held-out
    groups (same number of images); max_yaw_deg, max_pitch_deg, expression_scale: synthetic poses and
    expressions; jitter_scale: crop side × exp(U(−j, j)); jitter_shift: centre moved by U(−j, j) × side;
    detected_landmark_weight: projection-loss weight of dlib-detected (not annotated) landmarks; cache: folder
    for cached frozen passes ("" = ``$MORPHABLE_HOME/train-cache``); chunk: images per trunk call."""

    real: str = ""
    crops: int = 6
    synthetic_identities: int = 300
    synthetic_images: int = 6
    synthetic_val_identities: int = 16
    max_yaw_deg: float = 80.0
    max_pitch_deg: float = 20.0
    expression_scale: float = 0.5
    jitter_scale: float = 0.1
    jitter_shift: float = 0.06
    detected_landmark_weight: float = 0.5
    cache: str = ""
    chunk: int = 16


@dataclass(frozen=True)
class RingSection:
    """identities: P rings per batch; size: R ring elements (R − 1 images of one person + 1 of another;
    paper: 6)."""

    identities: int = 4
    size: int = 6


@dataclass(frozen=True)
class LossSection:
    """Paper's weights (Sanyal et al. 2019, Sec. 5): lambda_sc = 1, lambda_proj = 60, lambda_shape =
    lambda_expression = 1e-4, margin η = 0.5; lambda_param: synthetic-parameter supervision (not in the
    paper; 0 = off)."""

    lambda_sc: float = 1.0
    lambda_proj: float = 60.0
    lambda_shape: float = 1e-4
    lambda_expression: float = 1e-4
    margin: float = 0.5
    lambda_param: float = 0.0


@dataclass(frozen=True)
class NetSection:
    """trunk: ``dlib`` (the frozen face-recognition ResNet, cached per crop) or ``small`` (a CNN trained from
    scratch on 64 px crops, :class:`~morphable.nets.ringnet.SmallTrunk`, a few ms per face on a CPU);
    finetune_blocks: trainable last residual blocks of dlib's trunk (0–4); hidden / iterations: the IEF
    regressor (paper: 512 / 3); dropout after each hidden layer (the paper names dropout without a rate;
    0.5 as in HMR); brightness: small-trunk training multiplies each crop by exp(U(−b, b)) per channel
    (colour and exposure augmentation; the cached crops are fixed)."""

    trunk: str = "dlib"
    finetune_blocks: int = 0
    hidden: int = 512
    iterations: int = 3
    dropout: float = 0.5
    brightness: float = 0.2


@dataclass(frozen=True)
class RingNetConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    ring: RingSection = RingSection()
    loss: LossSection = LossSection()
    net: NetSection = NetSection()
    # "We train RingNet for 10 epochs with a constant learning rate of 1e-4 and use Adam" (Sec. 5)
    optim: OptimConfig = OptimConfig(name="adam", lr=1e-4)
    schedule: ScheduleConfig = ScheduleConfig(name="constant")
    train: TrainConfig = TrainConfig(steps=3000, log_every=25, val_every=500, checkpoint_every=250)


class CropRenderer(ChipRenderer):
    """A :class:`ChipRenderer` whose camera frames the face as RingNet's crop rule frames a photo
    (:func:`~morphable.nets.ringnet.landmark_box` of the projected landmarks, with a jitter set by
    :meth:`render`) instead of aligning it onto dlib's template."""

    jitter: Tensor | None = None

    def camera(self, vertices: Tensor, rotation: Tensor) -> ScaledOrthographic:
        lm = self.model.landmarks(vertices)[:, self.model.landmark_mask] @ rotation.transpose(1, 2)
        q = torch.stack([lm[..., 0], -lm[..., 1]], -1)  # view frame at 1 px per mm, y down
        box = landmark_box(q, CROP_SCALE, self.jitter)
        factor = self.size / (box[:, 2] - box[:, 0])
        origin = box[:, :2] + 0.5 / factor[:, None] - 0.5  # as face_crop places a photo's crop
        return ScaledOrthographic(factor, matrix_to_axis_angle(rotation), -origin * factor[:, None])

    def render(self, vertices: Tensor, rotation: Tensor, jitter: Tensor, *args) -> tuple[Tensor, ScaledOrthographic]:
        """Crops ``(B, S, S, 3)`` (see :meth:`ChipRenderer.__call__` for ``args``) and their cameras."""
        self.jitter = jitter
        try:
            return self(vertices, rotation, *args), self.camera(vertices, rotation)
        finally:
            self.jitter = None


def _frozen_rows(net: RingNet, crops: Tensor, chunk: int) -> dict[str, Tensor]:
    """What training caches of ``crops`` ``(N, 150, 150, 3)``: for the dlib trunk its frozen pass as float16
    arrays ``tap<k>`` and ``boundary``; for the small trunk the crops resampled to its input size
    (:func:`~morphable.nets.ringnet.face_crop` of the whole crop, the filter photos get), uint8 ``crops``."""
    if net.trunk_name == "small":
        whole = torch.tensor([0.0, 0.0, CROP_SIZE, CROP_SIZE])
        small = torch.stack([face_crop(c, whole, net.input_size)[0] for c in crops])
        return {"crops": (small * 255).round().clamp(0, 255).to(torch.uint8)}
    parts: dict[str, list[Tensor]] = {}
    for i in range(0, len(crops), chunk):
        fp = net.trunk.frozen(crops[i:i + chunk])
        for k, v in {**{f"tap{k}": t for k, t in fp.taps.items()}, "boundary": fp.boundary}.items():
            parts.setdefault(k, []).append(v.contiguous().half())
    return {k: torch.cat(v) for k, v in parts.items()}


class RingNetRecipe(Recipe):
    """The recipe (see the module docstring)."""

    name = "ringnet"
    Config = RingNetConfig

    def __init__(self, config: RingNetConfig, run_dir: Path):
        super().__init__(config, run_dir)

        cfg = config
        if cfg.ring.size < 3:
            raise ConfigError("ring.size", f"R − 1 ≥ 2 images of one person and one of another are needed, got "
                                           f"R = {cfg.ring.size}")
        self.face_model, self.model_label = frozen_model(cfg.model.name)
        if cfg.net.trunk not in TRUNKS:
            raise ConfigError("net.trunk", f"must be one of {', '.join(TRUNKS)}, got {cfg.net.trunk!r}")
        if cfg.net.trunk == "small" and cfg.net.finetune_blocks:
            raise ConfigError("net.finetune_blocks", "applies to the dlib trunk only (net.trunk=small trains all)")
        self.net = new_ringnet(self.face_model, self.model_label, trunk=cfg.net.trunk,
                               finetune_blocks=cfg.net.finetune_blocks, hidden=cfg.net.hidden,
                               iterations=cfg.net.iterations, dropout=cfg.net.dropout)
        self.decoder = RingNetDecoder(self.face_model)
        self.renderer = CropRenderer(self.face_model, size=CROP_SIZE)
        from morphable.train.recipes.genova import drawn_albedo_space

        self.albedo_space = drawn_albedo_space(self.renderer, 8)
        from morphable.train import distributed

        world = distributed.world_size()
        if cfg.ring.identities < 2 * world:
            raise ConfigError("ring.identities", f"each ring needs another person in its process's share: P must be "
                                                 f"at least 2 per process ({2 * world} for {world}), got "
                                                 f"{cfg.ring.identities}")
        K = cfg.ring.size - 1
        train = self._synthetic("train", cfg.data.synthetic_identities, seed=cfg.train.seed * 2 + 1)
        self.val = self._synthetic("val", cfg.data.synthetic_val_identities, seed=cfg.train.seed * 2 + 2)
        real = self._real()
        self.rows, labels, self.start, self.count = self._merge(train, real)
        self.n_synthetic = len(train["landmarks"])
        self.synthetic_truth = {k: train[k] for k in ("shape", "expression", "rotation", "camera")}
        # the sampler's groups: one per labelled identity, one per unlabelled image (its crops are its mates)
        groups = len({label for label in labels if label is not None}) + sum(label is None for label in labels)
        if cfg.ring.identities > groups:
            raise ConfigError("ring.identities", f"{cfg.ring.identities} identities per batch, but the data has only "
                                                 f"{groups} (synthetic groups + labelled people)")
        self.sampler = IdentitySampler(labels, cfg.ring.identities, K, variants=max(cfg.data.crops, 1))
        if cfg.net.trunk == "dlib":
            with torch.no_grad():
                n = len(self.rows["landmarks"])
                pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:2000]
                self.net.set_feature_statistics(self.net.trunk.tuned(self._frozen(self.rows, pick)).float())

    # ----------------------------------------------------------------------------------------- data
    def _synthetic(self, split: str, identities: int, seed: int) -> dict[str, Tensor]:
        cfg = self.config
        d = cfg.data
        settings = dict(split=split, seed=seed, model=cfg.model.name, V=self.face_model.n_vertices,
                        identities=identities, images=d.synthetic_images, yaw=d.max_yaw_deg, pitch=d.max_pitch_deg,
                        expr=d.expression_scale, js=d.jitter_scale, jt=d.jitter_shift, tuned=cfg.net.finetune_blocks,
                        crop=CROP_SIZE, scale=CROP_SCALE, version=1, **self._trunk_key())
        key = settings_key(settings)
        return cached(cache_root(cfg.data.cache) / f"ringnet-synthetic-{key}.pt",
                       lambda: self._make_synthetic(identities, torch.Generator().manual_seed(seed)))

    def _trunk_key(self) -> dict:
        """Cache-key entries of the trunk and of ``face_crop``'s filter (``resampler`` 4: the separable
        triangle with block means, a uint8 photo's rounded once; caches made with an earlier crop are not
        reused)."""
        if self.config.net.trunk == "dlib":
            return {"resampler": 4}
        return {"trunk": "small", "size": self.net.input_size, "resampler": 4}

    def _jitter(self, n: int, g: torch.Generator) -> Tensor:
        d = self.config.data
        u = 2 * torch.rand(n, 3, generator=g) - 1
        return u * torch.tensor([d.jitter_scale, d.jitter_shift, d.jitter_shift])

    def _make_synthetic(self, identities: int, g: torch.Generator) -> dict[str, Tensor]:
        """Synthetic identity groups: one identity per group, every image its own pose, expression, lights,
        background and crop jitter; the frozen pass, labelled landmarks and true parameters of each."""
        from tqdm import tqdm

        cfg, m = self.config, self.face_model
        n_img = cfg.data.synthetic_images
        K, E = self.net.layout.sizeof("shape"), self.net.layout.sizeof("expression")
        out: dict[str, list[Tensor]] = {}
        for _ in tqdm(range(identities), desc="synthetic identity groups", unit="group", disable=identities < 8):
            shape = torch.randn(1, K, generator=g).expand(n_img, -1)
            expr = torch.zeros(n_img, E)
            if E:
                if m.expression_kind == "blendshapes":
                    for b in range(n_img):
                        active = torch.randperm(E, generator=g)[:3]
                        expr[b, active] = cfg.data.expression_scale * torch.rand(3, generator=g)
                else:
                    expr = cfg.data.expression_scale * torch.randn(n_img, E, generator=g)
            rotation = random_rotation(n_img, g, max_yaw_deg=cfg.data.max_yaw_deg, max_pitch_deg=cfg.data.max_pitch_deg)
            albedo = self.albedo_space(torch.randn(1, self.albedo_space.size, generator=g)).expand(n_img, -1, -1)
            lights = random_lighting(n_img, g)
            background = random_background(n_img, g, size=CROP_SIZE)
            with torch.no_grad():
                vertices = m(identity=shape, expression=expr if E else None).vertices
                crops, camera = self.renderer.render(vertices, rotation, self._jitter(n_img, g), albedo, lights,
                                                     background)
                crops = (crops + 0.01 * torch.randn(crops.shape, generator=g)).clamp(0, 1)
                params = {"shape": shape, "expression": expr}
                landmarks = self.decoder.landmarks(params, camera)
            row = {**_frozen_rows(self.net, crops, cfg.data.chunk), "landmarks": landmarks, "shape": shape.clone(),
                   "expression": expr, "rotation": camera.rotation,
                   "camera": torch.cat([torch.log(camera.scale / self.net.scale0)[:, None],
                                        (camera.translation - self.net.centre0) / (CROP_SIZE / 2)], 1),
                   "weight": torch.ones(n_img), "synthetic": torch.ones(n_img, dtype=torch.bool)}
            for k, v in row.items():
                out.setdefault(k, []).append(v)
        data = {k: torch.cat(v) for k, v in out.items()}
        data["group"] = torch.arange(identities).repeat_interleave(n_img)
        return data

    def _real(self) -> list[tuple[dict[str, Tensor], list[str | None]]]:
        """Per prepared dataset: ``data.crops`` jittered crops of every face (rows ``item · crops + c``) and the
        faces' identity labels."""
        cfg = self.config
        out = []
        for folder in filter(None, (f.strip() for f in cfg.data.real.split(","))):
            from morphable.train.data.manifest import read_manifest

            items = read_manifest(Path(folder) / "manifest.jsonl")
            settings = dict(keys=[i.key for i in items], crops=cfg.data.crops, js=cfg.data.jitter_scale,
                            jt=cfg.data.jitter_shift, tuned=cfg.net.finetune_blocks, seed=cfg.train.seed,
                            w=cfg.data.detected_landmark_weight, version=1, **self._trunk_key())
            key = settings_key(settings)
            data = cached(cache_root(cfg.data.cache) / f"ringnet-real-{key}.pt", lambda: self._make_real(items))
            label = f"{folder}:" if len(cfg.data.real.split(",")) > 1 else ""
            out.append((data, [None if i.identity is None else label + i.identity for i in items]))
        return out

    def _make_real(self, items) -> dict[str, Tensor]:
        from morphable.io.image import read_image
        from morphable.train.data.adapters import label_flags

        cfg = self.config
        g = torch.Generator().manual_seed(cfg.train.seed + 17)
        M = cfg.data.crops
        crops, landmarks, weight = [], [], []
        for item in items:
            image = torch.from_numpy(np.require(read_image(item.path), requirements="W"))  # uint8, as inference reads
            lm = torch.as_tensor(item.landmarks, dtype=torch.float32)[None]
            jitter = self._jitter(M, g)
            jitter[0] = 0.0  # the first crop is the plain crop rule's
            boxes = landmark_box(lm.expand(M, -1, -1), CROP_SCALE, jitter)
            for b in boxes:
                crop, frame = face_crop(image, b)
                crops.append(crop)
                landmarks.append(frame.to_crop(lm)[0])
            w = 1.0 if label_flags(item).landmarks else cfg.data.detected_landmark_weight
            weight += [w] * M
        with torch.no_grad():
            data = _frozen_rows(self.net, torch.stack(crops), cfg.data.chunk)
        return {**data, "landmarks": torch.stack(landmarks), "weight": torch.tensor(weight)}

    def _merge(self, synthetic: dict[str, Tensor], real: list) -> tuple[dict[str, Tensor], list, Tensor, Tensor]:
        """One table of crop rows; per sampled item its first row and row count (1 synthetic, ``crops`` real)."""
        M = self.config.data.crops
        inputs = ("crops",) if "crops" in synthetic else ("boundary", *(f"tap{k}" for k in TAPS if f"tap{k}" in synthetic))
        rows = {k: [synthetic[k]] for k in ("landmarks", "weight", *inputs)}
        n_syn = len(synthetic["landmarks"])
        labels: list = [f"synthetic:{int(i)}" for i in synthetic["group"]]
        start = list(range(n_syn))
        count = [1] * n_syn
        offset = n_syn
        for data, item_labels in real:
            for k in rows:
                rows[k].append(data[k])
            for i, label in enumerate(item_labels):
                labels.append(label)
                start.append(offset + i * M)
                count.append(M)
            offset += len(item_labels) * M
        return {k: torch.cat(v) for k, v in rows.items()}, labels, torch.tensor(start), torch.tensor(count)

    @staticmethod
    def _frozen(rows: dict[str, Tensor], index: Tensor) -> FrozenPass:
        taps = {k: rows[f"tap{k}"][index].float() for k in TAPS if f"tap{k}" in rows}
        return FrozenPass(taps, rows["boundary"][index].float().contiguous(memory_format=torch.channels_last))

    # --------------------------------------------------------------------------------------- recipe
    def model(self) -> nn.Module:
        return self.net

    def batch(self, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``rows`` ``(P, K)`` crop rows, ``items`` ``(P, K)`` sampled items (synthetic ones first in the item
        order), ``synthetic`` ``(P, K)`` bool, and for the small trunk ``gain`` ``(P · K, 1, 1, 3)`` (its
        brightness augmentation)."""
        items, variants = self.sampler.draw(generator)
        rows = self.start[items] + variants % self.count[items]
        out = {"rows": rows, "items": items, "synthetic": items < self.n_synthetic}
        b = self.config.net.brightness
        if "crops" in self.rows and b > 0:
            out["gain"] = torch.exp(b * (2 * torch.rand(rows.numel(), 1, 1, 3, generator=generator) - 1))
        return out

    def _regress(self, rows: dict[str, Tensor], index: Tensor, gain: Tensor | None = None) -> dict[str, Tensor]:
        """The network on cached rows; small-trunk crops are multiplied by ``gain`` ``(N, 1, 1, 3)`` if given."""
        if "crops" not in rows:
            return self.net.regress(self.net.trunk.tuned(self._frozen(rows, index)))
        crops = rows["crops"][index].float() / 255
        if gain is not None:
            crops = (crops * gain).clamp(0, 1)
        return self.net(crops)

    def loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        cfg = self.config
        P, K = batch["rows"].shape
        flat = batch["rows"].reshape(-1)
        params = self._regress(self.rows, flat, batch.get("gain"))
        camera = self.net.camera(params)
        target = self.rows["landmarks"][flat]
        pred = self.decoder.landmarks(params, camera, target)
        weights = self.rows["weight"][flat][:, None] * self.face_model.landmark_mask[None].to(pred)
        c, half = (CROP_SIZE - 1) / 2, CROP_SIZE / 2
        l_proj = landmark_loss((pred - c) / half, (target - c) / half, weights)
        l_sc = ring_loss(rings(params["shape"].reshape(P, K, -1)), margin=cfg.loss.margin)
        l_shape = prior_loss(params["shape"])
        l_expr = prior_loss(params["expression"]) if params["expression"].shape[1] else l_shape.new_zeros(())
        total = (cfg.loss.lambda_sc * l_sc + cfg.loss.lambda_proj * l_proj + cfg.loss.lambda_shape * l_shape
                 + cfg.loss.lambda_expression * l_expr)
        terms = {"ring": l_sc, "projection": l_proj, "shape_prior": l_shape, "expression_prior": l_expr}
        if cfg.loss.lambda_param > 0:
            l_param = self._param_loss(params, batch)
            total = total + cfg.loss.lambda_param * l_param
            terms["param"] = l_param
        terms["loss"] = total
        return terms

    def _param_loss(self, params: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Mean squared error of shape, expression, rotation and camera on the batch's synthetic images."""
        syn = batch["synthetic"].reshape(-1)
        if not syn.any():
            return params["shape"].new_zeros(())
        ids = batch["items"].reshape(-1)[syn]
        truth = self.synthetic_truth
        return sum(((params[k][syn] - truth[k][ids]) ** 2).mean() for k in ("shape", "expression", "rotation", "camera"))

    # ----------------------------------------------------------------------------------- validation
    def validate(self, step: int) -> dict[str, float]:
        """Held-out synthetic groups: inner-51 landmark NME (outer-eye-corner normalised), shape coefficient
        RMSE, face-region vertex error of the neutral shape (mm; and the mean face's), rotation error (°),
        and the share of held-out rings whose constraint ``‖βj − βk‖² + η ≤ ‖βj − βR‖²`` holds."""
        from morphable.geometry.rotation import axis_angle_to_matrix

        v = self.val
        was = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                index = torch.arange(len(v["landmarks"]))
                params = self._regress(v, index)
                camera = self.net.camera(params)
                pred = self.decoder.landmarks(params, camera)
        finally:
            self.net.train(was)
        gt = v["landmarks"]
        eye = (gt[:, 36] - gt[:, 45]).norm(dim=-1)
        inner = [i for i in range(17, 68) if self.face_model.landmark_mask[i]]
        nme = ((pred[:, inner] - gt[:, inner]).norm(dim=-1).mean(-1) / eye).mean()
        ids = self.face_model.region_ids("face")
        Vp = self.face_model(identity=params["shape"]).vertices[:, ids]
        Vt = self.face_model(identity=v["shape"]).vertices[:, ids]
        R = axis_angle_to_matrix(params["rotation"]) @ axis_angle_to_matrix(v["rotation"]).transpose(1, 2)
        angle = torch.rad2deg(torch.arccos(((R.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
        n_img = self.config.data.synthetic_images
        shapes = params["shape"].reshape(-1, n_img, params["shape"].shape[1])
        ring = rings(shapes[:, : min(n_img, self.config.ring.size - 1)])
        d_same = (ring[:, :-1, None] - ring[:, None, :-1]).pow(2).sum(-1)
        d_other = (ring[:, :-1] - ring[:, -1:]).pow(2).sum(-1)
        off = ~torch.eye(ring.shape[1] - 1, dtype=torch.bool)
        held = (d_same + self.config.loss.margin <= d_other[:, :, None])[:, off].float().mean()
        return {"nme_inner51": float(nme), "shape_rmse": float((params["shape"] - v["shape"]).pow(2).mean().sqrt()),
                "vertex_mm": float((Vp - Vt).norm(dim=-1).mean()),
                "mean_face_mm": float((self.face_model.mean[ids][None] - Vt).norm(dim=-1).mean()),
                "rotation_deg": float(angle.mean()), "ring_satisfied": float(held)}

    def finish(self, run_dir: Path) -> None:
        """Export ``RUN/ringnet-<model>.pt`` (with the command, resolved config and final metrics) and
        ``summary.json``."""
        metrics = self.validate(self.config.train.steps)
        meta = self.provenance(run_dir, metrics)
        save_ringnet(self.net, Path(run_dir) / f"ringnet-{self.model_label}.pt", meta)
        with open(Path(run_dir) / "summary.json", "w") as f:
            json.dump({"metrics": metrics}, f, indent=2)
