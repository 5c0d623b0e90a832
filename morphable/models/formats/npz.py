"""The native model format: one ``.npz`` holding every :class:`MorphableModel` buffer, loadable without pickle.

Layout (format ``morphable-npz``, version 2; version 1 files, which have no ``model`` tag, still load):

* ``header``: a 0-d unicode array holding JSON: ``format``, ``version``, ``model`` (the model type:
  ``"morphable"`` for a plain :class:`MorphableModel`, ``"flame"`` for a
  :class:`~morphable.models.flame.Flame`), ``name``, ``dtype``,
  ``expression_kind``, ``expression_names``, ``regions`` (names, in order), ``metadata`` and
  ``metadata_arrays`` (metadata entries that are numpy arrays, as ``{"key": "array name"}`` or
  ``{"key": {"sub": "array name"}}``).
* arrays: ``mean``, ``triangles``, ``identity_basis`` and, when present, ``identity_std``,
  ``expression_basis``, ``albedo_mean``, ``albedo_basis``, ``uv``, ``uv_triangles``, ``landmark_indices``,
  ``landmark_weights``, ``landmark_mask``, ``contour_right``, ``contour_left``, ``symmetry``,
  ``region_<i>`` (i-th region in ``regions``), ``meta_<i>``; polygons (and polygon UVs) as ``polygons_ids``
  (all ids concatenated) + ``polygons_sizes`` (corners per polygon).
* FLAME (``model == "flame"``) adds its pose and contour buffers, exactly as :class:`Flame` holds them:
  ``flame_posedirs (P, V·3)``, ``flame_joint_regressor (J, V)``, ``flame_parents (J,)`` int64,
  ``flame_skinning_weights (V, J)`` and, with a dynamic contour, ``flame_contour_indices (N, 17, 3)``
  int64 + ``flame_contour_weights (N, 17, 3)``; so a FLAME model round-trips with its LBS and contour.

``load_npz`` reads the file with :func:`morphable.io.safe_npz.read_npz` (no pickles, every array's size
checked against the file before it is allocated), so a file cannot run code or claim terabytes; every key,
shape and id range is checked and any problem is a :class:`ModelFileError`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from morphable.errors import ModelFileError
from morphable.io.atomic import atomic_write
from morphable.io.safe_npz import read_npz
from morphable.models.base import N_LANDMARKS, MorphableModel
from morphable.models.flame import N_CONTOUR, Flame

FORMAT = "morphable-npz"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_OPTIONAL = ("identity_std", "expression_basis", "albedo_mean", "albedo_basis", "uv", "uv_triangles",
             "contour_right", "contour_left", "symmetry")
_ALWAYS = ("mean", "triangles", "identity_basis", "landmark_indices", "landmark_weights", "landmark_mask")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_FLAME = ("posedirs", "joint_regressor", "parents", "skinning_weights")
_FLAME_OPTIONAL = ("contour_indices", "contour_weights")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _pack_polygons(polys: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.fromiter((len(p) for p in polys), np.int64, len(polys))
    ids = np.fromiter((i for p in polys for i in p), np.int64, int(sizes.sum()))
    return ids, sizes


def save_npz(model: MorphableModel, path: str | Path) -> None:
    """Write ``model`` (a :class:`MorphableModel` or a :class:`Flame`) to ``path`` in the native format
    (atomically)."""
    arrays: dict[str, np.ndarray] = {}
    for key in _ALWAYS + _OPTIONAL:
        value = getattr(model, key)
        if value is not None:
            arrays[key] = _np(value)
    kind = "flame" if isinstance(model, Flame) else "morphable"
    if kind == "flame":
        for key in _FLAME + _FLAME_OPTIONAL:
            value = getattr(model, key)
            if value is not None:
                arrays[f"flame_{key}"] = _np(value)
    regions = list(model.regions)
    for i, key in enumerate(regions):
        arrays[f"region_{i}"] = _np(model.regions[key])
    for key, polys in (("polygons", model.polygons), ("polygon_uvs", model.polygon_uvs)):
        if polys is not None:
            arrays[f"{key}_ids"], arrays[f"{key}_sizes"] = _pack_polygons(polys)

    metadata, metadata_arrays = {}, {}
    for key, value in model.metadata.items():
        if isinstance(value, (np.ndarray, torch.Tensor)):
            metadata_arrays[key] = name = f"meta_{len(arrays)}"
            arrays[name] = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value)
        elif isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            metadata_arrays[key] = {}
            for sub, v in value.items():
                metadata_arrays[key][sub] = name = f"meta_{len(arrays)}"
                arrays[name] = v
        else:
            metadata[key] = value
    header = {"format": FORMAT, "version": VERSION, "model": kind, "name": model.name,
              "dtype": str(model.mean.dtype).removeprefix("torch."),
              "expression_kind": model.expression_kind, "expression_names": model.expression_names,
              "regions": regions, "metadata": metadata, "metadata_arrays": metadata_arrays}
    try:
        arrays["header"] = np.array(json.dumps(header))
    except TypeError as err:
        raise ValueError(f"model metadata is not JSON-serialisable: {err}") from None
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def _unpack_polygons(ids: np.ndarray, sizes: np.ndarray, bound: int, path: Path, what: str) -> list[list[int]]:
    if ids.ndim != 1 or sizes.ndim != 1 or (sizes.size and sizes.min() < 3) or sizes.sum() != ids.size:
        raise ModelFileError(path, f"{what}: inconsistent polygon arrays")
    if ids.size and (ids.min() < 0 or ids.max() >= bound):
        raise ModelFileError(path, f"{what}: id outside [0, {bound})")
    flat = ids.tolist()
    ends = np.cumsum(sizes).tolist()
    return [flat[a:b] for a, b in zip([0] + ends[:-1], ends)]


def _ids(a: np.ndarray | None, bound: int, path: Path, what: str) -> None:
    if a is None:
        return
    if a.dtype.kind not in "iu":
        raise ModelFileError(path, f"{what}: expected integer ids, got {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= bound):
        raise ModelFileError(path, f"{what}: id outside [0, {bound})")


def load_npz(path: str | Path) -> MorphableModel:
    """Read a model written by :func:`save_npz`: a :class:`Flame` when the file holds one, else a
    :class:`MorphableModel`. Raises :class:`ModelFileError` on any problem."""
    path = Path(path)
    arrays = read_npz(path)  # sizes checked before anything is allocated; no pickles
    try:
        header = json.loads(str(arrays.pop("header")))
    except KeyError:
        raise ModelFileError(path, "no 'header': not a morphable model file") from None
    except json.JSONDecodeError as err:
        raise ModelFileError(path, f"corrupted header ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") not in READABLE_VERSIONS:
        raise ModelFileError(path, f"not a {FORMAT} file of version {' or '.join(map(str, READABLE_VERSIONS))}")
    try:
        return _build(header, arrays, path)
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ModelFileError(path, f"missing or malformed entry ({type(err).__name__}: {err})") from None
    except (ValueError, RuntimeError) as err:  # sizes that do not fit each other (torch reports RuntimeError)
        raise ModelFileError(path, f"inconsistent arrays ({' '.join(str(err).split())})") from None


def _build(header: dict[str, Any], arrays: dict[str, np.ndarray], path: Path) -> MorphableModel:
    missing = [k for k in _ALWAYS if k not in arrays]
    if missing:
        raise ModelFileError(path, f"missing arrays: {', '.join(missing)}")
    dtype = _DTYPES.get(header["dtype"])
    if dtype is None:
        raise ModelFileError(path, f"unsupported dtype {header['dtype']!r}")
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise ModelFileError(path, f"array {key!r} has non-numeric dtype {a.dtype}")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ModelFileError(path, f"array {key!r} has non-finite values")
    V = arrays["mean"].shape[0]
    uv = arrays.get("uv")
    _ids(arrays["landmark_indices"], V, path, "landmark_indices")
    for key in ("contour_right", "contour_left", "symmetry"):
        _ids(arrays.get(key), V, path, key)
    _ids(arrays.get("uv_triangles"), 0 if uv is None else len(uv), path, "uv_triangles")
    if arrays["landmark_indices"].size != N_LANDMARKS * 3:
        raise ModelFileError(path, f"landmark_indices: expected (68, 3), got {arrays['landmark_indices'].shape}")

    names = list(header["regions"])
    regions = {}
    for i, name in enumerate(names):
        regions[str(name)] = r = arrays[f"region_{i}"]
        _ids(r, V, path, f"region {name}")
    polys = {}
    for key, bound in (("polygons", V), ("polygon_uvs", 0 if uv is None else len(uv))):
        if f"{key}_ids" in arrays:
            polys[key] = _unpack_polygons(arrays[f"{key}_ids"], arrays[f"{key}_sizes"], bound, path, key)
    metadata = dict(header["metadata"])
    for key, ref in header["metadata_arrays"].items():
        metadata[key] = arrays[ref] if isinstance(ref, str) else {s: arrays[r] for s, r in ref.items()}
    names_e = header["expression_names"]
    kwargs = dict(
        name=str(header["name"]), mean=arrays["mean"], triangles=arrays["triangles"],
        identity_basis=arrays["identity_basis"], identity_std=arrays.get("identity_std"),
        expression_basis=arrays.get("expression_basis"), expression_kind=header["expression_kind"],
        expression_names=None if names_e is None else [str(n) for n in names_e],
        albedo_mean=arrays.get("albedo_mean"), albedo_basis=arrays.get("albedo_basis"),
        uv=uv, uv_triangles=arrays.get("uv_triangles"),
        polygons=polys.get("polygons"), polygon_uvs=polys.get("polygon_uvs"),
        landmark_indices=arrays["landmark_indices"], landmark_weights=arrays["landmark_weights"],
        landmark_mask=arrays["landmark_mask"], contour_right=arrays.get("contour_right"),
        contour_left=arrays.get("contour_left"), regions=regions, symmetry=arrays.get("symmetry"),
        metadata=metadata, dtype=dtype)
    kind = header.get("model", "morphable")
    if kind == "morphable":
        return MorphableModel(**kwargs)
    if kind == "flame":
        return Flame(**_flame_arrays(arrays, V, path), **kwargs)
    raise ModelFileError(path, f"unknown model type {kind!r} (expected 'morphable' or 'flame')")


def _flame_arrays(arrays: dict[str, np.ndarray], V: int, path: Path) -> dict[str, np.ndarray | None]:
    """The :class:`Flame` buffers of a ``model == "flame"`` file, shapes and ids checked."""
    missing = [f"flame_{k}" for k in _FLAME if f"flame_{k}" not in arrays]
    if missing:
        raise ModelFileError(path, f"FLAME model without {', '.join(missing)}")
    out: dict[str, np.ndarray | None] = {k: arrays.get(f"flame_{k}") for k in _FLAME + _FLAME_OPTIONAL}
    parents = out["parents"]
    if parents.ndim != 1 or parents.size == 0 or parents.dtype.kind not in "iu":
        raise ModelFileError(path, f"flame_parents: expected (J,) integers, got {parents.shape} {parents.dtype}")
    J = parents.size
    ids, weights = out["contour_indices"], out["contour_weights"]
    if (ids is None) != (weights is None):
        raise ModelFileError(path, "flame_contour_indices and flame_contour_weights go together")
    N = 0 if ids is None else ids.shape[0]
    expected = {"posedirs": ((J - 1) * 9, V * 3), "joint_regressor": (J, V), "skinning_weights": (V, J),
                "contour_indices": (N, N_CONTOUR, 3), "contour_weights": (N, N_CONTOUR, 3)}
    for key, shape in expected.items():
        a = out[key]
        if a is not None and a.shape != shape:
            raise ModelFileError(path, f"flame_{key}: expected shape {shape}, got {a.shape}")
    _ids(ids, V, path, "flame_contour_indices")
    return out
