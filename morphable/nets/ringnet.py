"""RingNet (Sanyal, Bolkart, Feng & Black, "Learning to Regress 3D Face Shape and Expression from an Image
without 3D Supervision", CVPR 2019): one network from a face crop to camera, pose, shape and expression.

Encoder (Sec. 4, "RingNet"): a feature extractor and an iterative-error-feedback regressor.

* **Features**: the paper uses an ImageNet ResNet-50's 2048-D pool. Two trunks here: :class:`SmallTrunk`
  (``trunk="small"``, what ``ringnet-ict`` ships), a five-layer CNN trained from scratch on a 64 px sampling
  of the crop, for a few milliseconds per face on a CPU; and :class:`DlibTrunk` (``trunk="dlib"``, shipped as
  ``ringnet-ict-dlib``), which reads our port of dlib's
  face-recognition ResNet (:mod:`morphable.identity.dlib_resnet`) at three depths so that pose and position
  survive the global pooling a recognition network is trained to be invariant to: level 2 (block 9,
  128 × 8 × 8), level 1 (block 12, 256 × 4 × 4: dlib zero-pads the 3 × 3 conv output to its pooled
  shortcut's size) and level 0 (block 13, 256 × 2 × 2), each average-pooled to 2 × 2: :data:`FEATURE_DIM` =
  512 + 1024 + 1024 = 2560 values, standardised with fixed statistics of the training features. The last
  ``finetune_blocks`` residual blocks get trainable copies of dlib's weights (the paper fine-tunes its whole
  ResNet; on a CPU we tune at most the last four blocks).
* **Regressor**: :class:`~morphable.nets.heads.IterativeErrorFeedback`, 3 iterations of 2 × (FC-512, ReLU,
  dropout) + linear (paper: "two fully-connected layers of 512 dimensions with ReLU and dropout").
* **Output** (:func:`ringnet_layout`): ``camera`` (log scale offset, 2D translation; 3), ``rotation``
  (global, axis-angle; 3), ``jaw`` (axis-angle; 3, FLAME only), ``shape`` (the model's standardised identity
  coefficients, at most 100) and ``expression`` (FLAME/PCA: at most 50; blendshape models: all their
  weights): 3 + 6 + 100 + 50 = 159 values for FLAME, as in the paper.

Input: a square crop of the photo (:func:`face_crop`, sampled at the trunk's ``input_size``: 150 or 64 px; its
camera frame is always the :data:`CROP_SIZE` px one) around the face's box, :data:`CROP_SCALE` times the
larger side of the 68 landmarks' bounding box (:func:`landmark_box`; training adds random scale and
translation jitter). The crop is not aligned to the landmarks: the network has to find the pose itself.

Camera (scaled orthographic in crop pixels, :class:`~morphable.geometry.camera.ScaledOrthographic`):
``scale = s0 · exp(camera[0])`` and ``translation = t0 + camera[1:3] · CROP_SIZE / 2``, where ``s0`` and
``t0`` put the model's mean face, frontal, in the middle of the crop at the crop rule's size: a zero output is
the mean face, centred and frontal.

Decoder (:class:`RingNetDecoder`, fixed weights): the model's 68 landmarks projected by the camera, with
the jawline chosen per pose: FLAME's dynamic contour embedding through LBS (the paper's "dynamic 3D
landmarks"), and for linear models (ICT, SFM, BFM) the contour candidates of
:mod:`morphable.fitting.contour` (the nearest contour-list or occluding-edge vertex to each jaw landmark).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morphable.fitting.contour import CONTOUR_IDS, contour_correspondences, contour_terms, flame_dynamic_contour
from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import axis_angle_to_matrix
from morphable.identity.dlib_resnet import (  # dlib's own layer runners: one definition of each block's maths
    CHIP_SIZE,
    DlibFaceNet,
    add_padded,
    conv_specs,
    FusedLayers,
    Layers,
)
from morphable.identity.dlib_serialization import BLOCKS, NUM_CONVS
from morphable.models.base import MorphableModel
from morphable.models.flame import Flame
from morphable.models.functional import barycentric_points
from morphable.nets.encoders import strided_cnn
from morphable.nets.heads import IterativeErrorFeedback
from morphable.nets.layout import ParamLayout
from morphable.nets.weights import load_net, save_net

FORMAT = "morphable-ringnet"
VERSION = 1
CROP_SIZE = CHIP_SIZE
"""Side of the network's input crop (px): dlib's trunk and its level-1 3 × 3 map are sized for 150."""
CROP_SCALE = 1.6
"""Crop side / larger side of the 68 landmarks' bounding box (forehead and chin fit with jitter to spare)."""
TAPS = {9: "level2", 12: "level1", 13: "level0"}
"""Residual blocks whose outputs are read (block index → dlib level)."""
FEATURE_DIM = (128 + 256 + 256) * 4
MAX_SHAPE = 100
MAX_EXPRESSION = 50


# ------------------------------------------------------------------------------------------------ layout
def ringnet_layout(model: MorphableModel, n_shape: int = MAX_SHAPE, n_expression: int = MAX_EXPRESSION) -> ParamLayout:
    """The regressor's output for ``model``: ``camera`` (3), ``rotation`` (3), ``jaw`` (3, FLAME only),
    ``shape`` (min(n_identity, n_shape)) and ``expression`` (PCA: min(n_expression, n_expression cap);
    blendshapes: all the model's weights)."""
    blocks: list[tuple[str, int]] = [("camera", 3), ("rotation", 3)]
    if isinstance(model, Flame):
        blocks.append(("jaw", 3))
    n_exp = model.n_expression if model.expression_kind == "blendshapes" else min(model.n_expression, n_expression)
    blocks += [("shape", min(model.n_identity, n_shape)), ("expression", n_exp)]
    return ParamLayout(tuple(blocks))


