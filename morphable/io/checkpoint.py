"""Training checkpoints: atomic writes, safe loads, and the process's random-number-generator states.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings and containers of them, so
it loads with ``torch.load(weights_only=True)`` (no code runs while reading it). It is written to a
temporary file in the same folder, flushed and fsync'ed, then renamed over the final name
(:func:`morphable.io.atomic.atomic_write`): a reader, or a run killed at any instant, sees either the old
file or the complete new one. The folder is fsync'ed too, so the rename survives a power cut.

RNG states are stored as tensors (:func:`capture_rng_state`): Python's ``random`` (Mersenne-Twister words
as int64), numpy's global ``RandomState`` (its 624 uint32 words as int64 plus position and Gaussian cache),
torch's CPU generator, every CUDA device's generator when CUDA is available, and any extra
``torch.Generator`` passed in by name.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from morphable.errors import InputError
from morphable.io.atomic import atomic_write


class CheckpointError(InputError):
    """A checkpoint file is missing, truncated, corrupt, or not a checkpoint of the expected kind."""


def save_checkpoint(path: str | PathLike, state: Mapping[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically and durably.

    Raises:
        InputError: the folder is missing or not writable, or the disk is full (naming ``path``).
    """
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save(dict(state), f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: naming ``path``: missing, empty, truncated or corrupt, or holding something other
            than a dict of plain data (e.g. pickled code, refused by the safe loader).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "checkpoint is empty (0 bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found:
            raise CheckpointError(path, f"refused: holds a pickled Python object ({found.group(1)}), not plain "
                                  "data (the safe loader never runs code from a file)") from None
        raise CheckpointError(path, "truncated or corrupt checkpoint (not a torch.save file)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(path, f"truncated or corrupt checkpoint ({first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"expected a dict of training state, found {type(state).__name__}")
    return state


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every global RNG's state (and those of ``generators``), as tensors and ints (weights_only-safe)."""
    generators = generators or {}
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Set every global RNG (and ``generators``) back to a :func:`capture_rng_state` result.

    Raises:
        KeyError: a generator in ``generators`` has no saved state.
    """
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(w) for w in py["words"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for k, g in (generators or {}).items():
        g.set_state(state["generators"][k].cpu())
