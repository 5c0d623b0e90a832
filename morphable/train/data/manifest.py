"""Face datasets on disk: the JSONL manifest and the folder ``morphable data prepare`` writes.

A dataset folder holds (all written atomically, see :mod:`morphable.train.data.prepare`)::

    manifest.jsonl     one JSON object per face (ManifestItem), in dataset order
    descriptors.npy    (N, 128) float32: dlib's face descriptor of each chip
    pooled.npy         (N, 256) float32: the pooled pre-fc features of the same network
    chips/<key>.png    150 x 150 uint8 RGB: dlib's aligned face chip (padding 0.25)
    items/<key>.npz    per-face cache of the features (resume), photos/<hash>.json per-photo record
    bad.jsonl          {"path", "problem"} per photo that gave no face

Manifest fields (one line per face)::

    {"key": "3f0c...", "path": "/abs/photo.jpg", "face": 0, "identity": "alice" | null,
     "landmarks": [[x, y] * 68], "box": [l, t, r, b], "source": "corpus",
     "chip": "chips/3f0c....png", "landmarks_from": "file" | "dlib"}

Coordinates are 0-based pixels of the stored photo (x right, y down, pixel centres at integers;
``DESIGN.md``); ``landmarks`` are the iBUG 68 points (from a ``.pts`` file beside the photo, or dlib's
detector + shape predictor) and ``box`` is the detector's box or the landmarks' bounding box.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from morphable.errors import InputError
from morphable.identity.dlib_resnet import CHIP_SIZE
from morphable.io.atomic import atomic_write
from morphable.io.safe_npz import read_npy

MANIFEST = "manifest.jsonl"
DESCRIPTORS = "descriptors.npy"
POOLED = "pooled.npy"
BAD = "bad.jsonl"
N_LANDMARKS = 68
DESCRIPTOR_DIM = 128
POOLED_DIM = 256
LANDMARKS_FROM = ("file", "dlib")
FIELDS = ("key", "path", "face", "identity", "landmarks", "box", "source", "chip", "landmarks_from")
_KEY = re.compile(r"^[0-9A-Za-z_.-]+$")


@dataclass(frozen=True)
class ManifestItem:
    """One face of a dataset.

    Attributes:
        key: unique id (file-name safe), names ``chips/<key>.png`` and ``items/<key>.npz``.
        path: the photo (absolute path).
        face: index of the face within its photo (0-based).
        identity: the person's label, or ``None`` when unknown.
        landmarks: ``(68, 2)`` float64 iBUG points, 0-based px.
        box: ``(left, top, right, bottom)`` px.
        source: free-form name of where the photo comes from (``--source``).
        chip: the chip's path relative to the dataset folder.
        landmarks_from: ``"file"`` (a ``.pts`` beside the photo) or ``"dlib"`` (detected).
    """

    key: str
    path: str
    face: int
    identity: str | None
    landmarks: np.ndarray
    box: tuple[float, float, float, float]
    source: str
    chip: str
    landmarks_from: str

    def to_json(self) -> dict:
        """The manifest object (plain JSON types, field order of :data:`FIELDS`)."""
        return {"key": self.key, "path": self.path, "face": self.face, "identity": self.identity,
                "landmarks": [[float(x), float(y)] for x, y in self.landmarks],
                "box": [float(v) for v in self.box], "source": self.source, "chip": self.chip,
                "landmarks_from": self.landmarks_from}

    @classmethod
    def from_json(cls, obj: object, where: str) -> ManifestItem:
        """Validate one manifest object; ``where`` (``file:line``) starts every error message.

        Raises:
            InputError: a missing or unknown field, or a field of the wrong type or shape.
        """
        def bad(problem: str) -> InputError:
            return InputError(where, problem)

        if not isinstance(obj, dict):
            raise bad("expected a JSON object")
        missing = [f for f in FIELDS if f not in obj]
        if missing:
            raise bad(f"missing field(s) {', '.join(missing)}")
        unknown = sorted(set(obj) - set(FIELDS))
        if unknown:
            raise bad(f"unknown field(s) {', '.join(unknown)}")
        key, chip = obj["key"], obj["chip"]
        if not isinstance(key, str) or not _KEY.match(key):
            raise bad(f"'key' must be a non-empty file-name-safe string, got {key!r}")
        for name in ("path", "source", "chip"):
            if not isinstance(obj[name], str) or not obj[name]:
                raise bad(f"'{name}' must be a non-empty string")
        if Path(chip).is_absolute() or ".." in Path(chip).parts:
            raise bad(f"'chip' must be a path inside the dataset folder, got {chip!r}")
        face = obj["face"]
        if not isinstance(face, int) or isinstance(face, bool) or face < 0:
            raise bad(f"'face' must be an integer >= 0, got {face!r}")
        if obj["identity"] is not None and not isinstance(obj["identity"], str):
            raise bad("'identity' must be a string or null")
        if obj["landmarks_from"] not in LANDMARKS_FROM:
            raise bad(f"'landmarks_from' must be one of {LANDMARKS_FROM}, got {obj['landmarks_from']!r}")
        landmarks = _numbers(obj["landmarks"], (N_LANDMARKS, 2), "landmarks", bad)
        box = _numbers(obj["box"], (4,), "box", bad)
        return cls(key=key, path=obj["path"], face=face, identity=obj["identity"], landmarks=landmarks,
                   box=tuple(float(v) for v in box), source=obj["source"], chip=chip,
                   landmarks_from=obj["landmarks_from"])


def _float(v: int | float) -> float:
    """``float(v)``, infinite for an integer beyond float64 (``float(10**400)`` raises OverflowError)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf


