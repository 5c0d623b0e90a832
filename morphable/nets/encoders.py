"""Face-recognition encoders: the feature extractors of the regressors.

:class:`DlibEncoder` wraps our port of dlib's face-recognition ResNet (:class:`~morphable.identity.DlibFaceNet`):
it returns the 256-D globally pooled features before the last fully connected layer (Genova et al. feed
FaceNet's pre-normalisation avgpool layer to their decoder, Sec. 3.1, finding it better than the final
embedding) and the 128-D descriptor (used by the identity loss). Its weights never train.
:class:`DlibMapTrunk` reads the same network's spatial map after some of its blocks, the last of them
fine-tuned (the trunk of the 3DMM-STN localiser and of CoarseNet).

:func:`strided_cnn` builds the other kind of encoder: a plain stack of strided 3 × 3 convolutions trained
from scratch, small enough for a few milliseconds per face on a CPU (CoarseNet's, RingNet's small trunk).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from morphable.identity.alignment import extract_face_chips
from morphable.identity.dlib_resnet import (
    CHIP_PADDING,
    CHIP_SIZE,
    PRECISIONS,
    DlibBlocks,
    DlibFaceNet,
    check_side,
    feature_map_shape,
    inference_dtype,
)
from morphable.identity.dlib_serialization import BLOCKS

POOLED_DIM = 256
DESCRIPTOR_DIM = 128
DLIB_BLOCKS = len(BLOCKS)
"""The depth of dlib's network: all its residual blocks (14)."""


@dataclass(frozen=True)
class EncoderOutput:
    """``pooled``: ``(B, 256)`` pre-fc features; ``descriptor``: ``(B, 128)`` dlib descriptor."""

    pooled: Tensor
    descriptor: Tensor


class DlibEncoder(nn.Module):
    """dlib's ResNet as a frozen encoder of aligned 150 × 150 chips (or of photos + 68 landmarks).

    Args:
        net: an existing :class:`DlibFaceNet` to share (default: load the packaged weights).
    """

    def __init__(self, net: DlibFaceNet | None = None):
        super().__init__()
        self.net = net if net is not None else DlibFaceNet()
        self.net.requires_grad_(False)

    def forward(self, chips: Tensor) -> EncoderOutput:
        """``chips`` ``(B, 150, 150, 3)`` RGB in [0, 1] → :class:`EncoderOutput` (gradients reach the chips)."""
        pooled, descriptor = self.net.features(chips)
        return EncoderOutput(pooled, descriptor)

    @staticmethod
    def chips(images: Tensor, landmarks: Tensor) -> Tensor:
        """dlib-aligned chips ``(B, 150, 150, 3)`` of photos ``(B, H, W, 3)`` in [0, 1] at 68 landmarks
        ``(B, 68, 2)`` px."""
        return extract_face_chips(images, landmarks, size=CHIP_SIZE, padding=CHIP_PADDING)

    def encode_photos(self, images: Tensor, landmarks: Tensor) -> EncoderOutput:
        """Chips then features; photos of different sizes can be passed one at a time."""
        return self(self.chips(images, landmarks))


