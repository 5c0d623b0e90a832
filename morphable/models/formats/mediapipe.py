"""MediaPipe canonical face mesh as a template-only model (no identity, expression or colour basis).

Source: ``mediapipe/modules/face_geometry/data/`` of google/mediapipe (Apache-2.0):
``canonical_face_model.obj`` (468 vertices, 898 triangles, ``f v/vt`` with 468 UVs) and
``face_model_with_iris.obj`` (478 vertices: the same 468 plus 5 iris points per eye, 906 triangles).
MediaPipe's face geometry module works in a metric space in **centimetres**; the canonical face is
15.5 units wide, +y up, +z towards the viewer, triangles wound counter-clockwise seen from the front.
Converted: positions × 10 (mm), UVs kept in OBJ convention (v up) with their own UV triangles.

``geometry_pipeline_metadata_landmarks.pbtxt`` (optional, found beside the OBJ) repeats the mesh as a
``vertex_buffer`` (x y z u v per vertex, v down) and gives MediaPipe's ``procrustes_landmark_basis``
(landmark ids and weights used to fit the canonical face to detected landmarks); the basis is kept in
``metadata["procrustes_landmark_ids"]`` / ``["procrustes_landmark_weights"]``.

No iBUG-68 definition is given by MediaPipe, so the model defines none (``landmark_mask`` all false).
Regions: ``face`` (the 468 mesh vertices) and, for the iris file, ``iris`` (vertices 468–477).
``symmetry`` is each vertex's exact mirror partner (x → −x), present when every vertex has one.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from morphable.errors import ModelFileError
from morphable.io.obj import read_obj
from morphable.models.base import MorphableModel
from morphable.models.landmarks import nearest_mirror

MM_PER_CM = 10.0
MESH_VERTICES = 468
IRIS_VERTICES = 478
MEDIAPIPE_LICENCE = "MediaPipe canonical face mesh: Apache-2.0 (google/mediapipe)"
METADATA_NAME = "geometry_pipeline_metadata_landmarks.pbtxt"


def read_procrustes_basis(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``procrustes_landmark_basis { landmark_id: i weight: w }`` entries of a geometry pipeline pbtxt.

    Returns ``ids (L,)`` int64 and ``weights (L,)`` float64.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelFileError(path, f"cannot read geometry metadata ({e})") from None
    entries = re.findall(r"procrustes_landmark_basis\s*\{([^}]*)\}", text)
    ids, weights = [], []
    for entry in entries:
        m = re.fullmatch(r"\s*landmark_id:\s*(\d+)\s+weight:\s*([-+0-9.eE]+)\s*", entry)
        if m is None:
            raise ModelFileError(path, f"malformed procrustes_landmark_basis entry {entry.strip()!r}")
        try:
            ids.append(int(m.group(1)))
            weights.append(float(m.group(2)))
        except ValueError:
            raise ModelFileError(path, f"malformed number in {entry.strip()!r}") from None
    if not ids:
        raise ModelFileError(path, "no procrustes_landmark_basis entries")
    return np.asarray(ids, np.int64), np.asarray(weights, np.float64)


def load_mediapipe(path: str | os.PathLike, *, metadata: str | os.PathLike | None = None,
                   discover: bool = True) -> MorphableModel:
    """Load MediaPipe's ``canonical_face_model.obj`` (or ``face_model_with_iris.obj``) in millimetres.

    Args:
        path: the OBJ file.
        metadata: ``geometry_pipeline_metadata_landmarks.pbtxt``; with ``discover`` it is looked up
            beside the OBJ when not given.
    Returns:
        a template-only :class:`MorphableModel` (0 identity components).
    Raises:
        ModelFileError: unreadable OBJ, not 468/478 vertices, faces that are not triangles or lack
            UVs, or a bad metadata file.
    """
    path = Path(path)
    mesh = read_obj(path, error=ModelFileError)
    V = len(mesh.vertices)
    if V not in (MESH_VERTICES, IRIS_VERTICES):
        raise ModelFileError(path, f"not a MediaPipe canonical face mesh: {V} vertices "
                                   f"(expected {MESH_VERTICES} or {IRIS_VERTICES})")
    if not isinstance(mesh.faces, np.ndarray):
        raise ModelFileError(path, "faces are not all triangles")
    if mesh.uv is None:
        raise ModelFileError(path, "faces carry no texture coordinates")
    mean = mesh.vertices * MM_PER_CM
    sym = nearest_mirror(mean)
    mirrored = mean * np.array([-1.0, 1.0, 1.0])
    exact = np.abs(mean[sym] - mirrored).max() < 1e-6 * np.abs(mean).max()
    regions: dict[str, Any] = {"face": np.arange(MESH_VERTICES)}
    if V == IRIS_VERTICES:
        regions["iris"] = np.arange(MESH_VERTICES, IRIS_VERTICES)
    meta: dict[str, Any] = {"source": f"MediaPipe canonical face mesh ({path.name})", "licence": MEDIAPIPE_LICENCE,
                            "units": "mm (file: cm)", "files": {"model": path.name}}
    meta_path = Path(metadata) if metadata is not None else (path.parent / METADATA_NAME if discover else None)
    if metadata is not None and not meta_path.is_file():
        raise ModelFileError(meta_path, "side file not found")
    if meta_path is not None and meta_path.is_file():
        ids, weights = read_procrustes_basis(meta_path)
        if ids.max() >= V:
            raise ModelFileError(meta_path, f"procrustes landmark id {ids.max()} outside [0, {V})")
        meta["procrustes_landmark_ids"], meta["procrustes_landmark_weights"] = ids, weights
        meta["files"]["metadata"] = meta_path.name
    try:
        return MorphableModel(
            name="mediapipe", mean=mean, triangles=mesh.faces, identity_basis=np.zeros((V, 3, 0)),
            uv=mesh.uv, uv_triangles=mesh.uv_faces, polygons=mesh.polygons(),
            polygon_uvs=None if mesh.uv_faces is None else mesh.uv_faces.tolist(), regions=regions,
            symmetry=sym if exact else None, metadata=meta)
    except ValueError as e:
        raise ModelFileError(path, str(e)) from None