# ------------------------------------------------------------------------------------------------- crops
@dataclass(frozen=True)
class CropFrame:
    """Where a crop sits in its photo: crop px = (photo px − ``origin``) · ``factor``.

    Attributes:
        origin: ``(B, 2)`` photo px of the crop's pixel (0, 0); factor: ``(B,)`` crop px per photo px.
    """

    origin: Tensor
    factor: Tensor

    def to_photo(self, points: Tensor) -> Tensor:
        """Crop px ``(B, N, 2)`` → photo px."""
        return points / self.factor[:, None, None] + self.origin[:, None]

    def to_crop(self, points: Tensor) -> Tensor:
        """Photo px ``(B, N, 2)`` → crop px."""
        return (points - self.origin[:, None]) * self.factor[:, None, None]

    def camera_to_photo(self, camera: ScaledOrthographic) -> ScaledOrthographic:
        """A crop-pixel camera as the same view in photo pixels."""
        return ScaledOrthographic(camera.scale / self.factor, camera.rotation,
                                  camera.translation / self.factor[:, None] + self.origin)


def landmark_box(landmarks: Tensor, scale: float = CROP_SCALE, jitter: Tensor | None = None) -> Tensor:
    """Square crop boxes ``(B, 4)`` (left, top, right, bottom; px; the landmarks' dtype and device) centred on
    the 68 landmarks' bounding box ``(B, 68, 2)`` (NaN rows ignored), of side ``scale`` × its larger side.

    ``jitter`` ``(B, 3)`` (training augmentation): the side is multiplied by ``exp(jitter[:, 0])`` and the
    centre moved by ``jitter[:, 1:] ×`` the side.
    """
    points = landmarks.detach().cpu().numpy() if isinstance(landmarks, Tensor) else np.asarray(landmarks)
    seen = np.isfinite(points).all(-1, keepdims=True)  # in numpy: a dozen tiny steps, no gradients needed
    lo = np.where(seen, points, math.inf).min(1)
    hi = np.where(seen, points, -math.inf).max(1)
    centre, half = (lo + hi) / 2, scale * (hi - lo).max(-1, keepdims=True) / 2
    if jitter is not None:
        jitter = torch.as_tensor(jitter).detach().cpu().numpy().astype(points.dtype)
        half = half * np.exp(jitter[:, :1])
        centre = centre + 2 * half * jitter[:, 1:]
    box = torch.from_numpy(np.concatenate([centre - half, centre + half], -1))
    return box.to(landmarks.device) if isinstance(landmarks, Tensor) else box


def crop_frame(box, size: int = CROP_SIZE, dtype: torch.dtype = torch.float64) -> CropFrame:
    """The :class:`CropFrame` (batch of one) of a ``size`` px crop of the square ``box`` ``(4,)`` (left, top,
    right, bottom px on pixel edges: the crop's pixel centres sit half a crop pixel inside it)."""
    ox, oy, factor = _crop_geometry(box.tolist() if isinstance(box, Tensor) else box, size)
    return CropFrame(torch.tensor([[ox, oy]], dtype=dtype), torch.tensor([factor], dtype=dtype))


def _resample_matrix(origin: float, factor: float, size: int, n: int) -> tuple[np.ndarray, int]:
    """One axis of :func:`face_crop`: the weights ``(size, m)`` (float64) of crop pixels ``s`` (at source px
    ``origin + s / factor``, centres at integers) on source pixels ``start … start + m − 1`` (the part of
    ``0 … n − 1`` they reach), and ``start``. The kernel is a triangle of half-width ``max(1, 1 / factor)``
    px, normalised over all integer positions before the photo's outside is cut away (black there)."""
    support = max(1.0, 1.0 / factor)
    lo = math.floor(origin - support)
    hi = math.ceil(origin + (size - 1) / factor + support) + 1
    if hi <= 0 or lo >= n:  # the box misses the photo
        return np.zeros((size, 1)), 0
    p = (origin - lo) + np.arange(size) / factor  # relative to lo
    # the band: every integer within the support of each p (its first strictly above p − support), in lo … hi + 1
    taps = np.floor(p - support).astype(np.intp)[:, None] + np.arange(1, int(2 * support) + 3)
    weights = np.abs(taps - p[:, None])
    weights *= -1.0 / support
    weights += 1.0
    np.maximum(weights, 0.0, out=weights)
    weights /= weights.sum(1, keepdims=True)
    width = hi - lo + 2
    A = np.zeros((size, width))
    A.ravel()[(np.arange(size) * width)[:, None] + taps] = weights
    start, stop = max(lo, 0), min(hi, n)
    return A[:, start - lo:stop - lo], start


def _block_level(factor: float) -> int:
    """L of :func:`face_crop`: a photo shrunk by 4× or more is first averaged over 2^L × 2^L blocks, the
    largest power of two with 2^L ≤ (1 / factor) / 2 (so the triangle still spans ≥ 2 blocks each side)."""
    shrink = 1.0 / factor
    return int(math.floor(math.log2(shrink / 2))) if shrink >= 4 else 0


