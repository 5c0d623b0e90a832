"""Read dlib's DNN serialisation of the face-recognition ResNet into numpy arrays (no dlib needed).

The file ``dlib_face_recognition_resnet_model_v1.dat`` (shipped in ``face_recognition_models``, public
domain) is dlib's ``serialize(net)`` of the ``anet_type`` of ``dnn_face_recognition_ex.cpp``. dlib writes
a network as a post-order walk of its layer templates: every ``add_layer`` first writes its version, then
its whole sub-network, then its own layer details and cached state. The outermost layer's version
therefore comes first, the innermost layer (the input, then the first conv) comes right after this
"header chain", and the layers' parameters follow from the input outwards. Tag and skip layers carry a
version but no name, so the file can only be walked with the network's template nesting in hand
(:data:`BLOCKS` below).

Encodings (dlib/serialize.h, dlib/float_details.h, dlib/dnn/tensor.h):

* integers: one control byte (low nibble = number of magnitude bytes, bit 7 = sign), then the magnitude
  little-endian;
* floats / doubles: an integer mantissa and an integer exponent, value = mantissa * 2**exponent;
* strings: an integer length then the bytes; bools: the characters ``'0'`` / ``'1'``;
* tensors (version 2): the integers n, k, nr, nc, then n*k*nr*nc little-endian float32;
* alias tensors (views into a layer's ``params``): a version then n, k, nr, nc.

:func:`read_dlib_face_resnet` checks every version string, layer shape and stride against the
architecture, demands that the walk consumes the file exactly, and returns the 29 convolutions (with
biases), their 29 per-channel affines (batch norm folded by dlib) and the 256 -> 128 fc without bias:
5,614,592 parameters. :func:`load_dlib_face_resnet` verifies the sha256 of the shipped file and caches
the converted arrays in ``MORPHABLE_HOME`` as an ``.npz`` (read back with ``allow_pickle=False``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from morphable.errors import ModelFileError
from morphable.io.atomic import atomic_write
from morphable.models.registry import home, sha256_file

WEIGHTS_NAME = "dlib_face_recognition_resnet_model_v1.dat"
WEIGHTS_SIZE = 22_466_066
WEIGHTS_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
NUM_CONVS = 29
NUM_PARAMETERS = 5_614_592

#: Residual blocks in forward order, as (filters, stride): level 4 (3 x ``ares<32>``), level 3
#: (``ares_down<64>`` + 3 x ``ares<64>``), level 2 (``ares_down<128>`` + 2 x ``ares<128>``), level 1
#: (``ares_down<256>`` + 2 x ``ares<256>``), level 0 (``ares_down<256>``). Stride 2 marks ``ares_down``.
BLOCKS: tuple[tuple[int, int], ...] = (
    ((32, 1),) * 3 + ((64, 2),) + ((64, 1),) * 3 + ((128, 2),) + ((128, 1),) * 2
    + ((256, 2),) + ((256, 1),) * 2 + ((256, 2),)
)
STEM_FILTERS = 32
EMBEDDING_DIM = 128


@dataclass(frozen=True)
class DlibFaceResNetWeights:
    """The converted network, in forward order.

    Attributes:
        conv_weight: 29 arrays (F, C, kh, kw) float32 (cross-correlation kernels, torch layout).
        conv_bias: 29 arrays (F,) float32.
        affine_gamma: 29 arrays (F,) float32, the per-channel scale after each conv.
        affine_beta: 29 arrays (F,) float32, the per-channel shift after each conv.
        fc_weight: (128, 256) float32, torch ``Linear`` layout (dlib stores it transposed, (256, 128)).
        input_mean: (3,) float64, the RGB means subtracted before dividing by 256.
        input_size: chip side in pixels (150).
    """

    conv_weight: tuple[np.ndarray, ...]
    conv_bias: tuple[np.ndarray, ...]
    affine_gamma: tuple[np.ndarray, ...]
    affine_beta: tuple[np.ndarray, ...]
    fc_weight: np.ndarray
    input_mean: np.ndarray
    input_size: int

    def num_parameters(self) -> int:
        """Total learnable values (conv weights and biases, affine scales and shifts, fc)."""
        arrays = (*self.conv_weight, *self.conv_bias, *self.affine_gamma, *self.affine_beta, self.fc_weight)
        return int(sum(a.size for a in arrays))


# ---------------------------------------------------------------------------------------------------
# primitive decoding


class _Reader:
    """A cursor over the file's bytes with dlib's primitive decoders; errors name the file and offset."""

    def __init__(self, data: bytes, path: str):
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(self.path, f"{problem} at byte {self.pos}")

    def take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise self.fail(f"truncated: wanted {count} more bytes")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def integer(self) -> int:
        """dlib's compact signed integer: control byte (size | 0x80 if negative), magnitude LE."""
        control = self.take(1)[0]
        size = control & 0x0F
        if control & 0x70 or size == 0 or size > 8:
            raise self.fail(f"bad integer control byte {control:#04x}")
        magnitude = int.from_bytes(self.take(size), "little")
        return -magnitude if control & 0x80 else magnitude

    def real(self) -> float:
        """dlib's portable float: integer mantissa and exponent, value = mantissa * 2**exponent."""
        mantissa = self.integer()
        exponent = self.integer()
        if exponent >= 32000:  # dlib's codes for inf, -inf, nan: never in a trained network
            raise self.fail("non-finite scalar")
        return math.ldexp(mantissa, exponent)

    def boolean(self) -> bool:
        value = self.take(1)
        if value not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {value!r}")
        return value == b"1"

    def string(self) -> str:
        length = self.integer()
        return self.take(length).decode("latin-1")

    def expect(self, what: str, value, wanted) -> None:
        if value != wanted:
            raise self.fail(f"{what}: expected {wanted!r}, found {value!r}")

    def version(self, name: str, *allowed: int) -> int:
        version = self.integer()
        if version not in allowed:
            raise self.fail(f"unexpected {name} version {version}")
        return version

    def tensor(self) -> np.ndarray:
        """A version-2 tensor: dims (n, k, nr, nc) then raw little-endian float32."""
        self.version("tensor", 2)
        dims = tuple(self.integer() for _ in range(4))
        if min(dims) < 0:
            raise self.fail(f"negative tensor size {dims}")
        count = math.prod(dims)  # Python integers: np.prod wraps around int64 (2^40 · 2^40 gave 0)
        values = np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)
        return values.reshape(dims)

    def empty_tensor(self) -> None:
        """A cached activation or gradient of a stored network: must be empty."""
        shape = self.tensor().shape
        if math.prod(shape) != 0:
            raise self.fail(f"expected an empty cached tensor, found {shape}")

    def alias(self) -> tuple[int, int, int, int]:
        """An alias_tensor (a view into ``params``): version 1 then n, k, nr, nc."""
        self.version("alias_tensor", 1)
        return tuple(self.integer() for _ in range(4))


