"""The SIR network (Jiang et al., "Reconstructing Recognizable 3D Face Shapes based on 3D Morphable Models",
arXiv 2104.03515, 2021): a shared feature extractor, three encoders and a confidence network.

Paper: "Encoder module 1" extracts features that three encoders (modules 2, 3, 4) share: shape; expression
and pose; albedo and illumination. A separate confidence network predicts per-pixel confidence maps (the
model's aleatoric uncertainty) that weigh the pixel and landmark losses during training.

Here (a CPU-trainable version on our parts):

* **Encoder module 1** (:class:`SIRNet`, ``trunk`` + ``shared``): dlib's face-recognition ResNet
  (:class:`~morphable.nets.ringnet.DlibTrunk`, frozen) read at three depths on the dlib-aligned 150 × 150
  chip (:func:`~morphable.identity.alignment.extract_face_chips`), 2560 values standardised with fixed
  training statistics, then a trainable FC-``hidden`` + ReLU. The trunk's weights never train, so training
  caches its output per image.
* **Encoders 2–4** (``shape_encoder``, ``pose_encoder``, ``appearance_encoder``): FC-256 + ReLU + linear each,
  output layers initialised small (the mean face, frontal, mean albedo at the start):
  ``shape`` (the model's standardised identity coefficients, at most :data:`MAX_SHAPE`);
  ``rotation`` (axis-angle, model → view) and ``expression`` (all the model's blendshape weights, or at most
  :data:`MAX_EXPRESSION` PCA coefficients); ``albedo`` (the low-frequency albedo space of
  :mod:`morphable.fitting.albedo`, 3 + 3·modes coefficients) and ``light`` (9: ambient colour, light
  direction offset, light colour; :func:`lighting_from_params`).
* **Confidence network** (:class:`ConfidenceNet`): a small CNN on the chip at :data:`CONFIDENCE_SIZE` px
  giving two ``log σ`` maps, one for the pixel loss and one for the landmark loss (sampled at the landmarks).

Camera: the chip is aligned by a similarity to dlib's template, so the chip camera is not regressed: it is
the similarity that puts the predicted face's template landmarks, seen under the predicted rotation, onto the
template (:func:`chip_camera`, as :class:`~morphable.train.chip_render.ChipRenderer` renders chips).

Inference (:func:`fit_with_sir`, ``morphable fit --method sir``): the regressed shape is the mean of the
landmark fit's identity prior, with precision ``prior_precision`` chosen on held-out synthetic faces at the
end of training (as for Genova's regressor).
"""
from __future__ import annotations

from functools import lru_cache
from os import PathLike

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morphable.errors import ModelFileError
from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from morphable.identity.alignment import chip_template, extract_face_chips, similarity_transform
from morphable.identity.dlib_resnet import CHIP_PADDING, CHIP_SIZE, DlibFaceNet
from morphable.models.base import MorphableModel
from morphable.nets.layout import ParamLayout
from morphable.nets.ringnet import FEATURE_DIM, DlibTrunk
from morphable.nets.weights import load_net, save_net

FORMAT = "morphable-sir"
VERSION = 1
MAX_SHAPE = 100
MAX_EXPRESSION = 50
LIGHT_SIZE = 9
CONFIDENCE_SIZE = 64
"""Side (px) of the chip the confidence network reads and of its maps."""
LIGHT_DISTANCE_MM = 3000.0


# ------------------------------------------------------------------------------------------------ layouts
def sir_layouts(model: MorphableModel, albedo_size: int) -> dict[str, ParamLayout]:
    """The three encoders' outputs for ``model``: ``shape``; ``pose`` (``rotation`` 3, ``expression``);
    ``appearance`` (``albedo`` ``albedo_size``, ``light`` 9)."""
    n_exp = model.n_expression if model.expression_kind == "blendshapes" else min(model.n_expression, MAX_EXPRESSION)
    return {"shape": ParamLayout((("shape", min(model.n_identity, MAX_SHAPE)),)),
            "pose": ParamLayout((("rotation", 3), ("expression", n_exp))),
            "appearance": ParamLayout((("albedo", int(albedo_size)), ("light", LIGHT_SIZE)))}