def _block_means(photo: np.ndarray, top: int, left: int, h: int, w: int, level: int) -> np.ndarray:
    """Means of the 2^L × 2^L blocks ``(h, w, C)`` whose first is photo pixel (``top``, ``left``); zeros beyond
    the photo. uint8 photos are averaged by OpenCV's area resize (an integer factor: exact block means,
    rounded to uint8); float photos exactly."""
    k = 2 ** level
    part = photo[max(top, 0):top + h * k, max(left, 0):left + w * k]
    if part.shape[:2] != (h * k, w * k):  # the blocks overhang the photo
        padded = np.zeros((h * k, w * k, photo.shape[-1]), photo.dtype)
        padded[max(-top, 0):max(-top, 0) + part.shape[0], max(-left, 0):max(-left, 0) + part.shape[1]] = part
        part = padded
    if not level:
        return part
    if photo.dtype == np.uint8:
        import cv2

        return cv2.resize(part, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, -1)
    return part.reshape(h, k, w, k, -1).mean((1, 3))


def _crop_geometry(box, size: int) -> tuple[float, float, float]:
    """``(origin x, origin y, factor)`` of :func:`crop_frame`, as floats."""
    left, top, right, _ = (float(v) for v in box)
    factor = size / (right - left)
    shift = 0.5 / factor - 0.5
    return left + shift, top + shift, factor


