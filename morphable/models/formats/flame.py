"""FLAME model files (``generic_model.pkl``, ``female/male_model.pkl`` of FLAME 2020, ``flame2023.pkl``)
and the landmark embeddings of RingNet / TF_FLAME.

Layout (a Python-2 pickle of a dict written with chumpy, read by :mod:`morphable.io.safe_pickle`
without chumpy; key names and shapes as in FLAME's own loader and smplx's ``FLAME``):

=================  ===============  ==========================================================
key                shape            meaning
=================  ===============  ==========================================================
``v_template``     (V=5023, 3)      template mesh, metres (chumpy ``Ch`` or ndarray)
``shapedirs``      (V, 3, 400)      300 shape then 100 expression components, metres per unit
``posedirs``       (V, 3, 36)       pose correctives, input ``vec(R_k − I)`` of joints 1..4
``J_regressor``    (5, V)           joint regressor (scipy ``csc_matrix`` or dense)
``weights``        (V, 5)           skinning weights
``kintree_table``  (2, 5)           row 0 parent id (root: 2³²−1 or −1), row 1 joint id
``f``              (F=9976, 3)      triangles, 0-based
=================  ===============  ==========================================================

Other keys (``J``, ``bs_style``, ``bs_type``...) are ignored. Lengths are converted from metres to mm.

Landmark embeddings (RingNet ``flame_model/``, TF_FLAME ``data/``):

* static: a pickled dict ``lmk_face_idx (L,)`` triangle ids and ``lmk_b_coords (L, 3)`` barycentrics;
  ``L = 51`` (iBUG 17–67) or ``L = 68`` (all iBUG points, ``flame_static_embedding_68.pkl``);
* dynamic: ``flame_dynamic_embedding.npy``, a pickled dict with ``lmk_face_idx (79, 17)`` and
  ``lmk_b_coords (79, 17, 3)`` per yaw bin (see :mod:`morphable.models.flame`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch

from morphable.errors import ModelFileError
from morphable.io.safe_pickle import load_npy, load_pickle
from morphable.models.base import N_LANDMARKS
from morphable.models.flame import N_CONTOUR, Flame

MAX_ABS = 1e6  # no FLAME entry comes near (metres, unit weights, ids < 10^5); larger would overflow in mm
N_SHAPE = 300  # FLAME's shape slots; the remaining shapedirs columns are expression components
_REQUIRED = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
STATIC_NAMES = ("flame_static_embedding_68.pkl", "flame_static_embedding.pkl")  # looked for beside the model
DYNAMIC_NAME = "flame_dynamic_embedding.npy"
LICENCE = ("FLAME licence (flame.is.tue.mpg.de): registration required, no redistribution; "
           "FLAME 2020 is CC-BY-4.0 per its readme")


def _array(d: dict, key: str, path: Any, ndim: int, dtype: Any = np.float64) -> np.ndarray:
    value = d[key]
    if scipy.sparse.issparse(value):
        value = value.toarray()
    try:
        a = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ModelFileError(path, f"'{key}' is not a numeric array ({e})") from None
    if a.ndim != ndim:
        raise ModelFileError(path, f"'{key}' has shape {a.shape}, expected {ndim} dimensions")
    if not np.all(np.isfinite(a)):
        raise ModelFileError(path, f"'{key}' contains non-finite values")
    if a.dtype.kind == "f" and a.size and np.abs(a).max() > MAX_ABS:
        raise ModelFileError(path, f"'{key}' has values beyond {MAX_ABS:g} (corrupted?)")
    return a


def _parents(kintree: np.ndarray, path: Any) -> np.ndarray:
    """Parent index per joint from SMPL/FLAME's ``kintree_table`` (row 0 parent ids, row 1 joint ids)."""
    if kintree.shape[0] != 2:
        raise ModelFileError(path, f"'kintree_table' has shape {kintree.shape}, expected (2, J)")
    column = {int(j): i for i, j in enumerate(kintree[1])}
    parents = [-1]
    for i in range(1, kintree.shape[1]):
        p = column.get(int(kintree[0, i]), -1)
        if not 0 <= p < i:
            raise ModelFileError(path, f"'kintree_table' joint {i} has no earlier parent")
        parents.append(p)
    return np.array(parents, np.int64)


