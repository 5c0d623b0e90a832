"""The :class:`Mesh` record shared by the OBJ and PLY readers/writers.

Conventions: vertices in the file's own units (the readers convert nothing), faces as 0-based vertex
ids, UVs in OBJ convention (u right, v *up*, both in [0, 1] over the texture), texture rows top-first
(as :func:`morphable.io.image.read_image` returns them), vertex colours linear in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

Faces = np.ndarray | list[list[int]]


def _faces(faces: Any, name: str) -> Faces:
    """``(F, 3)`` int64 array when given as an array with 3 columns, else a list of int lists."""
    if hasattr(faces, "detach"):
        faces = faces.detach().cpu().numpy()
    if isinstance(faces, np.ndarray):
        if faces.size == 0:
            return np.zeros((0, 3), np.int64)
        if faces.ndim != 2 or faces.shape[1] < 3:
            raise ValueError(f"Mesh.{name}: expected (F, n>=3) array, got {faces.shape}")
        if faces.shape[1] == 3:
            return faces.astype(np.int64)
        return faces.astype(np.int64).tolist()
    polygons = [[int(i) for i in face] for face in faces]
    if any(len(p) < 3 for p in polygons):
        raise ValueError(f"Mesh.{name}: a face has fewer than 3 corners")
    return polygons


def fan_triangles(faces: Faces) -> np.ndarray:
    """Split polygons ``(a, b, c, d, ...)`` into the fan ``(a, b, c), (a, c, d), ...``. Returns ``(T, 3)`` int64."""
    if isinstance(faces, np.ndarray):
        return faces.astype(np.int64).reshape(-1, 3)
    tris = [(p[0], p[k], p[k + 1]) for p in faces for k in range(1, len(p) - 1)]
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


@dataclass(eq=False)
class Mesh:
    """A polygon mesh with optional UVs, vertex colours and texture.

    Attributes:
        vertices: ``(V, 3)`` float64 positions.
        faces: ``(F, 3)`` int64 triangles, or a list of 0-based vertex-id lists (quads/polygons kept).
        uv: ``(T, 2)`` float64 texture coordinates (v up), or ``None``.
        uv_faces: ids into ``uv``, one list (or ``(F, 3)`` row) per face, same corner counts as ``faces``;
            ``None`` with ``uv`` given means the UVs are per vertex (``T == V``).
        colors: ``(V, 3)`` float64 vertex colours in [0, 1], or ``None``.
        texture: ``(H, W, 3)`` uint8 RGB image, or ``None``.
        face_materials: one material name per face (OBJ ``usemtl``), or ``None`` (one material).
    """

    vertices: np.ndarray
    faces: Faces
    uv: np.ndarray | None = None
    uv_faces: Faces | None = None
    colors: np.ndarray | None = None
    texture: np.ndarray | None = None
    face_materials: list[str] | None = None

    def __post_init__(self) -> None:
        as_np = lambda x: x.detach().cpu().numpy() if hasattr(x, "detach") else x  # noqa: E731
        self.vertices = np.asarray(as_np(self.vertices), dtype=np.float64).reshape(-1, 3)
        self.faces = _faces(as_np(self.faces), "faces")
        if self.uv is not None:
            self.uv = np.asarray(as_np(self.uv), dtype=np.float64).reshape(-1, 2)
        if self.uv_faces is not None:
            self.uv_faces = _faces(as_np(self.uv_faces), "uv_faces")
            if [len(f) for f in self.uv_faces] != [len(f) for f in self.faces]:
                raise ValueError("Mesh.uv_faces: corner counts differ from faces")
            if self.uv is None:
                raise ValueError("Mesh.uv_faces given without uv")
        elif self.uv is not None and len(self.uv) != len(self.vertices):
            raise ValueError(f"Mesh.uv: per-vertex UVs need {len(self.vertices)} rows, got {len(self.uv)}")
        if self.colors is not None:
            self.colors = np.asarray(as_np(self.colors), dtype=np.float64).reshape(len(self.vertices), 3)
        if self.texture is not None:
            self.texture = np.asarray(self.texture)
            if self.texture.dtype != np.uint8 or self.texture.ndim != 3 or self.texture.shape[2] != 3:
                raise ValueError(f"Mesh.texture: expected (H, W, 3) uint8, got {self.texture.shape} {self.texture.dtype}")
        if self.face_materials is not None:
            self.face_materials = [str(m) for m in self.face_materials]
            if len(self.face_materials) != len(self.faces):
                raise ValueError("Mesh.face_materials: one name per face expected")

    @property
    def n_vertices(self) -> int:
        return len(self.vertices)

    def polygons(self) -> list[list[int]]:
        """Faces as a list of vertex-id lists."""
        return self.faces.tolist() if isinstance(self.faces, np.ndarray) else [list(f) for f in self.faces]

    def triangles(self) -> np.ndarray:
        """Faces fan-triangulated: ``(T, 3)`` int64 (quads give two triangles each)."""
        return fan_triangles(self.faces)

    def uv_triangles(self) -> np.ndarray | None:
        """``uv_faces`` fan-triangulated like :meth:`triangles` (``None`` without separate UV faces)."""
        return None if self.uv_faces is None else fan_triangles(self.uv_faces)