def _crop(photo: np.ndarray, ox: float, oy: float, factor: float, size: int) -> Tensor:
    """:func:`face_crop` on a numpy photo ``(H, W, C)`` (uint8 or float) of the crop whose pixel (0, 0) sits at
    photo px (``ox``, ``oy``), ``factor`` crop px per photo px: ``(C, size, size)`` (float32 for uint8)."""
    (H, W), C = photo.shape[:2], photo.shape[-1]
    level = _block_level(factor)
    k = 2 ** level
    # block j covers photo px j·k … j·k + k − 1, centred at j·k + (k − 1) / 2
    Ay, y0 = _resample_matrix((oy - (k - 1) / 2) / k, factor * k, size, -(-H // k))
    Ax, x0 = _resample_matrix((ox - (k - 1) / 2) / k, factor * k, size, -(-W // k))
    h, w = Ay.shape[1], Ax.shape[1]
    blocks = _block_means(photo, y0 * k, x0 * k, h, w, level)
    dtype = np.float32 if photo.dtype == np.uint8 else photo.dtype
    if photo.dtype == np.uint8:  # 1/255 rides on the weights
        Ay = Ay / 255
    # the products in torch: numpy's BLAS keeps its own threads spinning, which starve torch's on few cores
    region = torch.from_numpy(blocks.reshape(h, w * C).astype(dtype))
    rows = torch.from_numpy(Ay.astype(dtype)) @ region                                # (S_y, w · C)
    rows = rows.view(size, w, C).permute(2, 0, 1).contiguous().view(C * size, w)    # (C · S_y, w): transpose the smaller
    return (rows @ torch.from_numpy(Ax.T.astype(dtype))).view(C, size, size)          # (C, S_y, S_x)


def _as_numpy(image) -> np.ndarray:
    """A photo given as a tensor (its CPU copy, shared when already on the CPU) or array, as a numpy array."""
    return image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)


def face_crop(image, box, size: int = CROP_SIZE) -> tuple[Tensor, CropFrame]:
    """The square ``box`` of a photo resampled to ``size`` × ``size``: bilinear when enlarging, antialiased
    when shrinking, black outside the photo.

    The filter, separable: a triangle kernel one crop pixel wide (half-width ``max(1, 1 / factor)`` photo px,
    ``factor`` = crop px per photo px: the filter of ``F.interpolate(..., mode="bilinear",
    antialias=True)``), normalised over all integer positions. A photo shrunk by 4× or more is first averaged
    over 2^L × 2^L blocks (:func:`_block_level`; blocks aligned to multiples of 2^L, zeros beyond the photo)
    and the triangle runs on the block centres, its width in blocks. Each axis is then one ``(size, m)``
    weight matrix over the ``m`` (block) pixels the box reaches: only the box's part of the photo is read
    (and converted, for uint8). The weights and block means are built in numpy (small arrays, where torch's
    per-call overhead would dominate), the two products run in torch; no gradients.
    :func:`face_crop_reference` is the slow, explicit form.

    Args:
        image: ``(H, W, C)`` float photo, or uint8 (read as ``/ 255``; its block means are rounded to uint8,
            within ``0.5 / 255`` of the float path), a CPU tensor or numpy array; box: ``(4,)`` left, top,
            right, bottom px (square, pixel edges: :func:`crop_frame`).
    Returns:
        crop ``(size, size, C)`` in ``image``'s dtype (float32 for uint8), and its :class:`CropFrame` (batch of
        one).
    """
    box = box.tolist() if isinstance(box, Tensor) else box
    crop = _crop(_as_numpy(image), *_crop_geometry(box, size), size).permute(1, 2, 0)
    return crop, crop_frame(box, size, crop.dtype)


def face_crop_reference(image: Tensor, box: Tensor, size: int = CROP_SIZE) -> Tensor:
    """Slow, explicit :func:`face_crop` (float64): the 2^L × 2^L block means computed one block at a time
    over a zero-padded copy of the photo, then per axis a dense ``(size, n)`` matrix of triangle weights
    built one entry at a time over an index range wide enough to hold every tap (normalised over it, then
    cut to the photo), applied as ``A_y · blocks · A_xᵀ``. uint8 photos are read as ``/ 255``."""
    frame = crop_frame(box, size)
    factor = float(frame.factor[0])
    k = 2 ** _block_level(factor)
    support = max(1.0, 1.0 / (factor * k))
    H, W, C = image.shape
    photo = image.to(torch.float64) / (255 if image.dtype == torch.uint8 else 1)
    nh, nw = -(-H // k), -(-W // k)
    padded = torch.zeros(nh * k, nw * k, C, dtype=torch.float64)
    padded[:H, :W] = photo
    blocks = torch.zeros(nh, nw, C, dtype=torch.float64)
    for i in range(nh):
        for j in range(nw):
            blocks[i, j] = padded[i * k:(i + 1) * k, j * k:(j + 1) * k].mean((0, 1))

    def weights(origin: float, n: int) -> Tensor:
        centres = [(origin + s / factor - (k - 1) / 2) / k for s in range(size)]  # in block units
        lo = min(0, math.floor(min(centres) - support) - 1)
        hi = max(n, math.ceil(max(centres) + support) + 2)
        A = torch.zeros(size, hi - lo, dtype=torch.float64)
        for s, p in enumerate(centres):
            for j in range(lo, hi):
                A[s, j - lo] = max(0.0, 1 - abs(j - p) / support)
        return (A / A.sum(1, keepdim=True))[:, -lo:n - lo]

    Ay, Ax = weights(float(frame.origin[0, 1]), nh), weights(float(frame.origin[0, 0]), nw)
    return torch.einsum("sh,hwc,tw->stc", Ay, blocks, Ax)


# -------------------------------------------------------------------------------------------------- trunk
@dataclass(frozen=True)
class FrozenPass:
    """What the frozen part of the trunk computes: ``taps`` (block → ``(B, C, 2, 2)``, already pooled) read
    before the tuned blocks, and ``boundary``, the input of the first tuned block (the last frozen output):
    small enough to cache per training crop."""

    taps: dict[int, Tensor]
    boundary: Tensor


def _blocks(x: Tensor, layers, start: int, stop: int, taps: dict[int, Tensor]) -> Tensor:
    """dlib's residual blocks ``start … stop − 1`` (see :func:`morphable.identity.dlib_resnet._run`), keeping
    the outputs of the :data:`TAPS` blocks in ``taps``."""
    for k in range(start, stop):
        i, stride = 1 + 2 * k, BLOCKS[k][1]
        y = layers.conv_relu(i, x)
        if stride == 1:
            x = layers.conv_add_relu(i + 1, y, x)
        else:
            x = F.relu_(add_padded(layers.conv(i + 1, y), F.avg_pool2d(x, kernel_size=2, stride=2)))
        if k in TAPS:
            taps[k] = x
    return x


class DlibTrunk(nn.Module):
    """dlib's ResNet read at :data:`TAPS`, with its last ``finetune_blocks`` blocks trainable.

    Args:
        net: the :class:`DlibFaceNet` whose fixed weights the frozen part uses (shared, not a submodule).
        finetune_blocks: 0 … 4 final residual blocks with trainable copies of dlib's weights.
    """

    def __init__(self, net: DlibFaceNet | None = None, finetune_blocks: int = 0):
        super().__init__()
        if not 0 <= finetune_blocks <= 4:
            raise ValueError(f"DlibTrunk: finetune_blocks must be in 0..4, got {finetune_blocks}")
        self._net = [net]
        self.finetune_blocks = int(finetune_blocks)
        self.first_tuned = len(BLOCKS) - self.finetune_blocks
        self.specs = conv_specs()
        tuned = range(1 + 2 * self.first_tuned, NUM_CONVS)
        self.tuned_weight = nn.ParameterList()
        self.tuned_bias = nn.ParameterList()
        if tuned:
            weights, biases = self.net._folded()
            for i in tuned:
                self.tuned_weight.append(nn.Parameter(weights[i].detach().clone().contiguous()))
                self.tuned_bias.append(nn.Parameter(biases[i].detach().clone()))

    @property
    def net(self) -> DlibFaceNet:
        if self._net[0] is None:
            self._net[0] = DlibFaceNet()
        return self._net[0]

    def frozen(self, crops: Tensor) -> FrozenPass:
        """``(B, S, S, 3)`` crops in [0, 1] → :class:`FrozenPass` (no gradients: these weights never train)."""
        if crops.dim() != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
            raise ValueError(f"DlibTrunk: expected crops (B, {CROP_SIZE}, {CROP_SIZE}, 3), got {tuple(crops.shape)}")
        weights, biases = self.net._folded()
        with torch.no_grad():
            x = crops.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
            if x.device.type == "cpu" and x.dtype == torch.float32:
                layers = FusedLayers([w.to(x) for w in weights], [b.to(x) for b in biases])
            else:
                layers = Layers(lambda i, v: F.conv2d(v, weights[i].to(v), biases[i].to(v), stride=self.specs[i][0],
                                                       padding=self.specs[i][1]))
            x = F.max_pool2d(layers.conv_relu(0, x), kernel_size=3, stride=2)
            taps: dict[int, Tensor] = {}
            x = _blocks(x, layers, 0, self.first_tuned, taps)
        return FrozenPass({k: F.adaptive_avg_pool2d(v, 2) for k, v in taps.items()}, x)

    def tuned(self, frozen: FrozenPass) -> Tensor:
        """The trainable blocks on a :class:`FrozenPass`, then the tapped maps pooled and flattened:
        ``(B, FEATURE_DIM)``."""
        offset = 1 + 2 * self.first_tuned

        def conv(i: int, v: Tensor) -> Tensor:
            stride, padding = self.specs[i]
            return F.conv2d(v, self.tuned_weight[i - offset], self.tuned_bias[i - offset], stride=stride, padding=padding)

        taps = dict(frozen.taps)
        _blocks(frozen.boundary, Layers(conv), self.first_tuned, len(BLOCKS), taps)
        parts = [F.adaptive_avg_pool2d(taps[k], 2) for k in sorted(TAPS)]
        return torch.cat([p.reshape(p.shape[0], -1) for p in parts], 1)

    def forward(self, crops: Tensor) -> Tensor:
        """``(B, S, S, 3)`` crops → ``(B, FEATURE_DIM)`` features."""
        return self.tuned(self.frozen(crops))


SMALL_SIZE = 64
"""Input side (px) of :class:`SmallTrunk`: the same crop box as the dlib trunk's, sampled at 64 px."""
SMALL_WIDTHS = (16, 32, 64, 128, 128)
SMALL_STRIDES = (2, 2, 2, 2, 2)


class SmallTrunk(nn.Module):
    """A small CNN trained from scratch, for a few ms per face on two CPU threads (the dlib trunk alone takes
    15–20 ms): a 64 px crop → five 3 × 3 stride-2 convolutions (:data:`SMALL_WIDTHS`; batch norm, ReLU;
    0.25 M weights, 4.6 M multiply-adds) → the final 128 × 2 × 2 map, flattened (``dim`` = 512 values:
    position and pose survive, as in the dlib trunk's 2 × 2 taps). It plays the part of 3DDFA_V2's
    MobileNet (120 px) in place of the paper's ResNet-50."""

    dim = SMALL_WIDTHS[-1] * 2 * 2
    size = SMALL_SIZE

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*strided_cnn(SMALL_WIDTHS, SMALL_STRIDES))
        self.body.to(memory_format=torch.channels_last)
        self._folded: tuple[tuple, list[tuple[Tensor, Tensor, int]]] | None = None

    def folded(self) -> list[tuple[Tensor, Tensor, int]]:
        """Eval-mode layers with batch norm folded into the convolutions, ``[(weight, bias, stride)]``:
        ``γ (W x − μ) / √(σ² + ε) + β = W' x + b'``. Cached while no parameter or running statistic changes
        (their version counters and storages key the cache)."""
        layers = list(self.body)  # (slicing the Sequential would build new modules per call)
        convs, norms = layers[0::3], layers[1::3]
        # every parameter and buffer, read from the modules' own tables (cheaper than attribute lookups)
        key = tuple((t._version, t.data_ptr()) for m in layers for table in (m._parameters, m._buffers)
                    for t in table.values() if t is not None)  # data_ptr: .to() / .double() swap the storage
        if self._folded is None or self._folded[0] != key:
            layers = []
            with torch.no_grad():
                for conv, bn in zip(convs, norms):
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    layers.append(((conv.weight * scale[:, None, None, None]).contiguous(
                        memory_format=torch.channels_last), bn.bias - bn.running_mean * scale, conv.stride[0]))
            self._folded = (key, layers)
        return self._folded[1]

    def forward(self, crops: Tensor) -> Tensor:
        """``(B, 64, 64, 3)`` crops in [0, 1] → ``(B, 512)`` features (eval mode: :meth:`folded`)."""
        if crops.dim() != 4 or crops.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"SmallTrunk: expected crops (B, {self.size}, {self.size}, 3), got {tuple(crops.shape)}")
        x = (crops.permute(0, 3, 1, 2) - 0.5) / 0.25
        if self.training or torch.is_grad_enabled():
            return self.body(x).flatten(1)
        for weight, bias, stride in self.folded():
            x = F.conv2d(x, weight, bias, stride, 1).relu_()
        return x.flatten(1)


TRUNKS = ("dlib", "small")


# ------------------------------------------------------------------------------------------------ network
class RingNet(nn.Module):
    """The RingNet encoder: trunk features → standardisation → IEF regressor → named parameters.

    Args:
        model_name: the morphable model the output refers to.
        layout: the output layout (:func:`ringnet_layout`).
        scale0: ``s0`` (crop px per mm) and centre0: ``t0`` ``(2,)`` crop px of the zero camera (see module).
        trunk: ``"dlib"`` (:class:`DlibTrunk`, 150 px crops) or ``"small"`` (:class:`SmallTrunk`, 64 px crops
            of the same box; its features are not standardised: ``feature_mean`` / ``feature_std`` stay 0 / 1).
        finetune_blocks, hidden, iterations, dropout: see :class:`DlibTrunk` and
            :class:`~morphable.nets.heads.IterativeErrorFeedback` (paper: hidden 512, 3 iterations).
        net: a :class:`DlibFaceNet` to share (dlib trunk).
    Attributes:
        input_size: the crop side the trunk reads (px). Cameras are always in the :data:`CROP_SIZE` px frame
            of the crop box, whatever the input's sampling.
    """

    def __init__(self, model_name: str, layout: ParamLayout, scale0: float, centre0: tuple[float, float], *,
                 trunk: str = "dlib", finetune_blocks: int = 0, hidden: int = 512, iterations: int = 3,
                 dropout: float = 0.5, net: DlibFaceNet | None = None):
        super().__init__()
        if trunk not in TRUNKS:
            raise ValueError(f"RingNet: trunk must be one of {TRUNKS}, got {trunk!r}")
        if trunk == "small" and finetune_blocks:
            raise ValueError("RingNet: finetune_blocks applies to the dlib trunk only")
        self.model_name = model_name
        self.layout = layout
        self.trunk_name, self.finetune_blocks = trunk, int(finetune_blocks)
        self.hidden, self.iterations = int(hidden), int(iterations)
        self.trunk = DlibTrunk(net, finetune_blocks) if trunk == "dlib" else SmallTrunk()
        self.input_size = CROP_SIZE if trunk == "dlib" else SMALL_SIZE
        dim = FEATURE_DIM if trunk == "dlib" else SmallTrunk.dim
        self.register_buffer("scale0", torch.tensor(float(scale0)))
        self.register_buffer("centre0", torch.tensor([float(c) for c in centre0]))
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))
        self.regressor = IterativeErrorFeedback(dim, layout.size, hidden=hidden, iterations=iterations,
                                                dropout=dropout)

    def set_feature_statistics(self, features: Tensor) -> None:
        """Fix the input standardisation from training features ``(N, FEATURE_DIM)``."""
        with torch.no_grad():
            self.feature_mean.copy_(features.mean(0))
            self.feature_std.copy_(features.std(0).clamp_min(1e-3))

    def regress(self, features: Tensor) -> dict[str, Tensor]:
        """Trunk features ``(B, FEATURE_DIM)`` → ``{block: (B, size)}`` (see :func:`ringnet_layout`)."""
        return self.layout.split(self.regressor((features - self.feature_mean) / self.feature_std))

    def forward(self, crops: Tensor) -> dict[str, Tensor]:
        """Crops ``(B, S, S, 3)`` in [0, 1] (S = ``input_size``) → named parameters."""
        return self.regress(self.trunk(crops))

    def camera(self, params: dict[str, Tensor]) -> ScaledOrthographic:
        """The crop-pixel camera of regressed parameters (module docstring)."""
        cam = params["camera"]
        return ScaledOrthographic(self.scale0 * torch.exp(cam[:, 0]), params["rotation"],
                                  self.centre0 + cam[:, 1:3] * (CROP_SIZE / 2))

    def predict(self, image: Tensor, landmarks: Tensor | None = None, box: Tensor | None = None) -> RingNetPrediction:
        """One photo ``(H, W, 3)`` in [0, 1] → :class:`RingNetPrediction` (eval mode, no gradients).

        The crop is :func:`landmark_box` of ``landmarks`` ``(68, 2)`` px (the detector's) or the square ``box``.
        """
        image = torch.as_tensor(image)
        if image.dim() != 3 or image.shape[-1] != 3:
            raise ValueError(f"RingNet.predict: expected an (H, W, 3) photo, got {tuple(image.shape)}")
        if box is None:
            if landmarks is None:
                raise ValueError("RingNet.predict: give the face's landmarks or its box")
            box = landmark_box(torch.as_tensor(landmarks, dtype=torch.float32)[None])[0]
        crops, frame = network_crops(self, [image], torch.as_tensor(box, dtype=torch.float32)[None])
        return RingNetPrediction(*_regress_crops(self, crops), frame)


