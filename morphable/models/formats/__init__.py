"""Model file formats: one loader per format, and :func:`load_any` choosing one by suffix and content.

| what | recognised by | loader |
|---|---|---|
| native model | ``.npz`` with a ``header`` entry | :func:`~morphable.models.formats.npz.load_npz` |
| ICT FaceKit | a folder with ``generic_neutral_mesh.obj``; ``.npz`` with ``names``/``vertices`` | ``ict:load_ict`` |
| eos / SFM | ``.bin`` starting with an eos class version (1–4) | ``sfm:load_sfm`` |
| BFM 2009 | ``.mat`` | ``bfm:load_bfm2009`` |
| BFM 2017/2019 | ``.h5`` / ``.hdf5`` | ``bfm:load_bfm2017`` |
| FLAME | ``.pkl`` | ``flame:load_flame`` |
| MediaPipe canonical mesh | ``.obj`` | ``mediapipe:load_mediapipe`` |

Loaders are imported only when used.
"""
from __future__ import annotations

import importlib
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from morphable.errors import ModelFileError

if TYPE_CHECKING:
    from morphable.models.base import MorphableModel

_BY_SUFFIX = {
    ".mat": "bfm:load_bfm2009",
    ".h5": "bfm:load_bfm2017",
    ".hdf5": "bfm:load_bfm2017",
    ".pkl": "flame:load_flame",
    ".obj": "mediapipe:load_mediapipe",
    ".bin": "sfm:load_sfm",
}


def _npz_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = {n.removesuffix(".npy") for n in z.namelist()}
    except (OSError, zipfile.BadZipFile) as err:
        raise ModelFileError(path, f"not a readable npz file ({err})") from None
    if "header" in names:
        return "npz:load_npz"
    if {"names", "vertices"} <= names:
        return "ict:load_ict"
    raise ModelFileError(path, "npz file is neither a morphable model ('header') nor a packed ICT model")


def loader_for(path: str | Path) -> str:
    """``"module:function"`` (inside ``morphable.models.formats``) of the loader for ``path``."""
    path = Path(path)
    if path.is_dir():
        if (path / "generic_neutral_mesh.obj").is_file():
            return "ict:load_ict"
        raise ModelFileError(path, "folder is not an ICT FaceXModel folder (no generic_neutral_mesh.obj)")
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _npz_kind(path)
    if suffix == ".bin":
        with open(path, "rb") as f:
            head = f.read(4)
        if len(head) < 4 or struct.unpack("<I", head)[0] not in (1, 2, 3, 4):
            raise ModelFileError(path, "not an eos/SFM model file (unknown .bin layout)")
    if suffix not in _BY_SUFFIX and suffix != ".npz":
        raise ModelFileError(path, f"unknown model format {suffix or '(no suffix)'!r} (expected .npz, .bin, "
                                   ".mat, .h5, .pkl, .obj or an ICT FaceXModel folder)")
    return _BY_SUFFIX[suffix]


def load_any(path: str | Path) -> MorphableModel:
    """Load a face model file (or ICT folder) with the loader its format calls for.

    Raises:
        ModelFileError: unknown format, or the loader's own error for a bad file.
    """
    target = loader_for(path)
    module, function = target.split(":")
    try:
        loader = getattr(importlib.import_module(f"morphable.models.formats.{module}"), function)
    except (ImportError, AttributeError):
        raise ModelFileError(path, f"no loader available for this format ({target})") from None
    return loader(path)