def _dict(obj: Any, path: Any, keys: tuple[str, ...]) -> dict:
    if not isinstance(obj, dict):
        raise ModelFileError(path, f"expected a pickled dict, found {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ModelFileError(path, f"missing key(s) {', '.join(missing)}")
    return obj


def load_static_embedding(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a static landmark embedding. Returns triangle ids ``(L,)`` int64 and barycentrics ``(L, 3)``."""
    d = _dict(load_pickle(path), path, ("lmk_face_idx", "lmk_b_coords"))
    faces = _array(d, "lmk_face_idx", path, 1, np.int64)
    bary = _array(d, "lmk_b_coords", path, 2)
    if bary.shape != (faces.shape[0], 3):
        raise ModelFileError(path, f"'lmk_b_coords' has shape {bary.shape}, expected ({faces.shape[0]}, 3)")
    return faces, bary


def load_dynamic_embedding(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read the dynamic contour embedding. Returns ``(N_bins, 17)`` triangle ids and ``(N_bins, 17, 3)``."""
    d = _dict(load_npy(path), path, ("lmk_face_idx", "lmk_b_coords"))
    faces = _array(d, "lmk_face_idx", path, 2, np.int64)
    bary = _array(d, "lmk_b_coords", path, 3)
    if faces.shape[1] != N_CONTOUR or bary.shape != (*faces.shape, 3):
        raise ModelFileError(path, f"embedding shapes {faces.shape}/{bary.shape}, expected (N, 17)/(N, 17, 3)")
    return faces, bary


def embedding_to_vertices(faces: np.ndarray, bary: np.ndarray, triangles: np.ndarray,
                          path: Any = "<embedding>") -> tuple[np.ndarray, np.ndarray]:
    """Turn (triangle id, barycentrics) into weighted vertex triples. ``(...,), (..., 3) -> (..., 3) x2``.

    Raises ModelFileError (naming ``path``) when a triangle id is out of range or a row of barycentrics
    does not sum to 1.
    """
    if faces.size and (faces.min() < 0 or faces.max() >= len(triangles)):
        raise ModelFileError(path, f"triangle ids up to {faces.max()} but the mesh has {len(triangles)} triangles")
    if not np.allclose(bary.sum(-1), 1.0, atol=1e-6):
        raise ModelFileError(path, "barycentric coordinates do not sum to 1")
    return triangles[faces], bary


def _landmarks(triangles: np.ndarray, static: Path | None, dynamic: tuple | None) -> dict[str, Any]:
    """iBUG-68 definition: a 68-point static file, or a 51-point one plus the frontal dynamic contour."""
    indices = np.zeros((N_LANDMARKS, 3), np.int64)
    weights = np.tile([1.0, 0.0, 0.0], (N_LANDMARKS, 1))
    mask = np.zeros(N_LANDMARKS, bool)
    if static is not None:
        faces, bary = load_static_embedding(static)
        if len(faces) not in (N_LANDMARKS, N_LANDMARKS - N_CONTOUR):
            raise ModelFileError(static, f"{len(faces)} landmarks, expected 51 or 68")
        rows = slice(N_LANDMARKS - len(faces), N_LANDMARKS)
        indices[rows], weights[rows] = embedding_to_vertices(faces, bary, triangles, static)
        mask[rows] = True
    if dynamic is not None and not mask[:N_CONTOUR].any():
        ids, w = dynamic
        indices[:N_CONTOUR], weights[:N_CONTOUR] = ids[0], w[0]  # bin 0: frontal (yaw 0°)
        mask[:N_CONTOUR] = True
    out: dict[str, Any] = {"landmark_indices": indices, "landmark_weights": weights, "landmark_mask": mask}
    if dynamic is not None:
        ids = dynamic[0]
        out["contour_right"] = np.unique(ids[:, :8])  # iBUG 0-7, every yaw bin
        out["contour_left"] = np.unique(ids[:, 9:])  # iBUG 9-16
    return out


def load_flame(path: str | os.PathLike, *, static_embedding: str | os.PathLike | None = None,
               dynamic_embedding: str | os.PathLike | None = None, n_shape: int = N_SHAPE,
               dtype: torch.dtype = torch.float32) -> Flame:
    """Load a FLAME ``.pkl`` (2020 / 2023) as a :class:`~morphable.models.flame.Flame` in millimetres.

    Args:
        path: the model pickle (read with the restricted unpickler; never runs code from the file).
        static_embedding: iBUG landmark embedding (51 or 68 points). Default: found beside the model
            file (:data:`STATIC_NAMES`): the 51-point one when there is a dynamic embedding (iBUG 0–16
            then come from its yaw-0 bin, so static and dynamic landmarks agree at yaw 0), else the
            68-point one; neither: no static landmarks.
        dynamic_embedding: the contour embedding; default :data:`DYNAMIC_NAME` beside the model, if any.
        n_shape: how many leading ``shapedirs`` columns are shape (FLAME: 300); the rest are expression.
        dtype: floating dtype of the buffers.
    Raises:
        ModelFileError: naming the file, for an unreadable/refused pickle or missing/mis-shaped keys.
    """
    path = Path(path)
    d = _dict(load_pickle(path), path, _REQUIRED)
    template = _array(d, "v_template", path, 2)
    V = template.shape[0]
    if template.shape != (V, 3):
        raise ModelFileError(path, f"'v_template' has shape {template.shape}, expected (V, 3)")
    shapedirs = _array(d, "shapedirs", path, 3)
    if shapedirs.shape[:2] != (V, 3) or shapedirs.shape[2] <= n_shape:
        raise ModelFileError(path, f"'shapedirs' has shape {shapedirs.shape}, expected ({V}, 3, K > {n_shape})")
    parents = _parents(_array(d, "kintree_table", path, 2, np.int64), path)
    J = len(parents)
    posedirs = _array(d, "posedirs", path, 3)
    if posedirs.shape != (V, 3, (J - 1) * 9):
        raise ModelFileError(path, f"'posedirs' has shape {posedirs.shape}, expected ({V}, 3, {(J - 1) * 9})")
    regressor = _array(d, "J_regressor", path, 2)
    weights = _array(d, "weights", path, 2)
    if regressor.shape != (J, V) or weights.shape != (V, J):
        raise ModelFileError(path, f"'J_regressor' {regressor.shape} / 'weights' {weights.shape}, "
                                   f"expected ({J}, {V}) / ({V}, {J})")
    triangles = _array(d, "f", path, 2, np.int64)
    if triangles.shape[1] != 3 or triangles.min() < 0 or triangles.max() >= V:
        raise ModelFileError(path, f"'f' must be (F, 3) vertex ids below {V}")

    folder = path.parent
    if dynamic_embedding is None and (folder / DYNAMIC_NAME).exists():
        dynamic_embedding = folder / DYNAMIC_NAME
    if static_embedding is None:  # with a dynamic contour, prefer the 51 inner points (consistent at yaw 0)
        names = STATIC_NAMES[::-1] if dynamic_embedding is not None else STATIC_NAMES
        static_embedding = next((folder / n for n in names if (folder / n).exists()), None)
    dynamic = None
    if dynamic_embedding is not None:
        faces, bary = load_dynamic_embedding(dynamic_embedding)
        dynamic = embedding_to_vertices(faces, bary, triangles, dynamic_embedding)
    landmarks = _landmarks(triangles, None if static_embedding is None else Path(static_embedding), dynamic)

    mm = 1000.0  # FLAME is in metres
    identity = shapedirs[..., :n_shape] * mm
    return Flame(
        name=path.stem,
        mean=template * mm,
        triangles=triangles,
        identity_basis=identity,
        identity_std=np.linalg.norm(identity.reshape(V * 3, -1), axis=0),
        expression_basis=shapedirs[..., n_shape:] * mm,
        expression_kind="pca",
        posedirs=(posedirs * mm).reshape(V * 3, -1).T,
        joint_regressor=regressor,
        parents=parents,
        skinning_weights=weights,
        contour_indices=None if dynamic is None else dynamic[0],
        contour_weights=None if dynamic is None else dynamic[1],
        metadata={"source": str(path), "licence": LICENCE, "units": "m in the file, mm here",
                  "static_embedding": None if static_embedding is None else str(static_embedding),
                  "dynamic_embedding": None if dynamic_embedding is None else str(dynamic_embedding)},
        dtype=dtype,
        **landmarks,
    )