def network_crops(net: RingNet, images, boxes: Tensor) -> tuple[Tensor, CropFrame]:
    """The crops ``net`` reads, ``(B, S, S, 3)`` (S = ``net.input_size``), of square ``boxes`` ``(B, 4)`` in B
    photos ``(H, W, 3)`` (float in [0, 1], or uint8; tensors or numpy arrays), and their :class:`CropFrame` in
    the :data:`CROP_SIZE` frame the cameras live in (the same box at any sampling)."""
    crops, geometry = [], []
    for image, box in zip(images, torch.as_tensor(boxes).tolist()):
        photo = _as_numpy(image)
        if photo.dtype != np.uint8:
            photo = photo.astype(np.float32, copy=False)
        ox, oy, factor = _crop_geometry(box, net.input_size)
        crops.append(_crop(photo, ox, oy, factor, net.input_size).permute(1, 2, 0))
        geometry.append(_crop_geometry(box, CROP_SIZE))
    frame = torch.tensor(geometry, dtype=torch.float32)
    return (crops[0][None] if len(crops) == 1 else torch.stack(crops)), CropFrame(frame[:, :2], frame[:, 2])


@contextmanager
def inference(net: nn.Module) -> Iterator[None]:
    """Eval mode under ``torch.inference_mode`` inside the block (no autograd bookkeeping: a tenth off a
    single face's pass); a network in training mode is switched back after (one in eval mode is left alone:
    switching walks every submodule). Tensors made inside are inference tensors: :func:`_regress_crops`
    copies what leaves."""
    was = net.training
    if was:
        net.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was:
            net.train()


