"""Reading ``.npy`` / ``.npz`` files from users without trusting their headers.

numpy's own reader allocates the array a ``.npy`` header announces *before* reading its data: a 200-byte
file whose header claims shape ``(10**12, 3)`` asks for 24 TB (``MemoryError``), or, below the memory
limit, commits gigabytes before failing on the short data. Here every header is read first and its size
(``prod(shape) · itemsize``, in Python integers) is compared with the bytes actually stored for it; only
then is the array read, with ``allow_pickle=False``. Layout: NEP 1 ("A simple file format for NumPy
arrays"), versions 1.0–3.0; an ``.npz`` is a zip of such members named ``<key>.npy``.
"""
from __future__ import annotations

import math
import struct
import tokenize
import zipfile
import zlib
from os import PathLike
from typing import IO

import numpy as np

from morphable.errors import ModelFileError, MorphableError

#: what a hostile zip or npy stream can raise from the standard library and numpy
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError,
               RuntimeError, UnicodeError, struct.error, OverflowError, SyntaxError, TypeError, tokenize.TokenError)
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand data more than ~1032:1
_MAX_HEADER = 1 << 16  # numpy writes headers of a few hundred bytes (it refuses to parse over 10 000)


def read_header(f: IO[bytes], available: int, *, objects: bool = False) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The ``(shape, fortran_order, dtype)`` of the ``.npy`` stream at ``f`` (positioned at its magic).

    The magic, version (1.0, 2.0 or 3.0) and header length are checked first (numpy's reader would
    allocate whatever length a corrupted header announces, up to 4 GB). Raises ``ValueError`` when the
    header is malformed, the array holds Python objects (unless ``objects``: then the data is a pickle and
    its size is not checked here), or its data (``prod(shape) · itemsize`` bytes) is larger than
    ``available`` bytes minus the header.
    """
    start = f.tell()
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != np.lib.format.MAGIC_PREFIX:
        raise ValueError("no .npy magic")
    version = (magic[6], magic[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
    width = 2 if version == (1, 0) else 4
    raw = f.read(width)
    length = int.from_bytes(raw, "little")
    if len(raw) < width or length > min(available, _MAX_HEADER):
        raise ValueError(f"header length {length} does not fit the {available}-byte data")
    f.seek(start + 8)  # numpy's parsers, the length now known to be safe (3.0 differs from 2.0 only by utf-8)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if dtype.hasobject:
        if not objects:
            raise ValueError("holds Python objects (pickled data is not read)")
        return tuple(shape), fortran, dtype
    nbytes = math.prod(int(n) for n in shape) * dtype.itemsize
    left = available - (f.tell() - start)
    if nbytes > left:
        raise ValueError(f"header claims shape {tuple(shape)} of {dtype} ({nbytes} bytes) but only {left} bytes follow")
    return tuple(shape), fortran, dtype


def read_npz(path: str | PathLike, *, error: type[MorphableError] = ModelFileError,
             keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (all, or only ``keys`` when given), each member's size checked first.

    Raises:
        ``error`` naming ``path``: not a zip, a member that is not a plain ``.npy``, a header claiming
        more data than the member holds, truncated or corrupted data.
    """
    out: dict[str, np.ndarray] = {}
    member = None
    try:
        with zipfile.ZipFile(path) as z:
            limit = z.fp.seek(0, 2) if z.fp is not None else 0
            for info in z.infolist():
                member = info.filename
                key = member.removesuffix(".npy")
                if keys is not None and key not in keys:
                    continue
                ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO
                if info.compress_size > limit or info.file_size > ratio * max(info.compress_size, 1):
                    raise ValueError(f"sizes {info.file_size}/{info.compress_size} do not fit a {limit}-byte file")
                with z.open(info) as f:
                    read_header(f, info.file_size)
                with z.open(info) as f:
                    out[key] = np.lib.format.read_array(f, allow_pickle=False)
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except READ_ERRORS as err:
        where = f"member {member!r}: " if member else ""
        raise error(path, f"not a readable npz file ({where}{type(err).__name__}: {_one_line(err)})") from None
    return out


def read_npy(path: str | PathLike, *, error: type[MorphableError] = ModelFileError) -> np.ndarray:
    """A plain ``.npy`` array, its header's size checked against the file's before reading."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            read_header(f, size)
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
    except FileNotFoundError:
        raise error(path, "file not found") from None
    except READ_ERRORS as err:
        raise error(path, f"not a readable .npy file ({type(err).__name__}: {_one_line(err)})") from None


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
