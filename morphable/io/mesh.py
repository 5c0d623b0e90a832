"""Mesh files: OBJ (UVs, texture + MTL, quads kept) and PLY (vertex colours), read and written atomically.

The formats live in :mod:`morphable.io.obj` and :mod:`morphable.io.ply`; this module gathers them and
picks one by suffix.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

from morphable.errors import InputError
from morphable.io.meshdata import Mesh, fan_triangles
from morphable.io.obj import read_obj, write_obj
from morphable.io.ply import read_ply, write_ply

_READERS = {".obj": read_obj, ".ply": read_ply}
_WRITERS = {".obj": write_obj, ".ply": write_ply}


def read_mesh(path: str | PathLike) -> Mesh:
    """Read an ``.obj`` or ``.ply`` mesh (by suffix). Raises InputError for other suffixes or bad files."""
    reader = _READERS.get(Path(path).suffix.lower())
    if reader is None:
        raise InputError(path, "unknown mesh format (expected .obj or .ply)")
    return reader(path)


def write_mesh(path: str | PathLike, mesh: Mesh) -> None:
    """Write an ``.obj`` or ``.ply`` mesh (by suffix), atomically."""
    writer = _WRITERS.get(Path(path).suffix.lower())
    if writer is None:
        raise InputError(path, "unknown mesh format (expected .obj or .ply)")
    writer(path, mesh)


__all__ = ["Mesh", "fan_triangles", "read_mesh", "read_obj", "read_ply", "write_mesh", "write_obj", "write_ply"]