def _regress_crops(net: RingNet, crops: Tensor) -> tuple[dict[str, Tensor], ScaledOrthographic]:
    """The network's parameters and crop-pixel camera for ``crops``, run under :func:`inference` and returned
    as ordinary tensors (copies: callers may change them in place or use them in autograd)."""
    with inference(net):
        params = net(crops)
        camera = net.camera(params)
    return ({k: v.clone() for k, v in params.items()},
            ScaledOrthographic(camera.scale.clone(), camera.rotation.clone(), camera.translation.clone()))


@dataclass(frozen=True)
class RingNetPrediction:
    """What :meth:`RingNet.predict` returns: ``params`` (named blocks, batch of one), the crop-pixel
    ``camera`` and the crop's ``frame`` in the photo (:meth:`photo_camera` gives the camera in photo px)."""

    params: dict[str, Tensor]
    camera: ScaledOrthographic
    frame: CropFrame

    def photo_camera(self) -> ScaledOrthographic:
        return self.frame.camera_to_photo(self.camera)


def new_ringnet(model: MorphableModel, model_name: str, **kwargs) -> RingNet:
    """A fresh :class:`RingNet` for ``model``: layout from the model's sizes, ``s0``/``t0`` from its mean
    face's 68 landmarks under :data:`CROP_SCALE` (only the landmarks the model defines)."""
    lm = model.landmarks(model.mean[None])[0][model.landmark_mask]
    lo, hi = lm[:, :2].amin(0), lm[:, :2].amax(0)
    scale0 = CROP_SIZE / (CROP_SCALE * float((hi - lo).max()))
    c = (CROP_SIZE - 1) / 2
    mid = (lo + hi) / 2
    centre0 = (c - scale0 * float(mid[0]), c + scale0 * float(mid[1]))  # v = −s·y + t
    return RingNet(model_name, ringnet_layout(model), scale0, centre0, **kwargs)