def _numbers(value: object, shape: tuple[int, ...], name: str, bad) -> np.ndarray:
    """A nested JSON list of finite numbers of the given shape, as float64."""
    def flat(v: object, depth: int) -> list:
        if depth == len(shape):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(_float(v)):
                raise bad(f"'{name}' must hold finite numbers, got {v!r}")
            return [float(v)]
        if not isinstance(v, list) or len(v) != shape[depth]:
            raise bad(f"'{name}' must have shape {shape}")
        return [x for item in v for x in flat(item, depth + 1)]

    return np.asarray(flat(value, 0), dtype=np.float64).reshape(shape)


def read_manifest(path: str | PathLike) -> list[ManifestItem]:
    """Read a JSONL manifest.

    Blank lines are skipped. A last line without its newline that does not parse is taken as torn (a
    writer stopped mid-line) and dropped; any other bad line is an error.

    Raises:
        InputError: ``<file>:<line>: <problem>`` for a line that is not a valid item, a repeated key, or
            an unreadable file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read manifest ({err.__class__.__name__}: {err})") from None
    lines = text.split("\n")  # the last element is "" when the file ends with a newline
    items: list[ManifestItem] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as err:  # JSONDecodeError, or an integer of over 4300 digits
            if number == len(lines):  # no newline after it: torn
                break
            problem = err.msg if isinstance(err, json.JSONDecodeError) else \
                "nested too deeply" if isinstance(err, RecursionError) else " ".join(str(err).split())
            raise InputError(where, f"invalid JSON ({problem})") from None
        item = ManifestItem.from_json(obj, where)
        if item.key in seen:
            raise InputError(where, f"key {item.key!r} repeats line {seen[item.key]}")
        seen[item.key] = number
        items.append(item)
    return items


def write_manifest(path: str | PathLike, items: Iterable[ManifestItem]) -> None:
    """Write items as JSONL (one object and ``\\n`` per item), atomically."""
    with atomic_write(path, mode="w") as f:
        for item in items:
            f.write(json.dumps(item.to_json(), separators=(",", ":")) + "\n")


class _ArrayError(InputError):
    """A feature array that cannot be read (as :func:`~morphable.io.safe_npz.read_npy` reports it)."""

    def __init__(self, path: str | PathLike, problem: str):
        super().__init__(path, f"cannot read array ({problem})")


def _load_matrix(path: Path, rows: int, cols: int) -> torch.Tensor:
    """A (rows, cols) float32 .npy file as a tensor; InputError naming the file otherwise (read by
    :func:`morphable.io.safe_npz.read_npy`: no pickles, the header's size checked before allocating)."""
    array = read_npy(path, error=_ArrayError)
    if array.shape != (rows, cols) or array.dtype != np.float32:
        raise InputError(path, f"expected a ({rows}, {cols}) float32 array to match the manifest, "
                               f"got {array.shape} {array.dtype}")
    return torch.from_numpy(array)


class Dataset:
    """A prepared face dataset (see the module docstring for the folder layout).

    Attributes:
        folder: the dataset folder.
        items: the manifest's faces, in order.
        descriptors: ``(N, 128)`` float32 dlib descriptors of the chips.
        pooled: ``(N, 256)`` float32 pooled pre-fc features (``descriptors = pooled @ fc_weight.T``).
        landmarks: ``(N, 68, 2)`` float32 landmarks, 0-based px of each photo.
    """

    def __init__(self, folder: Path, items: list[ManifestItem], descriptors: torch.Tensor, pooled: torch.Tensor):
        self.folder = folder
        self.items = items
        self.descriptors = descriptors
        self.pooled = pooled
        self.landmarks = torch.from_numpy(np.stack([i.landmarks for i in items]).astype(np.float32)) if items \
            else torch.zeros(0, N_LANDMARKS, 2)
        self._chips: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def chips(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Face chips ``(n, 150, 150, 3)`` float32 RGB in [0, 1] of the given items (PNGs read once, then
        kept in memory as uint8).

        Raises:
            InputError: a chip file that is missing, unreadable or not 150 x 150 RGB.
        """
        from morphable.io.image import read_image

        indices = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        for i in indices:
            if i not in self._chips:
                path = self.folder / self.items[i].chip
                chip = read_image(path)
                if chip.shape != (CHIP_SIZE, CHIP_SIZE, 3):
                    raise InputError(path, f"expected a {CHIP_SIZE} x {CHIP_SIZE} RGB chip, got {chip.shape}")
                self._chips[i] = chip
        if not indices:
            return torch.zeros(0, CHIP_SIZE, CHIP_SIZE, 3)
        return torch.from_numpy(np.stack([self._chips[i] for i in indices])).float() / 255.0


def load_dataset(folder: str | PathLike) -> Dataset:
    """Open a folder written by ``morphable data prepare``.

    Raises:
        InputError: no manifest (the preparation never finished: run it again), a bad manifest line, or
            feature arrays that do not match the manifest.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise InputError(folder, f"no {MANIFEST}: not a prepared dataset, or its preparation did not finish "
                                 "(run 'morphable data prepare' again)")
    items = read_manifest(manifest)
    return Dataset(folder, items, _load_matrix(folder / DESCRIPTORS, len(items), DESCRIPTOR_DIM),
                   _load_matrix(folder / POOLED, len(items), POOLED_DIM))
