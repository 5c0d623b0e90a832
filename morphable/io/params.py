"""Parameter files: fitted coefficients, cameras and landmarks as JSON.

Values that JSON does not know are converted on write: numpy arrays and torch tensors become (nested)
lists, numpy scalars become numbers, tuples become lists, paths become strings. Reading gives plain
Python (lists, not arrays). Non-finite floats are written as ``NaN``/``Infinity`` (Python's JSON
dialect, used for missing landmarks), which :func:`read_params` reads back.
"""
from __future__ import annotations

import json
import math
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from morphable.errors import InputError
from morphable.io.atomic import atomic_write


def json_ready(value: Any, where: str = "") -> Any:
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
            out[key] = json_ready(item, f"{where}.{key}" if where else key)
        return out
    if isinstance(value, list | tuple):
        return [json_ready(item, f"{where}[{i}]") for i, item in enumerate(value)]
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
    text = json.dumps(json_ready(params, ""), indent=2) + "\n"
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
    except ValueError as e:  # an integer of more than 4300 digits
        raise InputError(path, f"invalid JSON ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise InputError(path, "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    return data


# --- the fit schema ------------------------------------------------------------------------------------
PARAMS_SCHEMA = "morphable.params"
PARAMS_VERSION = 1
"""Version of the ``params.json`` a reconstruction writes (:mod:`morphable.reconstruct`). Version 1 keys:

``schema`` (``"morphable.params"``), ``version`` (1), ``model`` (registry name or file), ``image`` (the
photo's path or name), ``image_size`` (``{"width", "height"}`` px of the original photo), ``face`` (index,
largest first), ``landmarks_source`` (``dlib-hog``, ``dlib-cnn`` or the landmark file),
``detection_score``, ``shape_from`` (``regressor`` or ``landmarks``), ``identity``, ``expression``,
``expression_kind``, ``camera`` (``Camera.to_dict``, in the original photo's pixels), ``euler_degrees``
(``yaw``, ``pitch``, ``roll``), ``landmarks`` (the 68 input points) and ``landmarks_fitted`` (the model's
68 landmarks projected by the final stage), both 0-based px, NaN where missing; ``rms_px`` (the final
stage's RMS landmark error, px of the original photo) and ``rms_stage`` (``landmarks`` or
``photometric``); ``working_scale`` (original px per px of the downscaled copy the fit ran on);
``texture_coverage``; ``timings`` (seconds per stage); ``arrays`` (the side ``.npz`` holding per-vertex
arrays such as ``vertex_uncertainty``, or ``null``); ``photometric`` (``null`` or ``light`` — 27 SH
numbers, R's 9, G's, B's —, ``albedo`` — ``{"kind": "coefficients", "values"}`` or ``{"kind":
"per_vertex"}`` with the values in ``arrays`` —, ``energies``, ``photometric_error``).
"""
REQUIRED_KEYS = ("model", "image_size", "camera")


def upgrade_params(params: dict[str, Any], path: str | PathLike = "<params>") -> dict[str, Any]:
    """A fit's parameters in the current schema (:data:`PARAMS_VERSION`).

    Older files (no ``version``: the ``fit`` and ``stn-fit`` dialects before version 1) are converted:
    ``image_size`` ``[H, W]`` becomes ``{"width", "height"}``, a missing ``camera`` is built from
    ``rotation``/``translation`` with ``scale`` or ``focal`` (``principal_point`` defaulting to the image
    centre), top-level photometric keys move under ``photometric``.

    Raises:
        InputError: a newer version, a missing required key, or values of the wrong kind (naming ``path``).
    """
    out = dict(params)
    version = out.get("version")
    if version is not None and version != PARAMS_VERSION:
        raise InputError(path, f"params version {version!r} is not supported (this morphable reads {PARAMS_VERSION})")
    size = out.get("image_size")
    if isinstance(size, list | tuple) and len(size) == 2:
        out["image_size"] = {"width": size[1], "height": size[0]}
    if version is None:
        if not isinstance(out.get("camera"), dict) and "rotation" in out and "translation" in out:
            if out.get("focal") is not None:
                W, H = _size(out, path)
                out["camera"] = {"type": "perspective", "focal": out["focal"], "rotation": out["rotation"],
                                 "translation": out["translation"],
                                 "principal_point": out.get("principal_point", [(W - 1) / 2, (H - 1) / 2])}
            elif out.get("scale") is not None:
                out["camera"] = {"type": "scaled_orthographic", "scale": out["scale"], "rotation": out["rotation"],
                                 "translation": out["translation"]}
        if "light" in out and "photometric" not in out:
            out["photometric"] = {k: out.pop(k) for k in ("light", "light_layout", "albedo", "energies",
                                                          "photometric_error") if k in out}
        for key in ("rotation", "translation", "scale", "focal", "principal_point"):
            out.pop(key, None)
        out["schema"], out["version"] = PARAMS_SCHEMA, PARAMS_VERSION
    return validate_params(out, path)


MAX_SIDE_PX = 1_000_000
"""Largest ``image_size`` side accepted (px)."""
CAMERA_FIELDS = {"scaled_orthographic": {"scale": None, "rotation": 3, "translation": 2},
                 "perspective": {"focal": None, "principal_point": 2, "rotation": 3, "translation": 3}}
"""Each camera type's fields: ``None`` for a positive number, ``n`` for a list of ``n`` numbers."""


def _is_number(value: Any, finite: bool = True) -> bool:
    """A JSON number (not a boolean) that fits a float64; finite unless ``finite`` is False (NaN allowed)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        x = float(value)
    except OverflowError:  # an integer beyond float64
        return False
    return math.isfinite(x) or (not finite and math.isnan(x))


def _numbers(value: Any, n: int | None = None, finite: bool = True) -> bool:
    """A list of (``n``) numbers (:func:`_is_number`)."""
    return (isinstance(value, list) and (n is None or len(value) == n)
            and all(_is_number(v, finite) for v in value))


def _size(params: dict[str, Any], path: str | PathLike) -> tuple[int, int]:
    size = params.get("image_size")
    if not (isinstance(size, dict) and all(_is_number(size.get(k)) and float(size[k]).is_integer()
                                           for k in ("width", "height"))):
        raise InputError(path, "image_size must be {\"width\": W, \"height\": H} (or [H, W]) in whole pixels")
    W, H = int(size["width"]), int(size["height"])
    if not (1 <= W <= MAX_SIDE_PX and 1 <= H <= MAX_SIDE_PX):
        raise InputError(path, f"image_size must be positive and at most {MAX_SIDE_PX} px a side, got {W}x{H}")
    return W, H


def _check_camera(camera: Any, path: str | PathLike) -> None:
    if not isinstance(camera, dict):
        raise InputError(path, "cannot build the camera (camera must be an object)")
    fields = CAMERA_FIELDS.get(camera.get("type")) if isinstance(camera.get("type"), str) else None
    if fields is None:
        raise InputError(path, f"cannot build the camera (its type must be one of {', '.join(CAMERA_FIELDS)})")
    for key, n in fields.items():
        value = camera.get(key)
        if n is None and not (_is_number(value) and value > 0):
            raise InputError(path, f"cannot build the camera ({key} must be a positive number)")
        if n is not None and not _numbers(value, n):
            raise InputError(path, f"cannot build the camera ({key} must be a list of {n} finite numbers)")


def _check_points(value: Any, key: str, path: str | PathLike) -> None:
    """``null`` or a list of points, each ``null`` or ``[x, y]`` (NaN for a missing point)."""
    if value is not None and not (isinstance(value, list)
                                  and all(p is None or _numbers(p, 2, finite=False) for p in value)):
        raise InputError(path, f"{key} must be a list of [x, y] points (null or NaN where missing)")


def _check_photometric(q: Any, path: str | PathLike) -> None:
    if not q:
        return
    if not isinstance(q, dict):
        raise InputError(path, "photometric must be an object or null")
    if not _numbers(q.get("light"), 27):
        raise InputError(path, "photometric light must be a list of 27 finite numbers (SH9 per channel)")
    albedo = q.get("albedo")
    if albedo and not isinstance(albedo, dict):
        raise InputError(path, "photometric albedo must be an object")
    if albedo and albedo.get("kind") == "coefficients" and not _numbers(albedo.get("values")):
        raise InputError(path, "photometric albedo values must be a list of finite numbers")
    if "photometric_error" in q and not _is_number(q["photometric_error"], finite=False):
        raise InputError(path, "photometric photometric_error must be a number")


def validate_params(params: dict[str, Any], path: str | PathLike = "<params>") -> dict[str, Any]:
    """Check a version-1 parameter dictionary; returns it unchanged.

    Every key :meth:`morphable.reconstruct.Reconstruction.from_params` reads is checked here, so a file
    that passes rebuilds without a foreign exception.

    Raises:
        InputError: a missing required key, a bad ``image_size`` or ``camera``, coefficient lists that are
            not lists of finite numbers, or an optional key of the wrong kind.
    """
    missing = [k for k in REQUIRED_KEYS if params.get(k) is None]
    if missing:
        raise InputError(path, f"missing {', '.join(missing)} (a fit's params.json has them)")
    if not isinstance(params["model"], str):
        raise InputError(path, "model must be a string (a registry name or a model file)")
    _size(params, path)
    _check_camera(params["camera"], path)
    try:
        from morphable.geometry.camera import camera_from_dict

        camera_from_dict(params["camera"])
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"cannot build the camera ({err})") from None
    for key in ("identity", "expression"):
        values = params.get(key)
        if values is not None and not _numbers(values):
            raise InputError(path, f"{key} must be a list of numbers, all finite")
    for key in ("landmarks", "landmarks_fitted"):
        _check_points(params.get(key), key, path)
    face = params.get("face")
    if face is not None and not (isinstance(face, int) and not isinstance(face, bool) and face >= 0):
        raise InputError(path, f"face must be an integer >= 0, got {face!r}")
    if params.get("detection_score") is not None and not _is_number(params["detection_score"], finite=False):
        raise InputError(path, "detection_score must be a number or null")
    if "rms_px" in params and not _is_number(params["rms_px"], finite=False):
        raise InputError(path, "rms_px must be a number")
    if "working_scale" in params and not (_is_number(params["working_scale"]) and params["working_scale"] > 0):
        raise InputError(path, "working_scale must be a positive number")
    if params.get("timings") is not None and not isinstance(params["timings"], dict):
        raise InputError(path, "timings must be an object")
    arrays = params.get("arrays")
    if arrays is not None and not (isinstance(arrays, str) and arrays not in ("", ".", "..")
                                   and Path(arrays).name == arrays and "\\" not in arrays):
        raise InputError(path, f"arrays must be null or a file name beside the params file, got {arrays!r}")
    _check_photometric(params.get("photometric"), path)
    return params


def read_fit_params(path: str | PathLike) -> dict[str, Any]:
    """:func:`read_params` then :func:`upgrade_params`: a fit's parameters in the current schema."""
    return upgrade_params(read_params(path), path)