def check_trunk_precision(precision: str, trunk: str) -> None:
    """A recipe's trunk precision setting: one of :data:`~morphable.identity.dlib_resnet.PRECISIONS`, and other than
    ``float32`` only for the ``dlib`` trunk (the small one has no other). Raises ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "float32" and trunk != "dlib":
        raise ValueError("precision other than float32 needs trunk 'dlib' (the small trunk has no other)")


class DlibMapTrunk(nn.Module):
    """The dlib ResNet cut after ``blocks`` residual blocks, its flattened map the features: crops
    ``(B, S, S, 3)`` → ``(B, F)``, standardised by per-feature statistics of the training crops
    (:meth:`set_statistics`); the trunk of the 3DMM-STN localiser and of CoarseNet. ``size`` S: dlib's 150 px,
    or smaller crops for speed (the network is convolutional; 96 px crops end in a 64 × 11 × 11 map after 7
    blocks, 128 × 5 × 5 after 10; docs/stn.md measures both).

    ``blocks``: the residual blocks run (:data:`DLIB_BLOCKS`: all 14, the 256 × 2 × 2 map before the global pool,
    F = 1024; 13: the 256 × 4 × 4 map, F = 4096; 10: the 128 × 8 × 8 map, F = 8192;
    :func:`~morphable.identity.dlib_resnet.feature_map_shape`). ``tune``: the last this-many of them are
    trainable copies (:class:`~morphable.identity.dlib_resnet.DlibBlocks`, fine-tuned as the paper fine-tunes
    VGG-Faces); the others stay frozen, so training caches their output (:meth:`raw`) and runs only the
    tuned blocks (:meth:`features`).

    ``precision`` (:meth:`set_precision`; :data:`~morphable.identity.dlib_resnet.PRECISIONS`) sets the
    convolutions' dtype: ``"float32"`` (the default) or ``"auto"`` (bfloat16 on CPUs that have it natively,
    :func:`~morphable.identity.dlib_resnet.inference_dtype`; :func:`~morphable.nets.stn_localiser.load_localiser`
    and :func:`~morphable.nets.coarse.load_coarse` take it). The tuned blocks honour it while training too (mixed
    precision, :class:`~morphable.identity.dlib_resnet.DlibBlocks`; the CoarseNet recipe's ``model.precision``, the
    STN recipe's ``net.precision``).
    """

    def __init__(self, net: DlibFaceNet | None = None, blocks: int = DLIB_BLOCKS, tune: int = 0,
                 size: int = CHIP_SIZE):
        super().__init__()
        if not 0 <= tune < blocks:
            raise ValueError(f"DlibMapTrunk: tune must be in [0, blocks={blocks}), got {tune}")
        check_side(blocks, size)
        self.blocks, self.tune, self.size = int(blocks), int(tune), int(size)
        self.dim = math.prod(feature_map_shape(self.blocks, self.size))
        self.raw_shape = feature_map_shape(self.blocks - self.tune, self.size)
        self.net = net if net is not None else DlibFaceNet()
        self.net.requires_grad_(False)
        self.tuned = DlibBlocks(self.net, self.blocks - self.tune, self.blocks) if self.tune else None
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))
        self.precision = "float32"

    def set_precision(self, precision: str) -> None:
        """Set :attr:`precision`, refusing an unknown one or bfloat16 where oneDNN cannot run it (ValueError)."""
        inference_dtype(precision)
        self.precision = precision

    def raw(self, crops: Tensor) -> Tensor:
        """The frozen blocks' activations, flattened ``(B, C·h·w)`` (what training caches)."""
        return self.net.feature_map(crops, self.blocks - self.tune, inference_dtype(self.precision)).flatten(1)

    def lift(self, raw: Tensor) -> Tensor:
        """:meth:`raw`'s output through the tuned blocks (none: unchanged), unstandardised ``(B, F)``."""
        if self.tuned is None:
            return raw
        return self.tuned(raw.reshape(-1, *self.raw_shape), inference_dtype(self.precision)).flatten(1)

    def set_statistics(self, lifted: Tensor) -> None:
        """Set the standardisation from :meth:`lift`'s outputs ``(N, F)`` of training crops: their mean, and their
        standard deviation floored at its median, so that features nearly constant on the training crops (e.g.
        synthetic faces) do not blow up on others."""
        std = lifted.std(0)
        self.mean.copy_(lifted.mean(0))
        self.std.copy_(std.clamp_min(float(std.median())))

    def standardise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def features(self, raw: Tensor) -> Tensor:
        """The head's input ``(B, F)`` from :meth:`raw`'s output."""
        return self.standardise(self.lift(raw))

    def forward(self, crops: Tensor) -> Tensor:
        return self.features(self.raw(crops))


def flip_chips(chips: Tensor) -> Tensor:
    """Mirror chips left-right ``(B, S, S, 3)``: a mirrored face is a plausible face (augmentation)."""
    return torch.flip(chips, dims=[2])


def strided_cnn(widths: tuple[int, ...], strides: tuple[int, ...], in_channels: int = 3) -> list[nn.Module]:
    """Layers of a plain CNN: per ``(width, stride)`` a 3 × 3 convolution (padding 1, no bias), batch norm
    and ReLU. A side ``S`` input ends as ``widths[-1]`` channels at ``S / Π strides`` (rounded up)."""
    if len(widths) != len(strides):
        raise ValueError(f"strided_cnn: {len(widths)} widths but {len(strides)} strides")
    layers: list[nn.Module] = []
    for width, stride in zip(widths, strides):
        layers += [nn.Conv2d(in_channels, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_channels = width
    return layers
