"""CoarseNet (Guo, Zhang et al., "CNN-based Real-time Dense Face Reconstruction with Inverse-rendered
Photo-realistic Face Images", TPAMI 2018; seed ``zhang-deep-3d-face-modeling.txt``, "CoarseNet"):
a face chip → the coarse model's parameters χ = {α_id, α_exp, α_alb, s} (geometry), {pitch, yaw, roll, t_x,
t_y} (pose) and L (SH light), the seed's "Inverse Rendering - Coarse" unknowns.

The seed reports 20 ms per frame for the paper's networks. Ours must run in ≤ 5 ms on two CPU threads,
so it is a plain 7-layer strided CNN (3 × 3 convolutions, batch norm, ReLU; 0.78 M weights,
46 M multiply-adds) on a 96 px chip, trained from scratch on the inverse-rendered data
(:mod:`morphable.train.inverse_rendered`; recipe :mod:`morphable.train.recipes.coarse`).

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
from os import PathLike

import torch
from torch import Tensor, nn

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
from morphable.models.base import MorphableModel
from morphable.nets.encoders import strided_cnn
from morphable.nets.layout import ParamLayout
from morphable.nets.weights import load_net, save_net

FORMAT = "morphable-coarsenet"
VERSION = 1
WIDTHS = (24, 48, 48, 96, 96, 160, 256)
STRIDES = (2, 2, 1, 2, 1, 2, 2)
"""Convolution widths and strides: a 96 px chip ends as 3 × 3 × 256 before the global average pool."""
ALBEDO_MODES = 32
"""M, the smooth albedo modes besides the constant (the photometric fit's ``albedo_modes``)."""


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
    Attributes:
        mean, std: ``(layout.size,)`` buffers: the training targets' statistics (``y = mean + std ⊙ raw``).
    """

    def __init__(self, model_name: str, layout: ParamLayout, size: int = 96):
        super().__init__()
        self.model_name, self.layout, self.size = model_name, layout, size
        self.features = nn.Sequential(*strided_cnn(WIDTHS, STRIDES), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(WIDTHS[-1], 256), nn.ReLU(inplace=True), nn.Linear(256, layout.size))
        nn.init.zeros_(self.head[-1].weight)  # starts at the targets' mean
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("mean", torch.zeros(layout.size))
        self.register_buffer("std", torch.ones(layout.size))
        # channels-last weights: the (B, S, S, 3) chips permuted to NCHW already are; about 30 % faster on CPU
        self.features.to(memory_format=torch.channels_last)

    def raw(self, images: Tensor) -> Tensor:
        """Standardised outputs ``(B, layout.size)`` of chips ``(B, S, S, 3)`` in [0, 1]."""
        if images.dim() != 4 or images.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"CoarseNet: expected chips (B, {self.size}, {self.size}, 3), got {tuple(images.shape)}")
        x = (images.permute(0, 3, 1, 2).to(self.mean.dtype) - 0.5) / 0.25
        return self.head(self.features(x))

    def forward(self, images: Tensor) -> Tensor:
        """The flat parameter vector ``(B, layout.size)`` (:func:`decode` names it)."""
        return self.mean + self.std * self.raw(images)

    def predict(self, images: Tensor) -> CoarseParams:
        """:func:`decode` of :meth:`forward`."""
        return decode(self.layout, self.size, self(images))


def save_coarse(net: CoarseNet, path: str | PathLike, meta: dict | None = None) -> None:
    """Write the weights, buffers and layout atomically (:func:`~morphable.nets.weights.save_net`)."""
    save_net(net, path, FORMAT, VERSION, {"model_name": net.model_name, "size": net.size,
                                          "layout": [[n, int(k)] for n, k in net.layout.blocks]}, meta)


def load_coarse(name_or_path: str | PathLike) -> CoarseNet:
    """A CoarseNet from :func:`save_coarse`'s file (or a shipped name), in eval mode.

    Raises:
        ModelFileError: missing, corrupt or inconsistent file (one line naming it).
    """
    def build(data: dict) -> CoarseNet:
        layout = ParamLayout(tuple((str(n), int(k)) for n, k in data["layout"]))
        return CoarseNet(str(data["model_name"]), layout, int(data["size"]))

    return load_net(name_or_path, FORMAT, VERSION, "CoarseNet", build)
