"""3DMM-STN (Bas et al., "3D Morphable Models as Spatial Transformer Networks", ICCV-W 2017): training the
localiser without fitted-model labels.

``morphable train stn -o RUN [--set net.trunk=small]`` trains :class:`~morphable.nets.stn_localiser.STNLocaliser`
through the weight-free transformer (:class:`~morphable.render.stn.SpatialTransformer3DMM`) with the paper's
geometric losses (Sec. 4):

* **landmark** loss: Euclidean distance between the transformer's projected model landmarks and the
  observed ones (crop px; :func:`~morphable.losses.landmark.landmark_loss`), the jawline left out as in
  :mod:`~morphable.fitting.stn` (its points slide with pose);
* **bilateral symmetry** of the flattened texture over the texels visible on both sides
  (:func:`~morphable.losses.symmetry.symmetry_loss`);
* **siamese multi-view**: the flattened textures of the views of one face agree where both are visible
  (:func:`~morphable.losses.consistency.multiview_texture_loss`);
* the **statistical prior** ‖α‖² on the standardised shape coefficients (:func:`~morphable.losses.prior.prior_loss`),
  plus ‖e‖² on the expression weights.

With ``model.expression`` (default) θ holds the model's expression components as well (the seed's expression
model: its code resamples 3DDFA's expression basis onto its UV grid; our UV grid interpolates the model's
own expression basis), and every synthetic view wears a random expression.

Data: synthetic identity groups (:func:`synthetic_groups`): each identity (shape and albedo drawn from the
model and :func:`~morphable.train.synthetic.random_albedo`) rendered in ``data.views`` poses and lights,
straight into detector-like crops (the face box from its landmarks, :func:`~morphable.nets.stn_localiser.landmark_box`,
jittered in scale and position as a detector's would be). Only the images, their landmarks and, for the dlib
trunk, the frozen trunk's features are kept: a cache keyed by the settings that make them, so a run on the
dlib trunk costs one head and one transformer pass per face and step. No θ label is used in training (the
true θ of held-out groups only scores validation).

Real photos (``data.real``: comma-separated folders from ``morphable data prepare``; the paper trains on
300W-LP / UMDFaces photos): ``data.crops`` detector crops per face (:func:`real_crops`, the same box rule and
jitter as the synthetic crops), cached like the groups. Each step adds ``loss.real_batch`` of them with the
landmark and symmetry terms (no siamese term: one view per face), weighted by ``loss.real``. A prepared
folder's landmarks are the annotation where a ``.pts`` file was given and dlib's detection otherwise: a
detector's landmarks as pseudo-labels, the "landmark loss where landmarks exist" of the seed. Every 8th face
of each folder is held out of training and scores validation (``real_nme``).

Photo-real synthetic crops (``data.photoreal``: variants per photo, 0 = off; :func:`photoreal_crops`): the
inverse-rendered data of Zhang et al.'s CoarseNet (:mod:`~morphable.train.inverse_rendered`), framed as detector
crops. Each training photo's photometric fit (identity, albedo, light) is re-rendered with a new pose (yaw up to
``data.max_yaw_deg``), expression, light and a jittered identity into its own inpainted background. Unlike the
synthetic groups their textures are a photo's, and unlike the real photos they cover large yaw with exact
landmarks. The photos are :data:`STN_PHOTOS` (the inverse-rendering training photos without deepface's, whose
people score the benchmark's dense correspondence). Each step adds ``loss.photoreal_batch`` of them with the
landmark and symmetry terms, weighted by ``loss.photoreal``; the variants of every 8th photo are held out
(``photoreal_nme``).

Deviations from the paper, with reasons: the dlib ResNet instead of VGG-Faces (what we ship), cut after its
third stage (``net.blocks=10``: its last stage ends in a 2 × 2 map, too coarse to place a face) with that stage
fine-tuned (``net.tune=3``; the paper fine-tunes the whole network, we cache the frozen blocks' output); synthetic
identity groups beside a few real photos instead of UMDFaces/300W-LP photos (none in our corpus); the transformer samples the
``net.crop`` px crop (the photo in inference); loss weights are ours (the paper does not give them): they make the
terms' gradients comparable at the start (landmarks in px, textures in [0, 1]²).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from morphable.losses.consistency import multiview_texture_loss
from morphable.losses.landmark import landmark_loss
from morphable.losses.prior import prior_loss
from morphable.losses.symmetry import symmetry_loss
from morphable.models.base import MorphableModel
from morphable.nets.encoders import DLIB_BLOCKS, check_trunk_precision
from morphable.nets.stn_localiser import (CROP_MARGIN, TRUNKS, STNLocaliser, crop_square, landmark_box, nominal_theta,
                                          round_to_half, save_localiser)
from morphable.render.renderer import Renderer
from morphable.render.stn import SpatialTransformer3DMM, Theta
from morphable.train.chip_render import random_background, random_rotation
from morphable.train.config import OptimConfig, ScheduleConfig, TrainConfig
from morphable.train.data.cache import cache_root, cached, settings_key
from morphable.train.inverse_rendered import DEEPFACE, TRAIN_PHOTOS, VARIANT_VERSION, VariantSettings, build_set
from morphable.train.recipes.base import Recipe, evaluating, frozen_model
from morphable.train.synthetic import random_albedo, random_expression, random_light

FIXED_LANDMARKS = slice(17, 68)
"""iBUG points of the landmark loss: the jawline (0–16) is a pose-dependent contour, left out."""

STN_PHOTOS: tuple[str, ...] = tuple(p for p in TRAIN_PHOTOS if not p.startswith(DEEPFACE))
"""Photos of the photo-real synthetic crops (``data.photoreal``): the inverse-rendering training photos
(:data:`~morphable.train.inverse_rendered.TRAIN_PHOTOS`) without deepface's, which the benchmark's dense
correspondence test scores. AFW, the landmark benchmark, is in neither."""


@dataclass(frozen=True)
class ModelSection:
    """name: the morphable model; n_shape: D, identity components in θ (the paper's α); expression: θ also
    holds all the model's expression components (none for a model without); texture_size: side of the
    flattened texture the losses see; visibility_resolution: z-buffer side of the visibility layer."""

    name: str = "sfm"
    n_shape: int = 10
    expression: bool = True
    texture_size: int = 32
    visibility_resolution: int = 96


@dataclass(frozen=True)
class NetSection:
    """trunk: ``dlib`` (the pretrained ResNet + FC, the paper's design) or ``small`` (a CNN from scratch); crop:
    input side (px; dlib's chips are 150, and its trunk reads smaller crops faster and less accurately, see
    docs/stn.md); hidden: width of a hidden layer before the FC (0 = the paper's single FC layer; the paper
    fine-tunes all of VGG-Faces, we tune a few blocks, and a hidden layer gives the head capacity back); blocks:
    the dlib trunk's residual blocks run (14 = all: its 256 × 2 × 2 map; 13: the 256 × 4 × 4 map; 10: the
    128 × 8 × 8 map, see :class:`~morphable.nets.encoders.DlibMapTrunk`); tune: the last this-many of them
    trained (fine-tuned from dlib's weights; 0 = all frozen). The small trunk ignores both. precision: the dlib
    trunk's convolutions in training and validation (:data:`~morphable.identity.dlib_resnet.PRECISIONS`;
    ``bfloat16``, or ``auto`` where the CPU has it natively: mixed precision, the parameters and the feature
    statistics stay float32, as the CoarseNet recipe's ``model.precision``)."""

    trunk: str = "dlib"
    crop: int = 150
    hidden: int = 256
    blocks: int = 10
    tune: int = 3
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.trunk not in TRUNKS:
            raise ValueError(f"trunk must be one of {TRUNKS}, got {self.trunk!r}")
        if not 0 <= self.tune < self.blocks:
            raise ValueError(f"tune must be in [0, blocks={self.blocks}), got {self.tune}")
        check_trunk_precision(self.precision, self.trunk)

    def dlib_depth(self) -> dict[str, int]:
        """``blocks`` and ``tune`` for :class:`~morphable.nets.stn_localiser.STNLocaliser` (the small trunk has none)."""
        if self.trunk != "dlib":
            return {"blocks": DLIB_BLOCKS, "tune": 0}
        return {"blocks": self.blocks, "tune": self.tune}


@dataclass(frozen=True)
class DataSection:
    """identities / val_identities: synthetic identity groups for training / validation; views: poses
    (and lights) per identity; max_yaw_deg: their yaw range (pitch ±15°, roll ±10°); box_scale_jitter /
    box_shift_jitter: relative error of the simulated detector box (a dlib box is within about ±8 % of the
    landmarks' extent, see :data:`~morphable.nets.stn_localiser.BOX_SCALE`); cache: folder ("" =
    ``$MORPHABLE_HOME/train-cache``); chunk: faces encoded per trunk call while building the cache; real:
    comma-separated prepared datasets of real photos ("" = synthetic only); crops: jittered crops per real face;
    photoreal: inverse-rendered photo-real crops per photo of :data:`STN_PHOTOS` (0 = none)."""

    identities: int = 400
    val_identities: int = 24
    views: int = 3
    max_yaw_deg: float = 60.0
    box_scale_jitter: float = 0.1
    box_shift_jitter: float = 0.08
    cache: str = ""
    chunk: int = 32
    real: str = ""
    crops: int = 8
    photoreal: int = 40

    def __post_init__(self) -> None:
        if self.photoreal < 0:
            raise ValueError(f"photoreal must be >= 0 (crops per photo), got {self.photoreal}")
        if self.views < 2:
            raise ValueError(f"views must be >= 2 (the siamese loss compares views), got {self.views}")
        if self.crops < 1:
            raise ValueError(f"crops must be >= 1 (crops per real face), got {self.crops}")


@dataclass(frozen=True)
class LossSection:
    """Weights (ours; the paper gives none): landmark (per crop px), symmetry and siamese (per intensity²),
    prior (per unit ‖α‖²); batch: identity groups per step (each with all its views); real: weight of the real
    crops' landmark + symmetry terms; real_batch: real crops per step (with ``data.real``); photoreal,
    photoreal_batch: the same for the photo-real synthetic crops (with ``data.photoreal``)."""

    landmark: float = 1.0
    symmetry: float = 20.0
    siamese: float = 20.0
    prior: float = 0.01
    batch: int = 8
    real: float = 2.0
    real_batch: int = 16
    photoreal: float = 2.0
    photoreal_batch: int = 16


@dataclass(frozen=True)
class STNConfig:
    model: ModelSection = ModelSection()
    net: NetSection = NetSection()
    data: DataSection = DataSection()
    loss: LossSection = LossSection()
    # Adam as the paper's MatConvNet training; a short cosine schedule fits a CPU budget
    optim: OptimConfig = OptimConfig(name="adam", lr=1e-3, grad_clip=10.0)
    schedule: ScheduleConfig = ScheduleConfig(name="cosine", warmup_steps=50, min_lr_ratio=0.05)
    train: TrainConfig = TrainConfig(steps=3000, log_every=25, val_every=500, checkpoint_every=250, image_every=500)


def synthetic_groups(model: MorphableModel, identities: int, views: int, seed: int, *, crop: int = 150,
                     max_yaw_deg: float = 60.0, box_scale_jitter: float = 0.1,
                     box_shift_jitter: float = 0.08, expression: bool = False) -> dict[str, Tensor]:
    """Synthetic identity groups rendered into detector-like crops.

    Each identity: shape α ~ N(0, I) over all the model's components, a random albedo
    (:func:`~morphable.train.synthetic.random_albedo`: skin colour, smooth symmetric variation, noise);
    each view: with ``expression`` its own random expression (:func:`~morphable.train.synthetic.random_expression`:
    three components at weights up to 0.4), a pose (yaw ±``max_yaw_deg``, pitch ±15°, roll ±10°), an SH light
    (:func:`~morphable.train.synthetic.random_light`), a random background, and the crop of a simulated
    detector box (:func:`landmark_box` of the face's landmarks, side × (1 ± ``box_scale_jitter``), centre
    moved by ± ``box_shift_jitter`` of the side).

    Returns:
        ``images`` ``(N, S, S, 3)`` uint8 (N = identities · views, views of one identity adjacent),
        ``landmarks`` ``(N, 68, 2)`` crop px (NaN where the model has none), ``group`` ``(N,)``,
        ``identity`` ``(N, K)``, ``expression`` ``(N, E)`` (zeros without ``expression``), and the true crop
        θ: ``rotation`` ``(N, 3)``, ``translation`` ``(N, 2)``, ``log_scale`` ``(N,)``.
    """
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    renderer = Renderer(model.triangles, (crop, crop))
    out: dict[str, list[Tensor]] = {}
    for i in range(identities):
        identity = torch.randn(1, model.n_identity, generator=g)
        with torch.no_grad():
            neutral = model(identity=identity).vertices
        albedo = random_albedo(model.mean, model.symmetry, rng)[None]
        rotation = random_rotation(views, g, max_yaw_deg=max_yaw_deg)
        background = random_background(views, g, size=crop)
        for v in range(views):
            expr = random_expression(model, rng) if expression else torch.zeros(1, model.n_expression)
            if expression and model.n_expression:
                with torch.no_grad():
                    verts = model(identity=identity, expression=expr).vertices
            else:
                verts = neutral
            lm3 = model.landmarks(verts)[0]
            R = rotation[v]
            q = lm3 @ R.T
            q = torch.stack([q[:, 0], -q[:, 1]], -1)  # image orientation at s = 1, t = 0 (mm)
            q[~model.landmark_mask] = float("nan")
            box = landmark_box(q[None])[0]
            centre, side = (box[:2] + box[2:]) / 2, float((box[2:] - box[:2]).max())
            side *= 1 + box_scale_jitter * (2 * float(torch.rand((), generator=g)) - 1)
            centre = centre + box_shift_jitter * side * (2 * torch.rand(2, generator=g) - 1)
            corner, n = crop_square(torch.cat([centre - side / 2, centre + side / 2])[None].double())
            # the integer crop square (a detector's crop of a photo) onto S pixels: p = s q + t
            s = crop / float(n[0])
            t = (crop - 1) / 2 - s * (corner[0].float() + (float(n[0]) - 1) / 2)
            camera = ScaledOrthographic(torch.tensor([s]), matrix_to_axis_angle(R[None]), t[None].float())
            with torch.no_grad():
                image = renderer(verts, camera, colors=albedo, sh=random_light(rng), background=background[v:v + 1]).image
            noise = torch.randn(image.shape, generator=g) * 0.01
            row = {"images": ((image + noise).clamp(0, 1) * 255).round().to(torch.uint8),
                   "landmarks": camera.project(lm3[None]).where(model.landmark_mask[None, :, None],
                                                               torch.tensor(float("nan"))),
                   "group": torch.tensor([i]), "identity": identity, "expression": expr, "rotation": camera.rotation,
                   "translation": camera.translation, "log_scale": camera.scale.log()}
            for k, x in row.items():
                out.setdefault(k, []).append(x)
    return {k: torch.cat(v) for k, v in out.items()}


def with_trunk_features(localiser: STNLocaliser, data: dict[str, Tensor], chunk: int = 32) -> dict[str, Tensor]:
    """``data`` with ``features`` ``(N, F)``: the dlib trunk's frozen-block activations of its ``images``
    (:meth:`~morphable.nets.encoders.DlibMapTrunk.raw`, ``chunk`` crops per call); unchanged for the small trunk."""
    if localiser.trunk_name == "dlib":
        with torch.no_grad():
            data["features"] = torch.cat([localiser.trunk.raw(data["images"][i:i + chunk].float() / 255)
                                          for i in range(0, len(data["images"]), chunk)])
    return data


def cached_groups(model: MorphableModel, localiser: STNLocaliser, settings: dict, cache: Path,
                  chunk: int = 32) -> dict[str, Tensor]:
    """:func:`synthetic_groups` with ``settings``, plus :func:`with_trunk_features`, cached as
    ``cache/stn-groups-<hash>.pt`` (atomic; a corrupt file is made again)."""

    def make() -> dict[str, Tensor]:
        return with_trunk_features(localiser, synthetic_groups(
            model, settings["identities"], settings["views"], settings["seed"], crop=settings["crop"],
            max_yaw_deg=settings["yaw"], box_scale_jitter=settings["box_scale"],
            box_shift_jitter=settings["box_shift"], expression=settings["expression"]), chunk)

    return cached(cache / f"stn-groups-{settings_key(settings)}.pt", make)


def real_crops(items: list, *, crop: int = 150, crops: int = 8, seed: int = 0, box_scale_jitter: float = 0.1,
               box_shift_jitter: float = 0.08) -> dict[str, Tensor]:
    """Detector crops of real faces with their landmarks, as :func:`synthetic_groups` makes them.

    Per face of ``items`` (:class:`~morphable.train.data.manifest.ManifestItem`: photo, 68 landmarks): the
    box of the crop rule (:func:`landmark_box` of its landmarks), ``crops`` times with the side scaled by
    ``1 ± box_scale_jitter`` and the centre moved by ``± box_shift_jitter`` of the side (the first crop
    unjittered), cut and resampled by :func:`~morphable.nets.stn_localiser.crop_faces`.

    Returns:
        ``images`` ``(N, S, S, 3)`` uint8 and ``landmarks`` ``(N, 68, 2)`` crop px (N = faces · crops, the
        crops of one face adjacent), ``face`` ``(N,)`` the face's index in ``items``.
    """
    from morphable.io.image import read_image
    from morphable.nets.stn_localiser import crop_faces

    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[Tensor]] = {"images": [], "landmarks": [], "face": []}
    for i, item in enumerate(items):
        photo = torch.from_numpy(np.require(read_image(item.path), requirements="W")).float() / 255
        lm = torch.as_tensor(item.landmarks, dtype=torch.float64)[None]
        box = landmark_box(lm)[0]
        centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2
        scale = 1 + box_scale_jitter * (2 * torch.rand(crops, 1, generator=g, dtype=torch.float64) - 1)
        shift = box_shift_jitter * 2 * half.max() * (2 * torch.rand(crops, 2, generator=g, dtype=torch.float64) - 1)
        scale[0], shift[0] = 1.0, 0.0
        boxes = torch.cat([centre + shift - half * scale, centre + shift + half * scale], -1)
        images, frame = crop_faces([photo] * crops, boxes, crop)
        out["images"].append((images * 255).round().to(torch.uint8))
        out["landmarks"].append(((lm - frame.offset[:, None]) / frame.step[:, None, None]).float())
        out["face"].append(torch.full((crops,), i))
    return {k: torch.cat(v) for k, v in out.items()}


def photoreal_crops(model: MorphableModel, model_name: str, variants: int, seed: int, *, crop: int = 150,
                    max_yaw_deg: float = 60.0, box_scale_jitter: float = 0.1, box_shift_jitter: float = 0.08,
                    photos: tuple[str, ...] | list[str] = STN_PHOTOS, cache: Path | None = None,
                    root: Path | None = None) -> dict[str, Tensor]:
    """Photo-real synthetic detector crops: :func:`~morphable.train.inverse_rendered.build_set` variants of
    ``photos`` with ``framing="detector"`` (each new face's crop is the :func:`landmark_box` rule's of its
    landmarks, the side × (1 ± ``box_scale_jitter``), the centre moved by ± ``box_shift_jitter`` of the box
    side, as :func:`synthetic_groups` jitters), yaw ±``max_yaw_deg``, the variant defaults otherwise. ``cache``
    and ``root``: ``build_set``'s (default: the training cache and the corpus).

    Returns:
        ``images`` ``(N, S, S, 3)`` uint8, ``landmarks`` ``(N, 68, 2)`` crop px (NaN where the model has none),
        ``photo`` ``(N,)`` the photo's index among those with a face, ``rotation`` ``(N, 3)`` (N = photos ·
        ``variants``, a photo's adjacent).
    """
    settings = VariantSettings(size=crop, max_yaw_deg=max_yaw_deg, box_scale_jitter=box_scale_jitter,
                               box_shift_jitter=box_shift_jitter / CROP_MARGIN, framing="detector")
    data = build_set(model, model_name, photos, variants, seed, settings, name="stn", cache=cache, root=root)
    return {k: data[k] for k in ("images", "landmarks", "photo", "rotation")}


def rotation_error_deg(a: Tensor, b: Tensor) -> Tensor:
    """Angle ``(B,)`` (degrees) of the rotation between axis-angle ``a`` and ``b`` ``(B, 3)``."""
    R = axis_angle_to_matrix(a) @ axis_angle_to_matrix(b).transpose(-1, -2)
    return torch.rad2deg(torch.acos(((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)))


class STNRecipe(Recipe):
    """The recipe (see the module docstring)."""

    name = "stn"
    Config = STNConfig

    def __init__(self, config: STNConfig, run_dir: Path):
        super().__init__(config, run_dir)
        from morphable.models.resample import model_uv, uv_grid

        cfg = config
        self.face_model, self.model_label = frozen_model(cfg.model.name)
        if cfg.model.n_shape > self.face_model.n_identity:
            raise ValueError(f"model.n_shape={cfg.model.n_shape}: model {cfg.model.name!r} has only "
                             f"{self.face_model.n_identity} identity components")
        size = cfg.model.texture_size
        self.stn = SpatialTransformer3DMM(self.face_model, uv_grid(model_uv(self.face_model), self.face_model.triangles,
                                                                   (size, size)), cfg.model.visibility_resolution)
        self.localiser = STNLocaliser(self.model_label, cfg.model.n_shape, cfg.net.trunk,
                                      nominal_theta(self.face_model, cfg.net.crop), cfg.net.crop, cfg.net.hidden,
                                      n_expression=self.face_model.n_expression if cfg.model.expression else 0,
                                      expression_kind=self.face_model.expression_kind or "blendshapes",
                                      **cfg.net.dlib_depth())
        self.train_set = self._groups("train", cfg.data.identities, cfg.train.seed * 2 + 1)
        self.val_set = self._groups("val", cfg.data.val_identities, cfg.train.seed * 2 + 2)
        self.photoreal_train, self.photoreal_val = self._photoreal()
        if cfg.net.trunk == "dlib":
            raw = self.train_set["features"]
            if self.photoreal_train is not None:
                raw = torch.cat([raw, self.photoreal_train["features"]])
            trunk = self.localiser.trunk
            with torch.no_grad():  # the head's input at the start (through the tuned blocks' initial weights)
                trunk.set_statistics(torch.cat([trunk.lift(raw[i:i + 256]) for i in range(0, len(raw), 256)]))
            trunk.set_precision(cfg.net.precision)  # after the statistics, which are float32's
        self.defined = self.face_model.landmark_mask.clone()
        self.defined[: FIXED_LANDMARKS.start] = False
        self.real_train, self.real_val = self._real()

    def _groups(self, split: str, identities: int, seed: int) -> dict[str, Tensor]:
        cfg = self.config
        settings = dict(split=split, seed=seed, identities=identities, views=cfg.data.views, model=cfg.model.name,
                        n_vertices=self.face_model.n_vertices, crop=cfg.net.crop, yaw=cfg.data.max_yaw_deg,
                        box_scale=cfg.data.box_scale_jitter, box_shift=cfg.data.box_shift_jitter,
                        **self._trunk_key(), expression=cfg.model.expression, version=2)
        return cached_groups(self.face_model, self.localiser, settings, cache_root(cfg.data.cache), cfg.data.chunk)

    def _trunk_key(self) -> dict:
        """The trunk's entries in the caches' keys (its depth only when not the default: older caches stay valid)."""
        net = self.config.net
        depth = net.dlib_depth()
        frozen = depth["blocks"] - depth["tune"]  # the cached features are the frozen blocks'
        return dict(trunk=net.trunk, **({} if frozen == DLIB_BLOCKS else {"blocks": frozen}))

    def _features(self, data: dict[str, Tensor]) -> dict[str, Tensor]:
        """:func:`with_trunk_features` with ``data.chunk``."""
        return with_trunk_features(self.localiser, data, self.config.data.chunk)

    def _photoreal(self) -> tuple[dict[str, Tensor] | None, dict[str, Tensor] | None]:
        """:func:`photoreal_crops` (``data.photoreal`` per photo; cached with the trunk's features), the variants
        of every 8th photo held out for validation."""
        cfg = self.config
        if not cfg.data.photoreal:
            return None, None
        cache = cache_root(cfg.data.cache)
        settings = dict(model=cfg.model.name, n_vertices=self.face_model.n_vertices, variants=cfg.data.photoreal,
                        seed=cfg.train.seed, crop=cfg.net.crop, yaw=cfg.data.max_yaw_deg,
                        box_scale=cfg.data.box_scale_jitter, box_shift=cfg.data.box_shift_jitter,
                        **self._trunk_key(), photos=list(STN_PHOTOS), variant_version=VARIANT_VERSION, version=1)
        data = cached(cache / f"stn-photoreal-{settings_key(settings)}.pt", lambda: self._features(photoreal_crops(
            self.face_model, cfg.model.name, cfg.data.photoreal, cfg.train.seed, crop=cfg.net.crop,
            max_yaw_deg=cfg.data.max_yaw_deg, box_scale_jitter=cfg.data.box_scale_jitter,
            box_shift_jitter=cfg.data.box_shift_jitter, photos=STN_PHOTOS, cache=cache)))
        held = data["photo"] % 8 == 0
        return {k: v[~held] for k, v in data.items()}, {k: v[held] for k, v in data.items()}

    def _real(self) -> tuple[dict[str, Tensor] | None, dict[str, Tensor] | None]:
        """The real crops of ``data.real`` (:func:`real_crops`, cached per dataset with the trunk's features):
        every 8th face of each dataset held out for validation (its unjittered crop only)."""
        from morphable.train.data.manifest import read_manifest

        cfg = self.config
        train, val = [], []
        for folder in filter(None, (f.strip() for f in cfg.data.real.split(","))):
            items = read_manifest(Path(folder) / "manifest.jsonl")
            settings = dict(keys=[i.key for i in items], paths=[str(i.path) for i in items], crop=cfg.net.crop,
                            crops=cfg.data.crops, seed=cfg.train.seed, box_scale=cfg.data.box_scale_jitter,
                            box_shift=cfg.data.box_shift_jitter, **self._trunk_key(), version=1)

            def make(items=items) -> dict[str, Tensor]:
                return self._features(real_crops(items, crop=cfg.net.crop, crops=cfg.data.crops, seed=cfg.train.seed,
                                                 box_scale_jitter=cfg.data.box_scale_jitter,
                                                 box_shift_jitter=cfg.data.box_shift_jitter))

            data = cached(cache_root(cfg.data.cache) / f"stn-real-{settings_key(settings)}.pt", make)
            held = data["face"] % 8 == 0
            train.append({k: v[~held] for k, v in data.items()})
            val.append({k: v[held & (torch.arange(len(held)) % cfg.data.crops == 0)] for k, v in data.items()})
        if not train:
            return None, None
        join = lambda parts: {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # noqa: E731
        return join(train), join(val)

    # --------------------------------------------------------------------------------------- recipe
    def model(self) -> nn.Module:
        return self.localiser

    def batch(self, step: int, generator: torch.Generator) -> Tensor:
        """Indices ``(P·V,)`` of ``loss.batch`` identity groups, each with all its views."""
        V = self.config.data.views
        groups = torch.randperm(len(self.train_set["images"]) // V, generator=generator)[: self.config.loss.batch]
        return (groups[:, None] * V + torch.arange(V)).reshape(-1)

    def theta(self, data: dict[str, Tensor], index: Tensor) -> Theta:
        """θ (crop px) of faces ``index`` of a set: from cached features (dlib trunk) or the images."""
        if self.config.net.trunk == "dlib":
            return self.localiser.from_features(self.localiser.trunk.features(data["features"][index]))
        return self.localiser(data["images"][index].float() / 255)

    def terms(self, data: dict[str, Tensor], index: Tensor) -> tuple[dict[str, Tensor], Theta, object]:
        """The four loss terms for faces ``index`` (whole groups, views adjacent), θ and the transformer's output."""
        theta = self.theta(data, index)
        out = self.stn(data["images"][index].float() / 255, theta)
        target = data["landmarks"][index][:, self.defined]
        V = self.config.data.views
        tex, mask = out.texture, out.mask
        siamese = torch.stack([multiview_texture_loss(tex[i:i + V], mask[i:i + V]) for i in range(0, len(index), V)])
        return {"landmark": landmark_loss(out.landmarks[:, self.defined], target),
                "symmetry": symmetry_loss(tex, mask), "siamese": siamese.mean(),
                "prior": prior_loss(theta.alpha) + (0 if theta.expression is None else prior_loss(theta.expression))}, \
            theta, out

    def single_terms(self, data: dict[str, Tensor], index: Tensor,
                     prefix: str) -> tuple[dict[str, Tensor], Theta, object]:
        """Landmark and symmetry terms (``<prefix>_landmark``, ``<prefix>_symmetry``) of single crops ``index``
        (real or photo-real: one view each, no siamese term), θ and the transformer's output."""
        theta = self.theta(data, index)
        out = self.stn(data["images"][index].float() / 255, theta)
        target = data["landmarks"][index][:, self.defined]
        return {f"{prefix}_landmark": landmark_loss(out.landmarks[:, self.defined], target),
                f"{prefix}_symmetry": symmetry_loss(out.texture, out.mask)}, theta, out

    def loss(self, batch: Tensor, step: int) -> dict[str, Tensor]:
        w = self.config.loss
        terms, _, _ = self.terms(self.train_set, batch)
        terms["loss"] = (w.landmark * terms["landmark"] + w.symmetry * terms["symmetry"] + w.siamese * terms["siamese"]
                         + w.prior * terms["prior"])
        g = torch.Generator().manual_seed(self.config.train.seed * 100_003 + step)
        for prefix, data, weight, size in (("real", self.real_train, w.real, w.real_batch),
                                           ("photoreal", self.photoreal_train, w.photoreal, w.photoreal_batch)):
            if data is None:
                continue
            index = torch.randperm(len(data["images"]), generator=g)[:size]
            single, _, _ = self.single_terms(data, index, prefix)
            terms.update(single)
            terms["loss"] = terms["loss"] + weight * (w.landmark * single[f"{prefix}_landmark"]
                                                      + w.symmetry * single[f"{prefix}_symmetry"])
        return terms

    # ----------------------------------------------------------------------------------- validation
    def validate(self, step: int) -> dict[str, float]:
        """Held-out synthetic groups: the loss terms, landmark NME (mean error over the fixed points / crop
        side), rotation error (degrees), scale error (relative), correlation of α with the truth's first D, mean
        absolute error of the expression weights (with ``model.expression``); with ``data.real``, the held-out
        real faces' NME (``real_nme``); with ``data.photoreal``, the held-out photos' photo-real crops' NME and
        rotation error (``photoreal_nme``, ``photoreal_rotation_deg``)."""
        data = self.val_set
        extra: dict[str, float] = {}
        with torch.no_grad(), evaluating(self.localiser):
            terms, theta, out = self.terms(data, torch.arange(len(data["images"])))
            for prefix, single in (("real", self.real_val), ("photoreal", self.photoreal_val)):
                if single is None or not len(single["images"]):
                    continue
                _, theta_s, out_s = self.single_terms(single, torch.arange(len(single["images"])), prefix)
                extra[f"{prefix}_nme"] = float(self._nme(out_s.landmarks, single["landmarks"]).mean())
                if "rotation" in single:
                    extra[f"{prefix}_rotation_deg"] = float(rotation_error_deg(
                        theta_s.rotation, single["rotation"].to(theta_s.rotation.dtype)).mean())
        err = self._nme(out.landmarks, data["landmarks"])
        D = self.config.model.n_shape
        a, b = theta.alpha.flatten(), data["identity"][:, :D].flatten()
        corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if D else 0.0
        if theta.expression is not None:
            extra["expression_mae"] = float((theta.expression - data["expression"]).abs().mean())
        return {**{k: float(v) for k, v in terms.items()}, "nme": float(err.mean()),
                "rotation_deg": float(rotation_error_deg(theta.rotation, data["rotation"]).mean()),
                "scale_rel": float((theta.log_scale - data["log_scale"]).abs().mean()),
                "alpha_corr": corr, **extra}

    def _nme(self, landmarks: Tensor, target: Tensor) -> Tensor:
        """Per face ``(B,)``: mean distance over the loss's landmarks / the crop side."""
        return (landmarks[:, self.defined] - target[:, self.defined]).norm(dim=-1).mean(-1) / self.config.net.crop

    def image_grid(self, batch: Tensor, step: int) -> Tensor | None:
        """Rows: held-out crops, their flattened textures (upsampled to the crop size), their masks."""
        import torch.nn.functional as F

        from morphable.train.logging import tile_images

        V = self.config.data.views
        index = torch.arange(min(V * max(1, 8 // V), len(self.val_set["images"])))
        with torch.no_grad(), evaluating(self.localiser):
            _, _, out = self.terms(self.val_set, index)
        S = self.config.net.crop

        def up(x: Tensor) -> Tensor:
            return F.interpolate(x.permute(0, 3, 1, 2), size=(S, S), mode="nearest").permute(0, 2, 3, 1)

        crops = self.val_set["images"][index].float() / 255
        masks = out.mask[..., None].float().expand(-1, -1, -1, 3)
        return tile_images(torch.cat([crops, up(out.texture.clamp(0, 1)), up(masks)]), columns=len(index))

    def finish(self, run_dir: Path) -> None:
        """Export ``RUN/stn-<model>-<trunk>.pt`` with its provenance and held-out metrics (of the weights as stored:
        :func:`~morphable.nets.stn_localiser.round_to_half` first)."""
        round_to_half(self.localiser)
        metrics = self.validate(self.config.train.steps)
        meta = self.provenance(run_dir, metrics)
        save_localiser(self.localiser, Path(run_dir) / f"stn-{self.model_label}-{self.config.net.trunk}.pt", meta)
        with open(Path(run_dir) / "summary.json", "w") as f:
            json.dump({"metrics": metrics}, f, indent=2)
