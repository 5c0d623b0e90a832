"""On-disk caches of derived training data (rendered synthetic faces, frozen-encoder features): one file per
settings, named by a hash of those settings, written atomically and made again when unreadable.

Every recipe keeps its caches under :func:`cache_root` (``data.cache``, default
``$MORPHABLE_HOME/train-cache``); a file's name is ``<recipe>-<what>-<settings_key(settings)>.pt``, so a
change of any setting makes a new file and an interrupted build resumes at the first missing one.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor


def cache_root(folder: str = "") -> Path:
    """The cache folder: ``folder`` when given, else ``$MORPHABLE_HOME/train-cache``."""
    from morphable.models.registry import home

    return Path(folder) if folder else home() / "train-cache"


def settings_key(settings: dict) -> str:
    """16 hex digits of the sha256 of ``settings`` as sorted JSON: the name of the file they produce."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def cached(path: Path, make: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """The tensors saved at ``path`` (``torch.load(weights_only=True)``), or ``make()``'s, saved there
    atomically first (a missing or corrupt file is made again)."""
    from morphable.io.atomic import atomic_write

    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a corrupt cache file is made again
            pass
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save(data, f)
    return data
