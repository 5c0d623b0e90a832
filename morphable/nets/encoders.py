"""Frozen face-recognition encoders: the feature extractors of the regressors.

:class:`DlibEncoder` wraps our port of dlib's face-recognition ResNet (:class:`~morphable.identity.DlibFaceNet`):
it returns the 256-D globally pooled features before the last fully connected layer (Genova et al. feed
FaceNet's pre-normalisation avgpool layer to their decoder, Sec. 3.1, finding it better than the final
embedding) and the 128-D descriptor (used by the identity loss). Its weights never train.

:func:`strided_cnn` builds the other kind of encoder: a plain stack of strided 3 × 3 convolutions trained
from scratch, small enough for a few milliseconds per face on a CPU (CoarseNet's, RingNet's small trunk).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from morphable.identity.alignment import extract_face_chips
from morphable.identity.dlib_resnet import CHIP_PADDING, CHIP_SIZE, DlibFaceNet

POOLED_DIM = 256
DESCRIPTOR_DIM = 128


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
        """dlib-aligned chips ``(B, 150, 150, 3)`` of photos ``(B, H, W, 3)`` in [0, 1] at 68 landmarks ``(B, 68, 2)`` px."""
        return extract_face_chips(images, landmarks, size=CHIP_SIZE, padding=CHIP_PADDING)

    def encode_photos(self, images: Tensor, landmarks: Tensor) -> EncoderOutput:
        """Chips then features; photos of different sizes can be passed one at a time."""
        return self(self.chips(images, landmarks))


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
