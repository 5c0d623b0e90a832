"""CoarseNet training (Guo, Zhang et al., TPAMI 2018; seed ``zhang-deep-3d-face-modeling.txt``):
``morphable train coarse -o RUN`` trains :class:`~morphable.nets.coarse.CoarseNet` on photo-realistic
inverse-rendered chips (:mod:`morphable.train.inverse_rendered`) with

* a **parameter loss**: per block of the output layout (pose, scale, identity, expression, albedo, light),
  the mean squared difference of the standardised prediction and ground truth, summed over the blocks
  (each block weighs the same whatever its length or units);
* a **rendered photometric loss**: the predicted face (geometry, chip camera, smooth albedo, SH light)
  rendered by our differentiable renderer over the input chip, and the seed's
  E_con = 1/|P| Σ_p ‖C_S(p) − C_I(p)‖ (the robust L2,1 form of
  :func:`~morphable.losses.photometric.photometric_loss`)
  over the rendered face pixels;
* a **shape loss** (model-space vertex distance, mm) and a **landmark reprojection loss** (chip px), both
  geometric: see :class:`LossSection`.

With a refining second stage (``model.refine_blocks``, :class:`~morphable.nets.heads.PointRefiner`), the refined
output gets all four terms and the first stage (and each middle stage, with ``model.refine_stages`` > 1) its own
parameter, shape and landmark terms (one render per step, of the last output); a stage never moves the ones before
it (it reads their estimate without the gradient).
``model.init`` with ``model.freeze_first`` trains a refiner alone on a trained network.

Data: the training variants come from :data:`~morphable.train.inverse_rendered.TRAIN_PHOTOS` except every
eighth photo, whose variants are the validation set (so validation never sees a training photo); the
benchmark's held-out photos are never loaded here. First run: about 75 photometric fits (~3–8 s each on
one thread) and the variants are cached (``data.cache``); later runs read them.

Defaults: the seed names CoarseNet but gives no architecture, loss weights or schedule for it. Ours, and
why: a 96 px chip and a small CNN trained from scratch (≤ 5 ms per face on two CPU threads,
:mod:`morphable.nets.coarse`); 64 variants of 58 photos (what our corpus allows after the held-out split;
the variants add pose, expression, light and identity jitter, and training draws new faces over them every
step, each identity about a random training photo's fit: ``data.identity_from``, benchmark 4.58 → 4.34 mm);
Adam at 1e-3 with a cosine schedule and 4000 steps of 32 chips (``docs/coarse.md``: with the
flattened head the validation error fell from 4.80 mm at 2000 steps to 4.65 mm at 4000; with the older pooled
head it had been flat after ~1000 steps), about 20 minutes on one quiet CPU thread; photometric weight 1 after a
parameter-only start (:class:`LossSection`): E_con is ~0.3 against a parameter loss of ~5, a refinement of
the parameter loss, not a replacement.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from morphable.geometry.align import aligned_error
from morphable.losses.photometric import photometric_loss
from morphable.nets.coarse import (ALBEDO_MODES, FROZEN, HEADS, TRUNKS, CoarseNet, albedo_basis, coarse_layout,
                                   decode, encode, load_coarse, project_albedo, refine_header, round_to_stored,
                                   save_coarse)
from morphable.nets.encoders import DlibMapTrunk, check_trunk_precision
from morphable.render.renderer import Renderer
from morphable.train.config import OptimConfig, ScheduleConfig, TrainConfig
from morphable.train.data.cache import cache_root
from morphable.train.inverse_rendered import (TRAIN_PHOTOS, VariantSettings, build_set, draw_occluders,
                                              draw_variant, occlude, place_faces, region_triangles)
from morphable.train.recipes.base import Recipe, evaluating, frozen_model


@dataclass(frozen=True)
class ModelSection:
    """name: the morphable model (``sfm``: 3 448 vertices, 8× cheaper to render than ICT's face; see
    ``docs/coarse.md``); albedo_modes: M, the smooth albedo modes the net regresses; head: how the last
    feature map reaches the output layers (:data:`~morphable.nets.coarse.HEADS`); trunk: the feature extractor
    (:data:`~morphable.nets.coarse.TRUNKS`; ``dlib`` wants ``data.variant.size=150``, its chip side, and reads
    the map after ``blocks`` residual blocks, the last ``tune`` fine-tuned); hidden: the hidden layer's width.
    refine_blocks: > 0 adds the second, refining stage (dlib trunk only; :class:`~morphable.nets.heads.PointRefiner`:
    dlib's map after this many blocks, the last ``refine_tune`` fine-tuned, sampled at the first estimate's
    projected landmarks, into a ``refine_hidden``-wide perceptron; ``refine_stages`` such perceptrons in cascade,
    each sampling the map where the previous estimate puts the landmarks); init: a CoarseNet file (or shipped name)
    whose weights start the run (a refining run from a trained one-stage network: its first stage, the refiner
    starting as the identity; or from a refiner with fewer stages, the new ones starting as the identity);
    freeze_first: the first stage does not train (only the refiner does); precision: the dlib trunks' convolutions
    in training and validation (:data:`~morphable.identity.dlib_resnet.PRECISIONS`; ``bfloat16`` or ``auto`` where
    the CPU has it natively: mixed precision, the parameters stay float32, about 1.35× the steps per second of
    ``float32`` for the shipped network's configuration, ``docs/coarse.md``)."""

    name: str = "sfm"
    albedo_modes: int = ALBEDO_MODES
    head: str = "flatten"
    trunk: str = "small"
    hidden: int = 256
    blocks: int = 10
    tune: int = 5
    refine_blocks: int = 0
    refine_tune: int = 0
    refine_hidden: int = 256
    refine_stages: int = 1
    init: str = ""
    freeze_first: bool = False
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {', '.join(TRUNKS)}, got {self.trunk!r}")
        if self.hidden < 1 or self.refine_hidden < 1 or self.refine_stages < 1:
            raise ValueError(f"hidden, refine_hidden and refine_stages must be >= 1, got {self.hidden}, "
                             f"{self.refine_hidden}, {self.refine_stages}")
        if self.refine_blocks and self.trunk != "dlib":
            raise ValueError("refine_blocks needs trunk 'dlib'")
        if self.freeze_first and not self.refine_blocks:
            raise ValueError("freeze_first leaves nothing to train without refine_blocks")
        check_trunk_precision(self.precision, self.trunk)


IDENTITY_FROM = ("photo", "any")
"""Values of :attr:`DataSection.identity_from`."""


@dataclass(frozen=True)
class PhotoSetSection:
    """The inverse-rendered photo sets (this recipe's and the fine recipe's data sections build on it).
    variants: chips per training photo; val_variants: per validation photo; val_every_photo: every this
    many-th of :data:`TRAIN_PHOTOS` (from the last of each run of that length) is a validation photo; variant:
    how chips are re-rendered (:class:`~morphable.train.inverse_rendered.VariantSettings`, overridden as
    ``data.variant.max_yaw_deg=...``); cache: folder ("" = ``$MORPHABLE_HOME/train-cache``); photos: use only
    the first this many of :data:`TRAIN_PHOTOS` (0 = all)."""

    variants: int = 64
    val_variants: int = 16
    val_every_photo: int = 8
    variant: VariantSettings = VariantSettings()
    cache: str = ""
    photos: int = 0

    def __post_init__(self) -> None:
        if self.variants < 1 or self.val_variants < 1:
            raise ValueError(f"variants and val_variants must be >= 1, got {self.variants}, {self.val_variants}")
        if self.val_every_photo < 2:
            raise ValueError(f"val_every_photo must be >= 2, got {self.val_every_photo}")
        if self.photos < 0:
            raise ValueError(f"photos must be >= 0 (0 = all), got {self.photos}")


@dataclass(frozen=True)
class DataSection(PhotoSetSection):
    """:class:`PhotoSetSection`, and online: every training chip is drawn afresh at each step (new pose,
    identity, expression, light and shift rendered over a cached chip's inpainted background,
    :func:`~morphable.train.inverse_rendered.place_faces`) instead of read from the cached variants;
    identity_from: online, whose fitted identity a new face's identity jitters about: ``photo``, the chip's own
    photo's, or ``any``, a training photo drawn at random, so that no texture tells its identity (the network
    cannot learn the training photos' identities by their look and must read the shape); occlusion: the
    probability that a training chip gets an occluder, a rectangle of 20–50 % of the chip side near its
    centre filled with another chip's background (:func:`~morphable.train.inverse_rendered.draw_occluders`;
    the seed's "data augmentation ... occlusion"); albedo_mix: online, the probability that a new face's albedo is
    a blend of its photo's fitted albedo and a random training photo's, ``(1 − w) A_p + w A_q`` with ``w`` uniform
    in [0, 1] (per-vertex albedos on one mesh blend feature by feature: new skin, brows and lips over the same
    background, so that the network sees more textures than the training photos have; its target albedo is the
    blend's)."""

    online: bool = True
    identity_from: str = "any"
    occlusion: float = 0.0
    albedo_mix: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.identity_from not in IDENTITY_FROM:
            raise ValueError(f"identity_from must be one of {', '.join(IDENTITY_FROM)}, got {self.identity_from!r}")
        if not 0 <= self.occlusion <= 1:
            raise ValueError(f"occlusion must be a probability in [0, 1], got {self.occlusion}")
        if not 0 <= self.albedo_mix <= 1:
            raise ValueError(f"albedo_mix must be a probability in [0, 1], got {self.albedo_mix}")
        if self.albedo_mix > 0 and not self.online:
            raise ValueError("albedo_mix blends online faces' albedos; it needs data.online=true")


@dataclass(frozen=True)
class LossSection:
    """param: weight of the parameter loss; photometric: of the rendered E_con, reached linearly from 0 between
    steps ``photometric_start`` and ``photometric_start + photometric_ramp`` (with the term on from step 1, the global
    gradient norm rose to hundreds within 250 steps, against ~5 for the parameter loss alone, and with
    gradient clipping the net stopped learning: the renderer's gradients on an untrained net's predictions);
    batch: chips per step; shape: weight of the shape loss, the mean distance (mm) between the predicted and the
    true model-space vertices (identity and expression; pose excluded), which weights the coefficients by what
    they move instead of equally (``docs/coarse.md``: with it the benchmark's error fell from 5.84 to 4.84 mm);
    landmarks: weight of the landmark reprojection loss, the mean distance (chip px) between the model's
    landmarks projected by the predicted and by the true parameters (pose and shape together, what the
    photometric fit's landmark term constrains)."""

    param: float = 1.0
    shape: float = 1.0
    photometric: float = 1.0
    photometric_start: int = 1000
    photometric_ramp: int = 500
    batch: int = 32
    landmarks: float = 1.0

    def __post_init__(self) -> None:
        if self.photometric_start < 0 or self.photometric_ramp < 0:
            raise ValueError("photometric_start and photometric_ramp must be >= 0, got "
                             f"{self.photometric_start}, {self.photometric_ramp}")


@dataclass(frozen=True)
class CoarseConfig:
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    loss: LossSection = LossSection()
    optim: OptimConfig = OptimConfig(name="adam", lr=1e-3, grad_clip=10.0)
    schedule: ScheduleConfig = ScheduleConfig(name="cosine", warmup_steps=100, min_lr_ratio=0.02)
    train: TrainConfig = TrainConfig(steps=4000, log_every=25, val_every=500, checkpoint_every=250, image_every=1000)


def stage_prefix(k: int, n: int) -> str:
    """The prefix of stage ``k``'s (0-based) loss terms and metrics among ``n``: none for the last (the network's
    output), ``first_`` for a refining network's first stage, ``stage<k + 1>_`` for a middle one."""
    return "" if k == n - 1 else "first_" if k == 0 else f"stage{k + 1}_"


def split_photos(photos: tuple[str, ...], every: int, limit: int = 0) -> tuple[list[str], list[str]]:
    """(training, validation) photos: every ``every``-th photo (indices ``every − 1``, ``2 every − 1``, …) is a
    validation photo; ``limit`` > 0 keeps the first ``limit`` photos (tests, quick runs)."""
    photos = list(photos[:limit] if limit else photos)
    val = photos[every - 1::every]
    return [p for p in photos if p not in val], val


class CoarseRecipe(Recipe):
    """The recipe (see the module docstring)."""

    name = "coarse"
    Config = CoarseConfig

    def __init__(self, config: CoarseConfig, run_dir: Path):
        super().__init__(config, run_dir)
        cfg = config
        self.face_model, self.model_label = frozen_model(cfg.model.name)
        m = self.face_model
        self.layout = coarse_layout(m.n_identity, m.n_expression, cfg.model.albedo_modes)
        self.basis, self.region = albedo_basis(m, cfg.model.albedo_modes)
        self.size = cfg.data.variant.size
        self.renderer = Renderer(region_triangles(m, self.region), (self.size, self.size))
        train_photos, val_photos = split_photos(TRAIN_PHOTOS, cfg.data.val_every_photo, cfg.data.photos)
        settings, cache = cfg.data.variant, cache_root(cfg.data.cache)
        seed = cfg.train.seed
        self.train_set = self._prepare(build_set(m, cfg.model.name, train_photos, cfg.data.variants, 2 * seed + 1,
                                                 settings, name="train", cache=cache, progress=True))
        self.val_set = self._prepare(build_set(m, cfg.model.name, val_photos, cfg.data.val_variants, 2 * seed + 2,
                                               settings, name="val", cache=cache, progress=True))
        v = self.val_set
        self.val_truth = m(identity=v["identity"], expression=v["expression"]).vertices
        mean_face = m.mean[None].expand(len(self.val_truth), -1, -1)
        self.mean_face_err_mm = float(aligned_error(mean_face, self.val_truth).mean())
        mc = cfg.model
        self.net = CoarseNet(mc.name, self.layout, self.size, mc.head, mc.trunk, mc.hidden, mc.blocks, mc.tune,
                             refine_blocks=mc.refine_blocks, refine_tune=mc.refine_tune,
                             refine_hidden=mc.refine_hidden, refine_points=int(m.landmark_mask.sum()),
                             refine_stages=mc.refine_stages)
        if self.net.refiner is not None:
            self.net.set_landmarks(m)
        refiner_loaded = self._initialise(mc.init) if mc.init else False
        if not mc.init:
            if mc.trunk == "dlib":
                self._standardise_features(self.net.trunk)
            targets = self.train_set["targets"]
            self.net.mean.copy_(targets.mean(0))
            self.net.std.copy_(targets.std(0).clamp_min(1e-3))
        if self.net.refiner is not None and not refiner_loaded:
            self._standardise_features(self.net.refiner.trunk)
        self.net.set_precision(mc.precision)  # after the feature statistics, which are float32's
        if mc.freeze_first:
            for name, param in self.net.named_parameters():
                if not name.startswith("refiner."):
                    param.requires_grad_(False)

    def _initialise(self, name_or_path: str) -> bool:
        """Start from a CoarseNet file's weights: the same first stage (trunk, widths, layout, chip side), its
        refiner too where it has one (then True; the same map and widths, and no more stages than this run's:
        the stages it lacks start as the identity).

        Raises:
            ValueError: the file's network differs from this run's."""
        mine, theirs = self.net, load_coarse(name_or_path)
        same = (theirs.model_name == mine.model_name and theirs.size == mine.size
                and theirs.trunk_name == mine.trunk_name and theirs.hidden == mine.hidden
                and theirs.layout.blocks == mine.layout.blocks
                and (mine.trunk_name != "dlib" or (theirs.trunk.blocks, theirs.trunk.tune)
                     == (mine.trunk.blocks, mine.trunk.tune)))
        if not same:
            raise ValueError(f"model.init {name_or_path}: its first stage differs from this run's model settings")
        state = {k: v for k, v in theirs.state_dict().items() if not k.startswith(FROZEN)}
        # a one-stage file starts a refining run's first stage, its refiner starting as the identity; a refiner
        # with fewer stages starts the first ones, the others starting as the identity
        if theirs.refiner is None:
            allowed = FROZEN + ("refiner.", "landmark_")
        else:
            more = range(theirs.refiner.stages, mine.refiner.stages if mine.refiner is not None else 0)
            allowed = FROZEN + tuple(f"refiner.mlps.{k}." for k in more)
        differs = ValueError(f"model.init {name_or_path}: its refiner differs from this run's model settings")
        try:
            missing, unexpected = mine.load_state_dict(state, strict=False)
        except RuntimeError:  # a tensor of another shape
            raise differs from None
        if unexpected or any(not k.startswith(allowed) for k in missing):
            raise differs
        if theirs.refiner is not None:
            header = {**refine_header(theirs), "refine_stages": mine.refiner.stages if mine.refiner else 0}
            if header != refine_header(mine):
                raise differs
        return theirs.refiner is not None

    def _standardise_features(self, trunk: DlibMapTrunk, n: int = 1024) -> None:
        """A dlib trunk's feature statistics (its output's standardisation,
        :meth:`~morphable.nets.encoders.DlibMapTrunk.set_statistics`) over up to ``n`` training chips, through the
        tuned blocks' initial weights."""
        images = self.train_set["images"]
        pick = torch.linspace(0, len(images) - 1, min(n, len(images))).round().long()
        with torch.no_grad():
            trunk.set_statistics(torch.cat([trunk.lift(trunk.raw(images[pick[i:i + 64]].float() / 255))
                                            for i in range(0, len(pick), 64)]))

    def _prepare(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add ``targets`` ``(N, layout.size)`` (the flat ground truth) and ``albedo_coefficients`` per photo."""
        if not torch.equal(data["region_vertices"], self.region):
            raise ValueError("coarse recipe: the cached fits' region differs from the albedo basis's")
        coeffs = project_albedo(data["albedo"], self.basis)  # (P, 1 + M, 3)
        data["albedo_coefficients"] = coeffs
        data["targets"] = encode(self.layout, self.size, ypr=data["ypr"], translation=data["translation"],
                                 scale=data["scale"], identity=data["identity"], expression=data["expression"],
                                 albedo_coefficients=coeffs[data["photo"]], light=data["light"])
        return data

    # --------------------------------------------------------------------------------------- recipe
    def model(self) -> nn.Module:
        return self.net

    def batch(self, step: int, generator: torch.Generator) -> dict[str, Tensor]:
        """``index`` ``(loss.batch,)`` of training chips and, online, each one's new draws
        (:func:`~morphable.train.inverse_rendered.draw_variant`: ``ypr``, ``identity``, ``expression``, ``light``,
        ``shift``; the identity about the fit of ``data.identity_from``'s photo), with ``data.occlusion``
        ``occluder_on`` / ``occluder_box`` (:func:`~morphable.train.inverse_rendered.draw_occluders`), and with
        ``data.albedo_mix`` ``albedo_other`` (a training photo per chip) and ``albedo_weight`` (its albedo's weight
        ``w``, 0 where the chip keeps its own)."""
        data = self.train_set
        index = torch.randint(len(data["images"]), (self.config.loss.batch,), generator=generator)
        occluders = {}
        if self.config.data.occlusion > 0:
            occluders = {f"occluder_{k}": v for k, v in draw_occluders(
                len(index), self.size, generator, self.config.data.occlusion).items()}
        if not self.config.data.online:
            return {"index": index, **occluders}
        photos = data["photo"][index]
        identity_of = photos
        if self.config.data.identity_from == "any":
            identity_of = torch.randint(len(data["fit_identity"]), photos.shape, generator=generator)
        draws = [draw_variant(self.face_model, {"identity": data["fit_identity"][q], "light": data["fit_light"][p]},
                              generator, self.config.data.variant)
                 for p, q in zip(photos.tolist(), identity_of.tolist())]
        mix = {}
        if self.config.data.albedo_mix > 0:  # drawn last: runs without it draw what they always drew
            B = len(index)
            on = torch.rand(B, generator=generator) < self.config.data.albedo_mix
            mix = {"albedo_other": torch.randint(len(data["albedo"]), (B,), generator=generator),
                   "albedo_weight": torch.rand(B, generator=generator) * on}
        return {"index": index, **occluders, **mix, **{k: torch.stack([d[k] for d in draws])
                                                       for k in ("ypr", "identity", "expression", "light", "shift")}}

    def chips(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The batch's chips ``(B, S, S, 3)`` in [0, 1] and flat targets ``(B, layout.size)``: cached, or
        online the new faces rendered over the cached chips' backgrounds (rounded to 8 bits like the cache);
        with ``data.occlusion``, the batch's occluders drawn over them (filled from the next chip's
        background)."""
        images, targets = self._clean_chips(batch)
        if "occluder_on" not in batch:
            return images, targets
        fill = self.train_set["backgrounds"][batch["index"].roll(1)].float() / 255
        return occlude(images, {"on": batch["occluder_on"], "box": batch["occluder_box"]}, fill), targets

    def _clean_chips(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """:meth:`chips` before occlusion."""
        data, index = self.train_set, batch["index"]
        if not self.config.data.online:
            return data["images"][index].float() / 255, data["targets"][index]
        photo = data["photo"][index]
        albedo, coefficients = data["albedo"][photo], data["albedo_coefficients"][photo]
        if "albedo_weight" in batch:  # the blend's coefficients are the coefficients' blend (a linear projection)
            w, other = batch["albedo_weight"][:, None, None].to(albedo), batch["albedo_other"]
            albedo = torch.lerp(albedo, data["albedo"][other], w)
            coefficients = torch.lerp(coefficients, data["albedo_coefficients"][other], w)
        with torch.no_grad():
            out = place_faces(self.face_model, self.renderer, self.region, albedo,
                              data["backgrounds"][index].float() / 255, data["scale"][index], batch["ypr"],
                              batch["identity"], batch["expression"], batch["light"], batch["shift"])
        targets = encode(self.layout, self.size, ypr=batch["ypr"], translation=out["translation"],
                         scale=data["scale"][index], identity=batch["identity"], expression=batch["expression"],
                         albedo_coefficients=coefficients, light=batch["light"])
        return (out["images"] * 255).round() / 255, targets

    def terms(self, images: Tensor, targets: Tensor) -> tuple[dict[str, Tensor], list[Tensor], object]:
        """Loss terms for chips ``(B, S, S, 3)`` and their flat targets, the flat prediction after each stage
        (the last is the network's output) and the last one's render. The last stage's terms are unprefixed, the
        first stage's of a refining network ``first_*``, a middle refining stage's ``stage<k>_*`` (k from 2)."""
        m, defined = self.face_model, self.face_model.landmark_mask
        target = (targets - self.net.mean) / self.net.std
        truth = decode(self.layout, self.size, targets)
        true_full = m(identity=truth.identity, expression=truth.expression).vertices
        true_landmarks = truth.camera.project(m.landmarks(true_full))[:, defined]
        terms: dict[str, Tensor] = {}
        stages, ys = self.net.stages(images), []
        for k, raw in enumerate(stages):
            sq = (raw - target) ** 2
            blocks = {name: sq[:, self.layout.slice(name)].mean() for name in self.layout.names}
            y = self.net.mean + self.net.std * raw
            ys.append(y)
            p = decode(self.layout, self.size, y)
            full = m(identity=p.identity, expression=p.expression).vertices
            shape = (full - true_full).norm(dim=-1).mean()
            landmarks = (p.camera.project(m.landmarks(full))[:, defined] - true_landmarks).norm(dim=-1).mean()
            prefix = stage_prefix(k, len(stages))
            terms.update({f"{prefix}param": sum(blocks.values()), f"{prefix}shape_mm": shape,
                          f"{prefix}landmarks_px": landmarks, **{f"{prefix}param_{n}": v for n, v in blocks.items()}})
        albedo = self.basis.to(y) @ p.albedo_coefficients  # (B, V_r, 3), the last stage's
        rend = self.renderer(full[:, self.region], p.camera, colors=albedo, sh=p.light, background=images)
        terms["photometric"] = photometric_loss(rend.image, images, (rend.alpha > 0).to(images.dtype))
        return terms, ys, rend

    def loss(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        w = self.config.loss
        terms, _, _ = self.terms(*self.chips(batch))
        ramp = min(1.0, max(0.0, (step - w.photometric_start) / max(w.photometric_ramp, 1)))
        loss = (w.param * terms["param"] + ramp * w.photometric * terms["photometric"]
                + w.shape * terms["shape_mm"] + w.landmarks * terms["landmarks_px"])
        n = 1 + self.net.refiner.stages if self.net.refiner is not None else 1
        for k in range(1 if self.config.model.freeze_first else 0, n - 1):  # the earlier stages, each on its own
            prefix = stage_prefix(k, n)
            loss = loss + (w.param * terms[f"{prefix}param"] + w.shape * terms[f"{prefix}shape_mm"]
                           + w.landmarks * terms[f"{prefix}landmarks_px"])
        return {"loss": loss, **terms}

    # ----------------------------------------------------------------------------------- validation
    def predicted_vertices(self, y: Tensor) -> Tensor:
        """Full-model vertices ``(B, V, 3)`` of flat predictions ``y``."""
        p = self.layout.split(y)
        return self.face_model(identity=p["identity"], expression=p["expression"]).vertices

    def validate(self, step: int) -> dict[str, float]:
        """Held-out validation photos' chips: the loss terms, the vertex error (mm, after a similarity
        alignment; an earlier stage's prefixed as in :meth:`terms`) and the error of the mean face for scale, yaw
        error (degrees)."""
        data = self.val_set
        with torch.no_grad(), evaluating(self.net):
            terms, ys, _ = self.terms(data["images"].float() / 255, data["targets"])
            errors = {f"{stage_prefix(k, len(ys))}vertex_err_mm":
                      float(aligned_error(self.predicted_vertices(y), self.val_truth).mean()) for k, y in enumerate(ys)}
            yaw = (ys[-1][:, self.layout.slice("rotation")][:, 0] - data["ypr"][:, 0]).abs().rad2deg()
        return {**{k: float(v) for k, v in terms.items()}, **errors,
                "mean_face_err_mm": self.mean_face_err_mm, "yaw_err_deg": float(yaw.mean())}

    def image_grid(self, batch: dict[str, Tensor], step: int) -> Tensor | None:
        """Rows: validation chips, the prediction rendered over them."""
        from morphable.train.logging import tile_images

        index = torch.arange(0, len(self.val_set["images"]), max(1, len(self.val_set["images"]) // 8))[:8]
        chips = self.val_set["images"][index].float() / 255
        with torch.no_grad(), evaluating(self.net):
            _, _, rend = self.terms(chips, self.val_set["targets"][index])
        return tile_images(torch.cat([chips, rend.image.clamp(0, 1)]), columns=len(index))

    def finish(self, run_dir: Path) -> None:
        """Export ``RUN/coarse-<model>.pt`` with its provenance and validation metrics (of the weights as
        stored, :func:`~morphable.nets.coarse.round_to_stored`), and ``summary.json``."""
        round_to_stored(self.net)
        metrics = self.validate(self.config.train.steps)
        save_coarse(self.net, Path(run_dir) / f"coarse-{self.model_label}.pt", self.provenance(run_dir, metrics))
        with open(Path(run_dir) / "summary.json", "w") as f:
            json.dump({"metrics": metrics, "data": asdict(self.config.data)}, f, indent=2)