# ---------------------------------------------------------------------------------------------------
# the network's template nesting


def _layer_chain() -> list[tuple]:
    """The nested templates from the outermost (fc) to the innermost (first conv), one node each.

    Nodes: ("fc",), ("avg_pool", size, stride), ("relu",), ("add_prev",), ("skip",), ("tag",),
    ("affine",), ("con", filters, kernel, stride), ("max_pool", size, stride).
    ``ares<N>`` = relu<add_prev1<affine<con<N,3,3,1,1,relu<affine<con<N,3,3,1,1,tag1<S>>>>>>>>;
    ``ares_down<N>`` = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<affine<con<N,3,3,1,1,relu<affine<
    con<N,3,3,2,2,tag1<S>>>>>>>>>>>.
    """
    chain: list[tuple] = [("fc",), ("avg_pool", 0, 1)]
    for filters, stride in reversed(BLOCKS):
        chain += [("relu",), ("add_prev",)]
        if stride == 2:
            chain += [("avg_pool", 2, 2), ("skip",), ("tag",)]
        chain += [("affine",), ("con", filters, 3, 1), ("relu",), ("affine",), ("con", filters, 3, stride),
                  ("tag",)]
    chain += [("max_pool", 3, 2), ("relu",), ("affine",), ("con", STEM_FILTERS, 7, 2)]
    return chain