# ------------------------------------------------------------------------------------------------ decoder
class RingNetDecoder(nn.Module):
    """Regressed parameters → the model's 68 landmarks in crop px, jawline chosen per pose (fixed weights).

    For linear models only the landmark and contour-candidate vertices are evaluated (a sub-model), so a
    training step does not blend ICT's 26 719 vertices per image.

    Args:
        model: a :class:`MorphableModel` with iBUG-68 landmarks (contour candidates for the dynamic jawline)
            or a :class:`Flame` with a dynamic contour embedding.
    """

    def __init__(self, model: MorphableModel):
        super().__init__()
        self.model = model
        self.flame = isinstance(model, Flame)
        self.terms = None
        if not self.flame:
            needed = [model.landmark_indices.reshape(-1)]
            if model.contour_right is not None and model.contour_left is not None:
                self.terms = contour_terms(model.mean, model.triangles, model.contour_right, model.contour_left,
                                           model.regions.get("face"))
                needed.append(self.terms.region)
            ids = torch.unique(torch.cat(needed))
            local = torch.full((model.n_vertices,), -1, dtype=torch.int64)
            local[ids] = torch.arange(len(ids))
            self.register_buffer("ids", ids)
            self.register_buffer("local", local)
            # the sub-model's blocks, gathered once: (V', 3), (V' · 3, K), (V' · 3, Ke)
            self.register_buffer("sub_mean", model.mean[ids].clone())
            self.register_buffer("sub_identity", model.identity_basis[ids].reshape(3 * len(ids), -1).clone())
            if model.expression_basis is not None:
                self.register_buffer("sub_expression", model.expression_basis[ids].reshape(3 * len(ids), -1).clone())

    def vertices(self, params: dict[str, Tensor]) -> Tensor:
        """``(B, V', 3)`` mm, model space: the sub-model's vertices (linear models) or FLAME's full mesh
        posed by ``jaw`` (the global rotation is the camera's)."""
        m = self.model
        exp = params.get("expression")
        if self.flame:
            return m(identity=params["shape"], expression=exp, jaw=params["jaw"]).vertices
        shape = params["shape"]
        offset = shape @ self.sub_identity[:, : shape.shape[1]].T  # (B, V' · 3)
        if exp is not None and exp.shape[1]:
            offset = offset + exp @ self.sub_expression[:, : exp.shape[1]].T
        return self.sub_mean + offset.reshape(len(shape), -1, 3)

    def landmarks(self, params: dict[str, Tensor], camera: ScaledOrthographic, target: Tensor | None = None) -> Tensor:
        """``(B, 68, 2)`` crop px: static landmarks projected, jaw points (iBUG 0–16) on the pose's contour.

        Args:
            target: ``(B, 68, 2)`` observed landmarks (crop px, NaN = missing): the linear models' contour
                vertices are the candidates nearest to them (training); ``None`` = nearest to the projected
                fixed jaw landmarks (prediction). FLAME's contour depends on the pose only.
        """
        m = self.model
        verts = self.vertices(params)
        if self.flame:
            static = camera.project(m.landmarks(verts))
            pose = m.full_pose(jaw=params["jaw"])
            ids, w = flame_dynamic_contour(m, axis_angle_to_matrix(camera.rotation).detach(), pose.detach())
            contour = camera.project((verts[torch.arange(len(verts))[:, None, None], ids] * w[..., None]).sum(2))
            return torch.cat([contour, static[:, 17:]], 1)
        lm_ids = self.local[m.landmark_indices]
        static = camera.project(barycentric_points(verts, lm_ids, m.landmark_weights))
        if self.terms is None:
            return static
        seed = static if target is None else torch.where(torch.isfinite(target), target, static)

        def project(positions: Tensor) -> Tensor:
            return camera.project(verts[:, self.local[self.terms.region[positions]]]).detach()

        R = axis_angle_to_matrix(camera.rotation).detach()
        vid = contour_correspondences(project, R, seed.detach(), self.terms)  # (B, 16) model vertex ids
        contour = camera.project(torch.gather(verts, 1, self.local[vid][..., None].expand(-1, -1, 3)))
        out = static.clone()
        out[:, list(CONTOUR_IDS)] = contour
        return out


# ------------------------------------------------------------------------------------------------ weights
def save_ringnet(net: RingNet, path: str | PathLike, meta: dict | None = None) -> None:
    """Write ``net`` atomically (regressor and tuned weights float16, buffers float32)."""
    save_net(net, path, FORMAT, VERSION,
             {"model_name": net.model_name, "layout": [[n, int(k)] for n, k in net.layout.blocks],
              "trunk": net.trunk_name, "finetune_blocks": net.finetune_blocks, "hidden": net.hidden,
              "iterations": net.iterations,
              "scale0": float(net.scale0), "centre0": [float(c) for c in net.centre0]}, meta,
             half=lambda k, v: k.startswith(("regressor.mlp", "trunk.tuned")))