def lighting_from_params(light: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(B, 9)`` light parameters → one point light :data:`LIGHT_DISTANCE_MM` away (the second of the chip
    renderer's two lights dark), as the fields of :class:`~morphable.train.chip_render.Lighting`: positions
    ``(B, 2, 3)`` (view frame, mm), colours ``(B, 2, 3)``, ambient ``(B, 1, 3)``, specular ``(B, 1, 1)``.
    Ambient ``0.3·exp(0.7 tanh(l[0:3]))``, direction ``normalise((0, 0, 1) + l[3:6])``, colour
    ``0.7·exp(0.7 tanh(l[6:9]))``, specular 0.1: zero parameters are a frontal white-ish light."""
    B = light.shape[0]
    ambient = 0.3 * torch.exp(0.7 * torch.tanh(light[:, 0:3]))
    direction = F.normalize(light[:, 3:6] + light.new_tensor([0.0, 0.0, 1.0]), dim=-1)
    color = 0.7 * torch.exp(0.7 * torch.tanh(light[:, 6:9]))
    positions = torch.stack([direction, direction], 1) * LIGHT_DISTANCE_MM
    colors = torch.stack([color, torch.zeros_like(color)], 1)
    return positions, colors, ambient[:, None], light.new_full((B, 1, 1), 0.1)


def chip_camera(landmarks3d: Tensor, rotation: Tensor, valid: Tensor | None = None,
                size: int = CHIP_SIZE) -> ScaledOrthographic:
    """The chip camera of a face: the similarity putting its template landmarks, seen under ``rotation``,
    onto dlib's chip template (the alignment :class:`~morphable.train.chip_render.ChipRenderer` uses).

    Args:
        landmarks3d: ``(B, 68, 3)`` the face's iBUG landmarks, model space (mm).
        rotation: ``(B, 3)`` axis-angle, model → view.
        valid: ``(68,)`` bool, the points the model defines (others are left out of the alignment).
        size: chip side (px).
    Returns:
        a :class:`ScaledOrthographic` in chip px (y down).
    """
    ids, template = chip_template(68, size, CHIP_PADDING)
    lm = landmarks3d[:, ids]
    ok = torch.ones(len(ids), dtype=torch.bool) if valid is None else valid.cpu()[ids]
    R = axis_angle_to_matrix(rotation)
    view = lm[:, ok] @ R.transpose(1, 2)
    q = torch.stack([view[..., 0], -view[..., 1]], -1)
    Mt = similarity_transform(q, template[ok].to(q).expand(q.shape[0], -1, -1))  # (B, 2, 3) = [a −b; b a | t]
    a, b, t = Mt[:, 0, 0], Mt[:, 1, 0], Mt[:, :, 2]
    phi = torch.atan2(b, a)
    zero = torch.zeros_like(phi)
    rz = axis_angle_to_matrix(torch.stack([zero, zero, -phi], -1))
    return ScaledOrthographic(torch.sqrt(a * a + b * b), matrix_to_axis_angle(rz @ R), t)


def landmarks_to_chip(landmarks: Tensor, size: int = CHIP_SIZE) -> Tensor:
    """Photo landmarks ``(B, 68, 2)`` px → the same points in their dlib chip's px (the least-squares
    similarity of the template points onto dlib's template, as :func:`extract_face_chips` aligns)."""
    ids, template = chip_template(68, size, CHIP_PADDING)
    lm = landmarks.to(torch.float64)
    Mt = similarity_transform(lm[:, ids], template.to(lm).expand(len(lm), -1, -1))
    return (lm @ Mt[:, :, :2].transpose(1, 2) + Mt[:, None, :, 2]).to(landmarks.dtype)


# ------------------------------------------------------------------------------------------------ network
def _encoder(hidden: int, out: int, gain: float) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(hidden, 256), nn.ReLU(), nn.Linear(256, out))
    nn.init.xavier_uniform_(net[-1].weight, gain=gain)
    nn.init.zeros_(net[-1].bias)
    return net


class ConfidenceNet(nn.Module):
    """Chips ``(B, S, S, 3)`` in [0, 1] (S = :data:`CONFIDENCE_SIZE`) → ``(B, 2, S, S)`` log σ maps
    (channel 0: pixel loss, channel 1: landmark loss): three 3 × 3 convolutions (stride 2, 2, 1; 16, 32, 32
    channels, ReLU), a 1 × 1 convolution, bilinear upsampling × 4, and ``4 tanh(·/4)`` (σ in e^±4)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 2, 1))

    def forward(self, chips: Tensor) -> Tensor:
        x = self.body(chips.permute(0, 3, 1, 2) - 0.5)
        x = F.interpolate(x, size=chips.shape[1:3], mode="bilinear", align_corners=False)
        return 4 * torch.tanh(x / 4)


def small_chips(chips: Tensor, size: int = CONFIDENCE_SIZE) -> Tensor:
    """``(B, 150, 150, 3)`` chips → ``(B, size, size, 3)`` (antialiased bilinear)."""
    x = F.interpolate(chips.permute(0, 3, 1, 2), size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0, 1)


def sample_map(maps: Tensor, points: Tensor, size: int = CHIP_SIZE) -> Tensor:
    """Values of ``(B, H, W)`` maps at chip points ``(B, L, 2)`` (px of a ``size`` chip; bilinear, clamped at
    the border; NaN points read the centre) → ``(B, L)``."""
    p = torch.nan_to_num(points, nan=(size - 1) / 2)
    grid = ((p + 0.5) / size * 2 - 1).to(maps)[:, :, None]  # (B, L, 1, 2), align_corners=False convention
    return F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0, :, 0]


class SIRNet(nn.Module):
    """The SIR network (see the module docstring).

    Args:
        model_name: the morphable model the outputs refer to.
        layouts: :func:`sir_layouts`; n_identity: the model's identity count (shapes are padded to it).
        hidden: width of encoder module 1's trainable layer; dropout: after it (training only).
        albedo_modes: harmonic modes of the albedo space (``albedo`` has 3 + 3·modes values).
        net: a :class:`DlibFaceNet` to share.
    Attributes:
        prior_precision: λ of the identity prior of :func:`fit_with_sir` (set at the end of training).
    """

    def __init__(self, model_name: str, layouts: dict[str, ParamLayout], n_identity: int, *, hidden: int = 512,
                 dropout: float = 0.1, albedo_modes: int = 8, net: DlibFaceNet | None = None):
        super().__init__()
        self.model_name = model_name
        self.n_identity = int(n_identity)
        self.layouts = layouts
        self.hidden, self.dropout, self.albedo_modes = int(hidden), float(dropout), int(albedo_modes)
        self.trunk = DlibTrunk(net, 0)
        self.register_buffer("feature_mean", torch.zeros(FEATURE_DIM))
        self.register_buffer("feature_std", torch.ones(FEATURE_DIM))
        self.shared = nn.Sequential(nn.Linear(FEATURE_DIM, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.shape_encoder = _encoder(hidden, layouts["shape"].size, 0.1)
        self.pose_encoder = _encoder(hidden, layouts["pose"].size, 0.01)
        self.appearance_encoder = _encoder(hidden, layouts["appearance"].size, 0.01)
        self.confidence = ConfidenceNet()
        self.prior_precision = 1.0

    def set_feature_statistics(self, features: Tensor) -> None:
        """Fix the input standardisation from training features ``(N, FEATURE_DIM)``."""
        with torch.no_grad():
            self.feature_mean.copy_(features.mean(0))
            self.feature_std.copy_(features.std(0).clamp_min(1e-3))

    def encode(self, features: Tensor) -> dict[str, Tensor]:
        """Trunk features ``(B, FEATURE_DIM)`` → ``{shape, rotation, expression, albedo, light}``."""
        h = self.shared((features - self.feature_mean) / self.feature_std)
        return {**self.layouts["shape"].split(self.shape_encoder(h)),
                **self.layouts["pose"].split(self.pose_encoder(h)),
                **self.layouts["appearance"].split(self.appearance_encoder(h))}

    def forward(self, chips: Tensor) -> dict[str, Tensor]:
        """dlib-aligned chips ``(B, 150, 150, 3)`` in [0, 1] → named parameters (no confidence maps)."""
        return self.encode(self.trunk(chips))

    def predict(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        """Photos ``(B, H, W, 3)`` in [0, 1] with their 68 landmarks ``(B, 68, 2)`` px → named parameters
        (eval mode, no gradients)."""
        images = torch.as_tensor(images, dtype=torch.float32)
        landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
        if images.dim() != 4 or landmarks.shape != (len(images), 68, 2):
            raise ValueError(f"SIRNet.predict: expected images (B, H, W, 3) and landmarks (B, 68, 2), got "
                             f"{tuple(images.shape)} and {tuple(landmarks.shape)}")
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self(extract_face_chips(images, landmarks))
        finally:
            self.train(was)

    def predict_identity(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """The regressed shape padded with zeros to the model's identity count ``(B, n_identity)`` (the
        interface of :meth:`~morphable.nets.genova.GenovaRegressor.predict_identity`)."""
        shape = self.predict(images, landmarks)["shape"]
        n = int(self.n_identity)
        return torch.cat([shape, shape.new_zeros(len(shape), n - shape.shape[1])], 1)


def new_sir(model: MorphableModel, model_name: str, albedo_size: int, **kwargs) -> SIRNet:
    """A fresh :class:`SIRNet` for ``model``."""
    return SIRNet(model_name, sir_layouts(model, albedo_size), model.n_identity, **kwargs)


# ------------------------------------------------------------------------------------------------ weights
def save_sir(net: SIRNet, path: str | PathLike, meta: dict | None = None) -> None:
    """Write ``net`` atomically: trainable weights float16, buffers float32, no trunk (dlib's packaged weights)."""
    save_net(net, path, FORMAT, VERSION,
             {"model_name": net.model_name,
              "layouts": {name: [[n, int(k)] for n, k in lay.blocks] for name, lay in net.layouts.items()},
              "hidden": net.hidden, "dropout": net.dropout, "albedo_modes": net.albedo_modes,
              "n_identity": int(net.n_identity), "prior_precision": float(net.prior_precision)}, meta,
             half=lambda k, v: v.is_floating_point() and not k.startswith("feature_"), skip=("trunk.",))


def load_sir(path: str | PathLike, net: DlibFaceNet | None = None) -> SIRNet:
    """Read a file written by :func:`save_sir` (a shipped name such as ``"sir-ict"``, sha256 checked, or a
    path; ``torch.load(weights_only=True)``).

    Raises:
        ModelFileError: missing, unreadable or inconsistent file.
    """
    def build(data: dict) -> SIRNet:
        layouts = {name: ParamLayout(tuple((str(n), int(k)) for n, k in blocks))
                   for name, blocks in data["layouts"].items()}
        out = SIRNet(str(data["model_name"]), layouts, int(data["n_identity"]), hidden=int(data["hidden"]),
                     dropout=float(data["dropout"]), albedo_modes=int(data["albedo_modes"]), net=net)
        out.prior_precision = float(data["prior_precision"])
        return out

    return load_net(path, FORMAT, VERSION, "SIR", build, skipped=("trunk.",))


@lru_cache(maxsize=None)
def shipped_sir(model_name: str) -> SIRNet:
    """The shipped ``sir-<model_name>`` network (sha256 checked; one shared instance per process).

    Raises:
        ModelFileError: none ships for this model, or its file is missing or corrupt.
    """
    from morphable.nets.weights import SHIPPED

    key = f"sir-{model_name}"
    if key not in SHIPPED:
        known = ", ".join(k.removeprefix("sir-") for k in sorted(SHIPPED) if k.startswith("sir-")) or "none"
        raise ModelFileError(key, f"no shipped SIR network for model {model_name!r} (shipped: {known})")
    return load_sir(key)


def fit_with_sir(model: MorphableModel, net: SIRNet, images, landmarks: Tensor, *, iterations: int = 5,
                 lambda_identity: float | None = None):
    """``morphable fit --method sir``: the landmark fit (:func:`~morphable.fitting.landmarks.fit_landmarks`)
    with its identity prior centred at the SIR shape, precision ``lambda_identity`` (default the network's
    ``prior_precision``).

    Args:
        images: B photos ``(H, W, 3)`` float in [0, 1] (sizes may differ); landmarks: ``(B, 68, 2)`` px.
    Returns:
        a :class:`~morphable.fitting.landmarks.LandmarkFit`.
    """
    from morphable.fitting.landmarks import fit_landmarks

    landmarks = torch.as_tensor(landmarks, dtype=model.mean.dtype)
    mu = torch.cat([net.predict_identity(torch.as_tensor(img, dtype=torch.float32)[None], lm[None].float())
                    for img, lm in zip(images, landmarks)])
    lam = net.prior_precision if lambda_identity is None else lambda_identity
    return fit_landmarks(model, landmarks, iterations=iterations, identity_prior_mean=mu.to(landmarks),
                         lambda_identity=lam)