def _read_conv(r: _Reader, node: tuple, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    _, filters, kernel, stride = node
    r.expect("layer", r.string(), "con_4")
    params = r.tensor().reshape(-1)
    header = [r.integer() for _ in range(7)]  # num_filters, nr, nc, stride_y, stride_x, pad_y, pad_x
    padding = 0 if stride != 1 else kernel // 2  # dlib's default: stride-2 convs are unpadded
    r.expect("con_ (filters, nr, nc, strides, paddings)", header,
             [filters, kernel, kernel, stride, stride, padding, padding])
    weight_count = filters * in_channels * kernel * kernel
    r.expect("con_ filters alias", r.alias(), (filters, in_channels, kernel, kernel))
    r.expect("con_ biases alias", r.alias(), (1, filters, 1, 1))
    r.expect("con_ params size", params.size, weight_count + filters)
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.real()
    weight = params[:weight_count].reshape(filters, in_channels, kernel, kernel)
    return weight.copy(), params[weight_count:].copy()


def _read_affine(r: _Reader, channels: int) -> tuple[np.ndarray, np.ndarray]:
    r.expect("layer", r.string(), "affine_")
    params = r.tensor().reshape(-1)
    r.expect("affine_ gamma alias", r.alias(), (1, channels, 1, 1))
    r.expect("affine_ beta alias", r.alias(), (1, channels, 1, 1))
    r.expect("affine_ mode (0 = per channel)", r.integer(), 0)
    r.expect("affine_ params size", params.size, 2 * channels)
    return params[:channels].copy(), params[channels:].copy()


def _read_pool(r: _Reader, name: str, size: int, stride: int) -> None:
    r.expect("layer", r.string(), name)
    r.expect(f"{name} (nr, nc, strides, paddings)", [r.integer() for _ in range(6)],
             [size, size, stride, stride, 0, 0])


def _read_fc(r: _Reader) -> np.ndarray:
    r.expect("layer", r.string(), "fc_2")
    r.expect("fc_ num_outputs", r.integer(), EMBEDDING_DIM)
    inputs = BLOCKS[-1][0]
    r.expect("fc_ num_inputs", r.integer(), inputs)
    params = r.tensor()
    r.expect("fc_ params shape", params.shape, (inputs, EMBEDDING_DIM, 1, 1))
    r.expect("fc_ weights alias", r.alias(), (inputs, EMBEDDING_DIM, 1, 1))
    r.alias()  # the unused bias alias of an fc_no_bias
    r.expect("fc_ bias mode (1 = no bias)", r.integer(), 1)
    for _ in range(4):
        r.real()
    return params.reshape(inputs, EMBEDDING_DIM).T.copy()  # dlib computes x @ W; torch wants (out, in)


def conv_shapes() -> list[tuple[int, int, int, int]]:
    """(filters, in_channels, kernel, stride) of the 29 convolutions in forward order."""
    shapes = [(STEM_FILTERS, 3, 7, 2)]
    channels = STEM_FILTERS
    for filters, stride in BLOCKS:
        shapes += [(filters, channels, 3, stride), (filters, filters, 3, 1)]
        channels = filters
    return shapes


def read_dlib_face_resnet(path: str | PathLike) -> DlibFaceResNetWeights:
    """Parse dlib's face-recognition ResNet file (no checksum check; see :func:`load_dlib_face_resnet`).

    Raises:
        ModelFileError: unreadable, truncated, trailing bytes, or a layer that is not the one expected.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelFileError(path, f"cannot read: {e.strerror or e}") from None
    r = _Reader(data, str(path))

    # add_loss_layer<loss_metric_, ...>: version, the loss details, then the network.
    r.version("add_loss_layer", 1)
    r.expect("loss layer", r.string(), "loss_metric_2")
    r.real(), r.real()  # margin, distance threshold

    chain = _layer_chain()
    in_channels = [c for _, c, _, _ in conv_shapes()]
    for node in chain[:-1]:  # the header chain: every wrapper's version, outermost first
        r.version(f"{node[0]} layer", 1 if node[0] in ("tag", "skip") else 2)
    r.version("input add_layer", 2, 3)
    r.expect("input layer", r.string(), "input_rgb_image_sized")
    mean = np.array([r.real() for _ in range(3)])
    size = r.integer()
    r.expect("input columns", r.integer(), size)

    convs, affines, fc = [], [], None
    for index in reversed(range(len(chain))):  # details of each layer, innermost first
        node = chain[index]
        kind = node[0]
        if kind in ("tag", "skip"):
            continue
        if kind == "con":
            convs.append(_read_conv(r, node, in_channels[len(convs)]))
        elif kind == "affine":
            affines.append(_read_affine(r, convs[-1][0].shape[0]))
        elif kind == "relu":
            r.expect("layer", r.string(), "relu_")
        elif kind == "add_prev":
            r.expect("layer", r.string(), "add_prev_")
        elif kind == "max_pool":
            _read_pool(r, "max_pool_2", node[1], node[2])
        elif kind == "avg_pool":
            _read_pool(r, "avg_pool_2", node[1], node[2])
        else:
            fc = _read_fc(r)
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, output getters disabled
            r.boolean()
        for _ in range(3):  # x_grad, cached_output, then params_grad (grad_final for the input layer)
            r.empty_tensor()
        if index == len(chain) - 1:
            r.expect("sample expansion factor", r.integer(), 1)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} unread trailing bytes")

    weights = DlibFaceResNetWeights(
        conv_weight=tuple(w for w, _ in convs), conv_bias=tuple(b for _, b in convs),
        affine_gamma=tuple(g for g, _ in affines), affine_beta=tuple(b for _, b in affines),
        fc_weight=fc, input_mean=mean, input_size=size,
    )
    if len(convs) != NUM_CONVS or weights.num_parameters() != NUM_PARAMETERS:
        raise ModelFileError(path, f"{len(convs)} convs, {weights.num_parameters()} parameters; "
                                   f"expected {NUM_CONVS}, {NUM_PARAMETERS}")
    return weights


# ---------------------------------------------------------------------------------------------------
# locating, verifying and caching


def default_weights_path() -> Path:
    """The ResNet file inside the installed ``face_recognition_models`` (found without importing it)."""
    from morphable.detect.dlib68 import weights_path

    return weights_path(WEIGHTS_NAME)


def _cache_path() -> Path:
    return home() / "identity" / f"dlib_face_resnet_{WEIGHTS_SHA256[:16]}.npz"


def _save_npz(weights: DlibFaceResNetWeights, path: Path) -> None:
    arrays = {"fc_weight": weights.fc_weight, "input_mean": weights.input_mean,
              "input_size": np.array(weights.input_size)}
    for i in range(NUM_CONVS):
        arrays[f"conv{i}_weight"] = weights.conv_weight[i]
        arrays[f"conv{i}_bias"] = weights.conv_bias[i]
        arrays[f"affine{i}_gamma"] = weights.affine_gamma[i]
        arrays[f"affine{i}_beta"] = weights.affine_beta[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _load_npz(path: Path) -> DlibFaceResNetWeights:
    with np.load(path, allow_pickle=False) as z:
        return DlibFaceResNetWeights(
            conv_weight=tuple(z[f"conv{i}_weight"] for i in range(NUM_CONVS)),
            conv_bias=tuple(z[f"conv{i}_bias"] for i in range(NUM_CONVS)),
            affine_gamma=tuple(z[f"affine{i}_gamma"] for i in range(NUM_CONVS)),
            affine_beta=tuple(z[f"affine{i}_beta"] for i in range(NUM_CONVS)),
            fc_weight=z["fc_weight"], input_mean=z["input_mean"], input_size=int(z["input_size"]),
        )


def load_dlib_face_resnet(path: str | PathLike | None = None) -> DlibFaceResNetWeights:
    """The verified, converted weights; converted once and cached under ``MORPHABLE_HOME/identity``.

    Args:
        path: the ``.dat`` file; default: the one shipped in ``face_recognition_models``.
    Raises:
        ModelFileError: missing file, wrong size or sha256 (another file or a damaged download).
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    if path.stat().st_size != WEIGHTS_SIZE or sha256_file(path) != WEIGHTS_SHA256:
        raise ModelFileError(path, f"not dlib's {WEIGHTS_NAME} (size or sha256 differs)")
    cache = _cache_path()
    if cache.is_file():
        try:
            return _load_npz(cache)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    weights = read_dlib_face_resnet(path)
    _save_npz(weights, cache)
    return weights
