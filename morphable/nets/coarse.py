"""CoarseNet (Guo, Zhang et al., "CNN-based Real-time Dense Face Reconstruction with Inverse-rendered
Photo-realistic Face Images", TPAMI 2018; seed ``zhang-deep-3d-face-modeling.txt``, "CoarseNet"):
a face chip → the coarse model's parameters χ = {α_id, α_exp, α_alb, s} (geometry), {pitch, yaw, roll, t_x,
t_y} (pose) and L (SH light), the seed's "Inverse Rendering - Coarse" unknowns.

The seed reports 20 ms per frame for the paper's networks. Ours must run in ≤ 5 ms on two CPU threads,
so it is a plain 7-layer strided CNN (3 × 3 convolutions, batch norm, ReLU) on a 96 px chip whose last
3 × 3 × 256 map is flattened into a 256-unit hidden layer (1.31 M weights, 46 M multiply-adds; ``docs/coarse.md``:
flattening lowered the validation error from 5.18 to 4.80 mm against global average pooling, which kept
0.78 M weights), trained from scratch on the inverse-rendered data
(:mod:`morphable.train.inverse_rendered`; recipe :mod:`morphable.train.recipes.coarse`). The other trunk
(``trunk="dlib"``, the shipped ``coarse-sfm``) reads 150 px chips with dlib's face-recognition ResNet cut after
10 residual blocks, the last ``tune`` of them fine-tuned (9 in the shipped file; the 3DMM-STN localiser's trunk),
its 128 × 8 × 8 map flattened into a 128-unit hidden layer: 1.5–2 ms per chip on two threads, and 16 % less
vertex error (``docs/coarse.md`` compares the two). A dlib-trunk network can have a second, refining stage
(``refine_blocks``; :class:`~morphable.nets.heads.PointRefiner`, cascaded regression): dlib's finer map
sampled where the first estimate projects the model's landmarks corrects that estimate (``refine_stages`` such
corrections in turn). The shipped ``coarse-sfm`` has one, on its own two fine-tuned blocks after the shared frozen
first (about 4 ms per chip on two threads; 10 % less benchmark error than the one-stage network: ``docs/coarse.md``).

Output layout (:func:`coarse_layout`, a :class:`~morphable.nets.layout.ParamLayout`, in this order):

========== ====================== =====================================================================
block      size                   meaning
========== ====================== =====================================================================
rotation   3                      yaw, pitch, roll (rad), ``R = R_y R_x R_z`` (:func:`euler_to_matrix`)
translation 2                     where the model origin lands, chip px / chip side (0 = the left/top edge)
log_scale  1                      log of the scale in chip px per mm × 100 / chip side
identity   K                      standardised identity coefficients (N(0, 1) prior)
expression Ke                     expression coefficients (blendshape weights in [0, 1] for SFM / ICT)
albedo     (1 + M) · 3            coefficients of the smooth albedo basis :func:`albedo_basis` per channel
light      27                     SH radiance ``(9, 3)`` (:mod:`morphable.render.shading`, view frame)
========== ====================== =====================================================================

The network regresses every block standardised (the training targets' mean and standard deviation are
buffers, ``y = mean + std ⊙ raw``), so the parameter loss weighs blocks by their spread, not their units.
The albedo is low-dimensional because a per-vertex albedo (3 448 × 3 on SFM) is not a regression target: the
fit's per-vertex albedo is projected onto a constant and the first ``M`` left-right symmetric manifold
harmonics of the face (:func:`~morphable.fitting.photometric.symmetric_harmonics`, the photometric fit's own
smooth-albedo modes).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from os import PathLike

import numpy as np

import torch
from torch import Tensor, nn

from morphable.geometry.camera import ScaledOrthographic, orthographic_view
from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
from morphable.identity.dlib_resnet import DlibFaceNet, inference_dtype
from morphable.models.base import N_LANDMARKS, MorphableModel
from morphable.nets.encoders import DlibMapTrunk, strided_cnn
from morphable.nets.layout import ParamLayout
from morphable.nets.heads import PointRefiner
from morphable.nets.weights import load_net, save_net
from morphable.nets.weights import round_to_stored as rounded

FORMAT = "morphable-coarsenet"
VERSION = 1
WIDTHS = (24, 48, 48, 96, 96, 160, 256)
STRIDES = (2, 2, 1, 2, 1, 2, 2)
"""Convolution widths and strides: a 96 px chip ends as 3 × 3 × 256 before the head."""
TRUNKS = ("small", "dlib")
"""CoarseNet's feature extractors: ``small``, the strided CNN from scratch (:data:`WIDTHS`); ``dlib``, dlib's
ResNet cut after ``blocks`` residual blocks with the last ``tune`` fine-tuned
(:class:`~morphable.nets.encoders.DlibMapTrunk`, the 3DMM-STN localiser's trunk)."""
HEADS = ("flatten", "pool")
"""How the last feature map reaches the 256-unit hidden layer: ``flatten`` keeps where each feature is (the
3 × 3 × 256 map, flattened; ``docs/coarse.md``: lower validation error than ``pool``), ``pool`` averages it
over the map (global average pooling; CoarseNet files from before the choice)."""
ALBEDO_MODES = 32
"""M, the smooth albedo modes besides the constant (the photometric fit's ``albedo_modes``)."""


CROP_SCALE = 1.8
"""Chip side / the longer side of the fitted landmarks' box."""


def crop_camera(camera: ScaledOrthographic, box: tuple[float, float, float], size: int) -> ScaledOrthographic:
    """The camera of a photo seen in the chip of ``box`` (edges px, :func:`chip_square`) at ``size`` px: the
    box's left/top edge maps onto the chip's (−½), so ``chip = (x − left) · size / side − ½``."""
    left, top, side = box
    k = size / side
    shift = torch.tensor([left * k + 0.5, top * k + 0.5], dtype=camera.translation.dtype)
    return ScaledOrthographic(camera.scale * k, camera.rotation, camera.translation * k - shift)


def crop_photo(photo: np.ndarray, box: tuple[float, float, float], size: int) -> np.ndarray:
    """The chip ``(size, size, 3)`` uint8 of ``box`` (:func:`chip_square`): the photo shrunk by area averaging,
    then shifted with bilinear interpolation (borders replicated), the same mapping as :func:`crop_camera`."""
    import cv2

    left, top, side = box
    k = size / side
    small = cv2.resize(photo, (max(1, round(photo.shape[1] * k)), max(1, round(photo.shape[0] * k))),
                       interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    # per axis the resize maps x to x_s = (x + ½)·k' − ½ (k' the rounded size's factor), and the chip is
    # (x − left)·k − ½, so chip = (k/k')·x_s + ½·k/k' − ½·k − left·k − ½
    kx, ky = small.shape[1] / photo.shape[1], small.shape[0] / photo.shape[0]
    M = np.array([[k / kx, 0, 0.5 * k / kx - 0.5 * k - left * k - 0.5],
                  [0, k / ky, 0.5 * k / ky - 0.5 * k - top * k - 0.5]], dtype=np.float64)
    return cv2.warpAffine(small, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def chip_square(points: Tensor, scale: float = 1.0) -> tuple[float, float, float]:
    """CoarseNet's chip in a photo: ``(left edge, top edge, side)`` px of the square about the centre of
    landmarks' ``(L, 2)`` box, side :data:`CROP_SCALE` × the box's longer side × ``scale``."""
    lo, hi = points.min(0).values, points.max(0).values
    side = CROP_SCALE * float((hi - lo).max()) * scale
    cx, cy = float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2
    return cx - side / 2, cy - side / 2, side


def coarse_layout(n_identity: int, n_expression: int, albedo_modes: int = ALBEDO_MODES) -> ParamLayout:
    """The output layout (see the module docstring) for a model with these sizes."""
    return ParamLayout((("rotation", 3), ("translation", 2), ("log_scale", 1), ("identity", n_identity),
                        ("expression", n_expression), ("albedo", (1 + albedo_modes) * 3), ("light", 27)))


def albedo_basis(model: MorphableModel, albedo_modes: int = ALBEDO_MODES) -> tuple[Tensor, Tensor]:
    """The smooth albedo basis on the photometric fit's region: ``Φ = [1, U]`` ``(V_r, 1 + M)`` (``U`` the
    fit's symmetric manifold harmonics, unit RMS) and the region's vertex ids ``(V_r,)``; an albedo is
    ``Φ c`` with ``c`` ``(1 + M, 3)``."""
    from morphable.fitting.photometric import PhotometricConfig, region_terms

    tables = region_terms(model, PhotometricConfig().region, albedo_modes)
    U = tables.harmonics
    return torch.cat([torch.ones(len(U), 1, dtype=U.dtype), U], 1), tables.vertex_ids


def project_albedo(albedo: Tensor, basis: Tensor) -> Tensor:
    """Least-squares coefficients ``(B, 1 + M, 3)`` of per-vertex albedos ``(B, V_r, 3)`` in ``basis``
    ``(V_r, 1 + M)``."""
    return torch.linalg.lstsq(basis.to(albedo).expand(albedo.shape[0], -1, -1), albedo).solution


@dataclass(frozen=True)
class CoarseParams:
    """Decoded CoarseNet output for a batch of ``B`` chips of side ``S``.

    Attributes:
        camera: :class:`ScaledOrthographic` in chip px (rotation axis-angle, scale px/mm, translation px).
        ypr: ``(B, 3)`` yaw, pitch, roll (rad).
        identity: ``(B, K)``; expression: ``(B, Ke)``.
        albedo_coefficients: ``(B, 1 + M, 3)``; light: ``(B, 9, 3)``.
    """

    camera: ScaledOrthographic
    ypr: Tensor
    identity: Tensor
    expression: Tensor
    albedo_coefficients: Tensor
    light: Tensor


def encode(layout: ParamLayout, size: int, *, ypr: Tensor, translation: Tensor, scale: Tensor, identity: Tensor,
           expression: Tensor, albedo_coefficients: Tensor, light: Tensor) -> Tensor:
    """Parameters → the flat ``(B, layout.size)`` vector the network regresses (inverse of :func:`decode`)."""
    return layout.join({"rotation": ypr, "translation": translation / size,
                        "log_scale": (scale * 100 / size).log()[:, None],
                        "identity": identity, "expression": expression,
                        "albedo": albedo_coefficients.reshape(len(ypr), -1), "light": light.reshape(len(ypr), 27)})


def decode(layout: ParamLayout, size: int, y: Tensor) -> CoarseParams:
    """The flat ``(B, layout.size)`` vector → :class:`CoarseParams` for chips of side ``size`` px."""
    p = layout.split(y)
    B = y.shape[0]
    camera = ScaledOrthographic(p["log_scale"][:, 0].exp() * size / 100,
                                matrix_to_axis_angle(euler_to_matrix(p["rotation"])), p["translation"] * size)
    return CoarseParams(camera, p["rotation"], p["identity"], p["expression"], p["albedo"].reshape(B, -1, 3),
                        p["light"].reshape(B, 9, 3))


class CoarseNet(nn.Module):
    """The CNN (see the module docstring).

    Args:
        model_name: the morphable model the outputs belong to (recorded, checked by users).
        layout: the output layout (:func:`coarse_layout`).
        size: chip side (px).
        head: :data:`HEADS`: flatten the last feature map, or average it (the small trunk; the dlib trunk's map
            is flattened).
        trunk: :data:`TRUNKS`.
        hidden: the hidden layer's width.
        blocks, tune: the dlib trunk's depth and its fine-tuned last blocks.
        net: an existing :class:`~morphable.identity.DlibFaceNet` to share (dlib trunk only).
        refine_blocks, refine_tune, refine_hidden: with ``refine_blocks`` > 0 (dlib trunk only), a second stage
            (:class:`~morphable.nets.heads.PointRefiner`) corrects the first stage's estimate from dlib's map
            after ``refine_blocks`` blocks (the last ``refine_tune`` fine-tuned) sampled at the estimate's
            ``refine_points`` projected landmarks (the model's defined ones, :meth:`project_landmarks`; their
            geometry is set by :meth:`set_landmarks`).
        refine_stages: the refiner's cascade stages (each samples the map where the previous estimate puts the
            landmarks and corrects it; :class:`~morphable.nets.heads.PointRefiner`).
    Attributes:
        mean, std: ``(layout.size,)`` buffers: the training targets' statistics (``y = mean + std ⊙ raw``).
        landmark_mean ``(L, 3)``, landmark_identity ``(K, L, 3)``, landmark_expression ``(Ke, L, 3)``: the
            model's L defined landmarks (mm) as the mean plus per-coefficient offsets (a refining network only).
    """

    def __init__(self, model_name: str, layout: ParamLayout, size: int = 96, head: str = "flatten",
                 trunk: str = "small", hidden: int = 256, blocks: int = 10, tune: int = 5,
                 net: DlibFaceNet | None = None, refine_blocks: int = 0, refine_tune: int = 0,
                 refine_hidden: int = 256, refine_points: int = N_LANDMARKS, refine_stages: int = 1):
        super().__init__()
        if refine_blocks and trunk != "dlib":
            raise ValueError("CoarseNet: the refining stage needs the dlib trunk")
        if head not in HEADS:
            raise ValueError(f"CoarseNet: head must be one of {', '.join(HEADS)}, got {head!r}")
        if trunk not in TRUNKS:
            raise ValueError(f"CoarseNet: trunk must be one of {', '.join(TRUNKS)}, got {trunk!r}")
        if trunk == "dlib" and head != "flatten":
            raise ValueError("CoarseNet: the dlib trunk's map is flattened (head 'flatten')")
        self.model_name, self.layout, self.size, self.head_kind = model_name, layout, size, head
        self.trunk_name, self.hidden = trunk, int(hidden)
        if trunk == "dlib":
            self.trunk = DlibMapTrunk(net, blocks, tune, size)
            n_features = self.trunk.dim
        else:
            side = size
            for stride in STRIDES:
                side = (side - 1) // stride + 1  # 3 × 3 convolutions, padding 1
            pool = [nn.AdaptiveAvgPool2d(1)] if head == "pool" else []
            n_features = WIDTHS[-1] * (1 if head == "pool" else side * side)
            self.features = nn.Sequential(*strided_cnn(WIDTHS, STRIDES), *pool, nn.Flatten())
            # channels-last weights: the (B, S, S, 3) chips permuted to NCHW already are; about 30 % faster on CPU
            self.features.to(memory_format=torch.channels_last)
        self.head = nn.Sequential(nn.Linear(n_features, self.hidden), nn.ReLU(inplace=True),
                                  nn.Linear(self.hidden, layout.size))
        nn.init.zeros_(self.head[-1].weight)  # starts at the targets' mean
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("mean", torch.zeros(layout.size))
        self.register_buffer("std", torch.ones(layout.size))
        self.refiner = None
        if refine_blocks:
            self.refiner = PointRefiner(self.trunk.net, refine_points, layout.size, size, refine_blocks, refine_tune,
                                        refine_hidden, refine_stages)
            sizes = dict(layout.blocks)
            self.register_buffer("landmark_mean", torch.zeros(refine_points, 3))
            self.register_buffer("landmark_identity", torch.zeros(sizes["identity"], refine_points, 3))
            self.register_buffer("landmark_expression", torch.zeros(sizes["expression"], refine_points, 3))

    def set_landmarks(self, model: MorphableModel) -> None:
        """Store the landmarks ``model`` defines (:attr:`~morphable.models.MorphableModel.landmark_mask`, as many as
        the refiner's points) as the mean plus per-coefficient offsets (they are linear in the coefficients),
        which :meth:`project_landmarks` needs (a refining network)."""
        if self.refiner is None:
            raise ValueError("CoarseNet: only a refining network keeps landmarks")
        defined = model.landmark_mask
        if int(defined.sum()) != self.refiner.n_points:
            raise ValueError(f"CoarseNet: the refiner reads {self.refiner.n_points} landmarks, the model defines "
                             f"{int(defined.sum())}")
        sizes = dict(self.layout.blocks)
        with torch.no_grad():
            mean = model.landmarks(model.mean[None])[0, defined]
            eye = torch.eye(sizes["identity"], dtype=model.mean.dtype)
            identity = model.landmarks(model(identity=eye).vertices)[:, defined] - mean
            eye = torch.eye(sizes["expression"], dtype=model.mean.dtype)
            expression = model.landmarks(model(expression=eye).vertices)[:, defined] - mean
        self.landmark_mean.copy_(mean)
        self.landmark_identity.copy_(identity)
        self.landmark_expression.copy_(expression)

    def project_landmarks(self, y: Tensor) -> Tensor:
        """The model's defined landmarks (:meth:`set_landmarks`) of flat parameters ``y`` ``(B, layout.size)``
        projected into the chip ``(B, L, 2)`` px: :func:`decode`'s camera
        (:func:`~morphable.geometry.camera.orthographic_view`), with ``R`` straight from the Euler angles (the
        camera's axis-angle round trip cost more than the rest of this)."""
        p = self.layout.split(y)
        points = (self.landmark_mean + torch.einsum("bk,klc->blc", p["identity"], self.landmark_identity)
                  + torch.einsum("bk,klc->blc", p["expression"], self.landmark_expression))
        view = points @ euler_to_matrix(p["rotation"]).transpose(1, 2)  # (B, L, 3), mm
        scale = p["log_scale"][:, 0].exp() * self.size / 100  # (B,) px / mm
        return orthographic_view(view, scale, p["translation"] * self.size)[..., :2]

    def stages(self, images: Tensor) -> list[Tensor]:
        """Standardised outputs ``(B, layout.size)`` of chips ``(B, S, S, 3)`` in [0, 1] after each stage: the
        first stage's, and with a refiner each refining stage's (a stage sees the previous estimate without its
        gradient: each stage trains on its own loss, as cascades do)."""
        if images.dim() != 4 or images.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"CoarseNet: expected chips (B, {self.size}, {self.size}, 3), got {tuple(images.shape)}")
        if self.trunk_name != "dlib":
            x = (images.permute(0, 3, 1, 2).to(self.mean.dtype) - 0.5) / 0.25
            return [self.head(self.features(x))]
        images = images.to(self.mean.dtype)
        trains = any(q.requires_grad for q in (*self.trunk.parameters(), *self.head.parameters()))
        raw = self.trunk.raw(images)
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):  # a frozen first stage runs fused
            first = self.head(self.trunk.features(raw))
        if self.refiner is None:
            return [first]
        second = self.refiner.trunk
        shared = second.blocks - second.tune == self.trunk.blocks - self.trunk.tune  # the same frozen blocks
        fmap = self.refiner.feature_map(images, raw if shared else None)
        outputs = [first]
        for k in range(self.refiner.stages):
            estimate = outputs[-1].detach()
            points = self.project_landmarks(self.mean + self.std * estimate)
            outputs.append(estimate + self.refiner.correct(k, fmap, points, estimate))
        return outputs

    def set_precision(self, precision: str) -> None:
        """The dlib trunks' precision, in inference and while training (:class:`~morphable.nets.encoders.DlibMapTrunk`;
        the small trunk has none)."""
        inference_dtype(precision)
        trunks = [self.trunk] if self.trunk_name == "dlib" else []
        if self.refiner is not None:
            trunks.append(self.refiner.trunk)
        for trunk in trunks:
            trunk.set_precision(precision)

    def raw(self, images: Tensor) -> Tensor:
        """Standardised outputs ``(B, layout.size)`` of chips ``(B, S, S, 3)`` in [0, 1] (the last stage's)."""
        return self.stages(images)[-1]

    def forward(self, images: Tensor) -> Tensor:
        """The flat parameter vector ``(B, layout.size)`` (:func:`decode` names it)."""
        return self.mean + self.std * self.raw(images)

    def stage_outputs(self, images: Tensor) -> list[Tensor]:
        """The flat parameter vectors ``(B, layout.size)`` after each stage (:meth:`stages`; the last is
        :meth:`forward`'s)."""
        return [self.mean + self.std * raw for raw in self.stages(images)]

    def predict(self, images: Tensor) -> CoarseParams:
        """:func:`decode` of :meth:`forward`."""
        return decode(self.layout, self.size, self(images))


def stored_half(name: str, value: Tensor) -> bool:
    """Whether a state entry is stored as float16: the convolution and linear weights, the dlib trunk's tuned
    kernels among them (package data stays small, 2.6 MB for the small trunk); batch-norm parameters and
    statistics, biases, the feature and output standardisation stay float32."""
    return (name.endswith(".weight") or ".weight." in name) and value.dim() > 1


INT8_MIN_SIZE = 1 << 18
"""Linear weights with at least this many entries are stored as int8 (:func:`stored_int8`)."""


def stored_int8(name: str, value: Tensor) -> bool:
    """Whether a state entry is stored as int8 with a scale per row
    (:func:`~morphable.nets.weights.quantize_rows`): the large linear weights, at least :data:`INT8_MIN_SIZE`
    entries (the dlib first stage's hidden layer on its flattened map, 128 × 8192, and the refiner's perceptrons'
    first layers, 256 × 1801: half of the shipped file as float16, which kept it over 5 MB). Re-saving stop 32's
    ``coarse-sfm`` this way moved its benchmark error by 0.002 mm; training scores its export after this rounding."""
    return name.endswith(".weight") and value.dim() == 2 and value.numel() >= INT8_MIN_SIZE


def round_to_stored(net: CoarseNet) -> None:
    """Round the weights to what :func:`save_coarse` stores (:func:`stored_int8`, then :func:`stored_half`) in
    place (:func:`~morphable.nets.weights.round_to_stored`)."""
    rounded(net, stored_half, stored_int8)


FROZEN = ("trunk.net.", "refiner.trunk.net.")
"""State prefixes :func:`save_coarse` does not write: dlib's frozen network (it ships on its own)."""


def refine_header(net: CoarseNet) -> dict:
    """The file entries that rebuild a refining stage (none without one; older files have none)."""
    if net.refiner is None:
        return {}
    trunk = net.refiner.trunk
    return {"refine_blocks": trunk.blocks, "refine_tune": trunk.tune, "refine_hidden": net.refiner.hidden,
            "refine_points": net.refiner.n_points, "refine_stages": net.refiner.stages}


def save_coarse(net: CoarseNet, path: str | PathLike, meta: dict | None = None) -> None:
    """Write the weights (:func:`stored_int8` as int8, :func:`stored_half` as float16), buffers and layout
    atomically (:func:`~morphable.nets.weights.save_net`)."""
    dlib = net.trunk_name == "dlib"
    save_net(net, path, FORMAT, VERSION, {"model_name": net.model_name, "size": net.size, "head": net.head_kind,
                                          "layout": [[n, int(k)] for n, k in net.layout.blocks],
                                          "trunk": net.trunk_name, "hidden": net.hidden,
                                          "blocks": net.trunk.blocks if dlib else 0,
                                          "tune": net.trunk.tune if dlib else 0, **refine_header(net)}, meta,
             half=stored_half, int8=stored_int8, skip=FROZEN)


def load_coarse(name_or_path: str | PathLike, precision: str = "float32") -> CoarseNet:
    """A CoarseNet from :func:`save_coarse`'s file (or a shipped name), in eval mode (files from before the
    dlib trunk: the small one, hidden width 256). ``precision``: the dlib trunk's inference precision
    (:class:`~morphable.nets.encoders.DlibMapTrunk`).

    Raises:
        ModelFileError: missing, corrupt or inconsistent file (one line naming it).
        ValueError: an unknown ``precision``, or bfloat16 where oneDNN cannot run it.
    """
    inference_dtype(precision)  # checks it before the file is read

    def build(data: dict) -> CoarseNet:
        layout = ParamLayout(tuple((str(n), int(k)) for n, k in data["layout"]))
        return CoarseNet(str(data["model_name"]), layout, int(data["size"]), str(data.get("head", "pool")),
                         str(data.get("trunk", "small")), int(data.get("hidden", 256)), int(data.get("blocks", 10)),
                         int(data.get("tune", 5)), refine_blocks=int(data.get("refine_blocks", 0)),
                         refine_tune=int(data.get("refine_tune", 0)), refine_hidden=int(data.get("refine_hidden", 256)),
                         refine_points=int(data.get("refine_points", N_LANDMARKS)),
                         refine_stages=int(data.get("refine_stages", 1)))

    net = load_net(name_or_path, FORMAT, VERSION, "CoarseNet", build, skipped=FROZEN)
    net.set_precision(precision)
    return net


METHODS = ("coarse", "coarse+fit")
"""``morphable fit --method``: CoarseNet alone, or the landmark fit with its identity prior at CoarseNet's."""


@lru_cache(maxsize=None)
def shipped_coarse(model_name: str) -> CoarseNet:
    """The shipped ``coarse-<model_name>`` network (sha256 checked; one shared instance per process, do not
    modify it), its dlib trunk at precision ``"auto"`` (bfloat16 where the CPU has it natively).

    Raises:
        ModelFileError: no CoarseNet ships for this model, or its file is missing or corrupt.
    """
    from morphable.nets.weights import shipped_key

    return load_coarse(shipped_key("coarse", "CoarseNet", model_name), precision="auto")


def photo_chips(net: CoarseNet, model: MorphableModel, photos, landmarks: Tensor
                ) -> tuple[Tensor, list[tuple[float, float, float]]]:
    """The network's chips of B faces, cut as its training chips were
    (:func:`chip_square`: a square of 1.8 × the box of the model's defined
    landmarks, here the detected ones, about their box's centre; no jitter).

    Args:
        photos: B photos ``(H, W, 3)`` uint8 or float in [0, 1] (sizes may differ); landmarks: ``(B, 68, 2)``
            photo px.
    Returns:
        chips ``(B, S, S, 3)`` float32 in [0, 1] and each chip's ``(left, top, side)`` box in photo px.
    """
    chips, boxes = [], []
    for photo, points in zip(photos, torch.as_tensor(landmarks, dtype=torch.float64)):
        photo = np.asarray(photo)
        if photo.dtype != np.uint8:
            photo = (np.clip(photo, 0, 1) * 255).round().astype(np.uint8)
        points = points[model.landmark_mask]
        points = points[torch.isfinite(points).all(-1)]
        if len(points) < 2:
            raise ValueError("CoarseNet: a face needs at least two landmarks to place its chip")
        box = chip_square(points)
        chips.append(torch.from_numpy(crop_photo(np.ascontiguousarray(photo), box, net.size)))
        boxes.append(box)
    return torch.stack(chips).float() / 255, boxes


def chip_camera_to_photo(camera: ScaledOrthographic, boxes: list[tuple[float, float, float]],
                         size: int) -> ScaledOrthographic:
    """The inverse of :func:`crop_camera`: cameras in the chips' px → in the
    photos' px (``photo = (chip + ½) · side / size + (left, top)``)."""
    box = torch.tensor(boxes, dtype=camera.scale.dtype)  # (B, 3)
    k = size / box[:, 2]
    translation = (camera.translation + 0.5) / k[:, None] + box[:, :2]
    return ScaledOrthographic(camera.scale / k, camera.rotation, translation)


def fit_with_coarse(model: MorphableModel, net: CoarseNet, photos, landmarks: Tensor, *, method: str = "coarse",
                    iterations: int = 5, lambda_identity: float = 1.0):
    """``morphable fit --method coarse|coarse+fit`` as a :class:`~morphable.fitting.landmarks.LandmarkFit`.

    * ``coarse``: the network alone on each face's chip (:func:`photo_chips`): its identity, expression and
      camera (mapped to photo px); the fitted landmarks are the model's projected by it; the network gives no
      posterior, so ``identity_covariance`` is the prior's (the identity matrix), and ``rms_px`` compares its
      landmarks with the detected ones.
    * ``coarse+fit``: the landmark fit (:func:`~morphable.fitting.landmarks.fit_landmarks`) with its identity
      prior centred at CoarseNet's identity, precision ``lambda_identity``.

    Args:
        model: the network's model (``net.model_name``); photos: B photos ``(H, W, 3)`` uint8 or float in
            [0, 1]; landmarks: ``(B, 68, 2)`` detected, photo px.
    """
    from morphable.fitting.landmarks import LandmarkFit, fit_landmarks

    if method not in METHODS:
        raise ValueError(f"fit_with_coarse: method must be one of {METHODS}, got {method!r}")
    if model.n_identity != net.layout.sizeof("identity") or model.n_expression != net.layout.sizeof("expression"):
        raise ValueError(f"fit_with_coarse: the network regresses {net.model_name!r}'s parameters, not this model's")
    landmarks = torch.as_tensor(landmarks, dtype=model.mean.dtype)
    chips, boxes = photo_chips(net, model, photos, landmarks)
    with torch.inference_mode():
        p = net.predict(chips)
    identity = p.identity.clone().to(landmarks)
    if method == "coarse+fit":
        return fit_landmarks(model, landmarks, iterations=iterations, identity_prior_mean=identity,
                             lambda_identity=lambda_identity)
    expression = p.expression.clone().to(landmarks)
    camera = chip_camera_to_photo(ScaledOrthographic(p.camera.scale.clone(), p.camera.rotation.clone(),
                                                     p.camera.translation.clone()), boxes, net.size)
    camera = ScaledOrthographic(camera.scale.to(landmarks), camera.rotation.to(landmarks),
                                camera.translation.to(landmarks))
    B = len(landmarks)
    with torch.no_grad():
        fitted = camera.project(model.landmarks(model(identity=identity, expression=expression).vertices))
    fitted = torch.where(model.landmark_mask[None, :, None], fitted, torch.full_like(fitted, float("nan")))
    ok = torch.isfinite(fitted).all(-1) & torch.isfinite(landmarks).all(-1)
    sq = torch.where(ok, ((fitted - landmarks) ** 2).sum(-1), torch.zeros_like(fitted[..., 0]))
    rms = (sq.sum(1) / ok.sum(1).clamp_min(1)).sqrt()
    ids = torch.where(model.landmark_mask, model.landmark_indices[:, 0], -1).expand(B, -1)
    K = model.n_identity
    return LandmarkFit(identity=identity, expression=expression, camera=camera, landmarks_fitted=fitted,
                       landmark_ids=ids, identity_covariance=torch.eye(K, dtype=landmarks.dtype).expand(B, K, K),
                       rms_px=rms, contour_fitted=False, model=model)