def load_ringnet(path: str | PathLike, net: DlibFaceNet | None = None) -> RingNet:
    """Read a file written by :func:`save_ringnet` (``torch.load(weights_only=True)``).

    Raises:
        ModelFileError: missing, unreadable or inconsistent file.
    """
    def build(data: dict) -> RingNet:
        layout = ParamLayout(tuple((str(n), int(k)) for n, k in data["layout"]))
        return RingNet(str(data["model_name"]), layout, float(data["scale0"]), tuple(data["centre0"]),
                       trunk=str(data.get("trunk", "dlib")), finetune_blocks=int(data["finetune_blocks"]),
                       hidden=int(data["hidden"]), iterations=int(data["iterations"]), net=net)

    return load_net(path, FORMAT, VERSION, "RingNet", build)



# ---------------------------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class RegressedFaces:
    """What :func:`regress_faces` returns for B faces.

    Attributes:
        params: named blocks ``{name: (B, size)}``; identity: ``(B, K)`` the shape block padded with zeros to
            the model's identity count; camera: :class:`ScaledOrthographic` in photo px; landmarks:
            ``(B, 68, 2)`` photo px (jawline on the pose's contour; NaN where the model has no point), or
            ``None`` when not decoded.
    """

    params: dict[str, Tensor]
    identity: Tensor
    camera: ScaledOrthographic
    landmarks: Tensor | None


def regress_faces(net: RingNet, decoder: RingNetDecoder, images, landmarks: Tensor, *,
                  decode: bool = True) -> RegressedFaces:
    """Run RingNet on faces: crop each (:func:`landmark_box` of its detected landmarks), one batched pass.

    Args:
        net: the network (used in eval mode); decoder: a :class:`RingNetDecoder` of the same model.
        images: B photos ``(H, W, 3)``, float in [0, 1] or uint8 (sizes may differ; one photo can repeat).
        landmarks: ``(B, 68, 2)`` the faces' detected landmarks, photo px (only their box is used).
        decode: also project the model's 68 landmarks (the decoder's contour search); ``False`` returns the
            network's parameters and camera only.
    """
    landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
    crops, frame = network_crops(net, images, landmark_box(landmarks))
    params, camera = _regress_crops(net, crops)
    lm = None
    if decode:  # outside inference mode: the decoder's model may build and keep tables that training uses
        with torch.no_grad():
            lm = decoder.landmarks(params, camera)
        lm = torch.where(decoder.model.landmark_mask[None, :, None], frame.to_photo(lm),
                         torch.full_like(lm, math.nan))
    shape = params["shape"]
    identity = torch.cat([shape, shape.new_zeros(len(shape), decoder.model.n_identity - shape.shape[1])], 1)
    return RegressedFaces(params, identity, frame.camera_to_photo(camera), lm)


METHODS = ("regress", "regress+fit")


@lru_cache(maxsize=None)
def shipped_ringnet(model_name: str) -> RingNet:
    """The shipped ``ringnet-<model_name>`` network (sha256 checked; one shared instance per process, do not
    modify it).

    Raises:
        ModelFileError: no RingNet ships for this model, or its file is missing or corrupt.
    """
    from morphable.nets.weights import shipped_key

    return load_ringnet(shipped_key("ringnet", "RingNet", model_name))


@lru_cache(maxsize=None)
def shared_decoder(model: MorphableModel) -> RingNetDecoder:
    """One :class:`RingNetDecoder` per model object and process (its contour tables take a moment to build)."""
    return RingNetDecoder(model)


def fit_with_ringnet(model: MorphableModel, net: RingNet, decoder: RingNetDecoder, images, landmarks: Tensor, *,
                     method: str = "regress+fit", iterations: int = 5, lambda_identity: float = 1.0):
    """``morphable fit --method regress|regress+fit`` as a :class:`~morphable.fitting.landmarks.LandmarkFit`.

    * ``regress``: the network alone (:func:`regress_faces`): its shape, expression and camera; the fitted
      landmarks are its decoded ones; the network gives no posterior, so ``identity_covariance`` is the
      prior's (the identity matrix) and ``rms_px`` compares its landmarks with the detected ones.
    * ``regress+fit``: the landmark fit (:func:`~morphable.fitting.landmarks.fit_landmarks`) with its identity
      prior centred at the regressed shape, precision ``lambda_identity``.

    Args:
        images: B photos ``(H, W, 3)`` float in [0, 1]; landmarks: ``(B, 68, 2)`` detected, photo px.
    """
    from morphable.fitting.landmarks import LandmarkFit, fit_landmarks

    if method not in METHODS:
        raise ValueError(f"fit_with_ringnet: method must be one of {METHODS}, got {method!r}")
    landmarks = torch.as_tensor(landmarks, dtype=model.mean.dtype)
    reg = regress_faces(net, decoder, images, landmarks, decode=method == "regress")
    if method == "regress+fit":
        return fit_landmarks(model, landmarks, iterations=iterations, identity_prior_mean=reg.identity.to(landmarks),
                             lambda_identity=lambda_identity)
    B = len(landmarks)
    expression = reg.params["expression"]
    expression = torch.cat([expression, expression.new_zeros(B, model.n_expression - expression.shape[1])], 1)
    fitted = reg.landmarks.to(landmarks)
    ok = torch.isfinite(fitted).all(-1) & torch.isfinite(landmarks).all(-1)
    sq = torch.where(ok, ((fitted - landmarks) ** 2).sum(-1), torch.zeros_like(fitted[..., 0]))
    rms = (sq.sum(1) / ok.sum(1).clamp_min(1)).sqrt()
    ids = torch.where(model.landmark_mask, model.landmark_indices[:, 0], -1).expand(B, -1)
    K = model.n_identity
    return LandmarkFit(identity=reg.identity, expression=expression, camera=reg.camera, landmarks_fitted=fitted,
                       landmark_ids=ids, identity_covariance=torch.eye(K).expand(B, K, K), rms_px=rms,
                       contour_fitted=False, model=model)
