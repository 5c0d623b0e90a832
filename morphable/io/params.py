"""Parameter files: fitted coefficients, cameras and landmarks as JSON.

Values that JSON does not know are converted on write: numpy arrays and torch tensors become (nested)
lists, numpy scalars become numbers, tuples become lists, paths become strings. Reading gives plain
Python (lists, not arrays). Non-finite floats are written as ``NaN``/``Infinity`` (Python's JSON
dialect, used for missing landmarks), which :func:`read_params` reads back.
"""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from morphable.errors import InputError
from morphable.io.atomic import atomic_write


def _plain(value: Any, where: str) -> Any:
    """``value`` made of dict/list/str/int/float/bool/None only."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"write_params: key {key!r} at {where or 'top level'} is not a string")
            out[key] = _plain(item, f"{where}.{key}" if where else key)
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, PathLike):
        return str(value)
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise TypeError(f"write_params: cannot store {type(value).__name__} at {where or 'top level'}")


def write_params(path: str | PathLike, params: dict[str, Any]) -> None:
    """Write a parameter dictionary as indented JSON, atomically.

    Args:
        path: destination ``.json`` file.
        params: string-keyed dictionary; values may hold numpy arrays, torch tensors, numbers, strings,
            lists and nested dictionaries.
    Raises:
        TypeError: a value cannot be stored (naming its key).
    """
    if not isinstance(params, dict):
        raise TypeError(f"write_params: expected a dict, got {type(params).__name__}")
    text = json.dumps(_plain(params, ""), indent=2) + "\n"
    with atomic_write(path, "w") as f:
        f.write(text)


def read_params(path: str | PathLike) -> dict[str, Any]:
    """Read a parameter file written by :func:`write_params` (or any JSON object).

    Raises:
        InputError: missing file, invalid JSON, or a top level that is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such parameter file")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(path, "not a UTF-8 JSON file") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise InputError(path, "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    return data
