"""Atomic file writes: a reader never sees a half-written file.

The data go to a temporary file in the destination folder (same file system, so the final rename is
atomic), which replaces the destination with :func:`os.replace` only when the ``with`` block finishes
without an exception. On any error the temporary file is removed and the destination is untouched.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import IO

from morphable.errors import InputError


def _umask() -> int:
    """The process umask (read by setting and restoring it; mkstemp creates files 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the block succeeds.

    Args:
        path: destination file; its folder must exist.
        mode: ``"wb"`` (bytes) or ``"w"`` (UTF-8 text, ``\\n`` line ends).
    Yields:
        the open temporary file.
    Raises:
        InputError: naming ``path``, when the folder does not exist or is not writable, the disk is
            full, or ``path`` is a folder (any ``OSError`` while writing or renaming).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(path, f"cannot write: {e.strerror or e}") from None
    try:
        text = {} if mode == "wb" else {"encoding": "utf-8", "newline": "\n"}
        with os.fdopen(fd, mode, **text) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # full disk, destination is a folder, ...: one line naming the file
            raise InputError(path, f"cannot write: {e.strerror or e}") from None
        raise


def remove_temporaries(folder: str | PathLike) -> None:
    """Delete the temporary files that :func:`atomic_write` calls killed mid-write left in ``folder``
    (``.<name>.<random>.tmp``); only safe while nothing else is writing there."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
