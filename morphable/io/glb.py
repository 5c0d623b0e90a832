"""Binary glTF 2.0 (``.glb``) export of a textured mesh, through ``trimesh``: opens in common viewers
(Blender, three.js, Windows 3D Viewer, macOS Quick Look).

glTF stores one UV per vertex, so a vertex that sits on a UV seam (different UVs in different faces) is
split into one glTF vertex per distinct (vertex, UV) pair. Polygons are split into triangle fans. glTF's
units are metres and its frame is +y up, +z towards the viewer — our model frame — so positions are
only scaled (millimetres → metres by default). The texture is stored as PNG inside the file; glTF's UV
origin is the texture's top-left, so ``v`` is flipped from our OBJ convention (v up).
"""
from __future__ import annotations

import io
from os import PathLike

import numpy as np

from morphable.io.atomic import atomic_write
from morphable.io.meshdata import Mesh, fan_triangles


def glb_arrays(mesh: Mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """The glTF vertex layout of ``mesh``.

    Returns:
        positions ``(N, 3)``, triangles ``(T, 3)`` into them, per-vertex UVs ``(N, 2)`` (v up, as in
        ``mesh``; ``None`` without UVs) and ``source`` ``(N,)``: the ``mesh`` vertex each one copies.
    """
    tris = fan_triangles(mesh.faces)
    if mesh.uv is None:
        return np.asarray(mesh.vertices, np.float64), tris, None, np.arange(len(mesh.vertices))
    uv_tris = fan_triangles(mesh.uv_faces) if mesh.uv_faces is not None else tris
    if uv_tris.shape != tris.shape:
        raise ValueError(f"glb: {len(uv_tris)} UV triangles for {len(tris)} triangles")
    key = tris.reshape(-1).astype(np.int64) * len(mesh.uv) + uv_tris.reshape(-1)
    unique, inverse = np.unique(key, return_inverse=True)
    source, uv_source = unique // len(mesh.uv), unique % len(mesh.uv)
    return (np.asarray(mesh.vertices, np.float64)[source], inverse.reshape(-1, 3).astype(np.int64),
            np.asarray(mesh.uv, np.float64)[uv_source], source)


def glb_bytes(mesh: Mesh, *, scale: float = 1e-3) -> bytes:
    """The ``.glb`` file content for ``mesh`` (positions multiplied by ``scale``: mm → m by default)."""
    import trimesh
    from PIL import Image

    positions, tris, uv, _ = glb_arrays(mesh)
    visual = None
    if uv is not None and mesh.texture is not None:
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(np.ascontiguousarray(mesh.texture)), metallicFactor=0.0,
            roughnessFactor=1.0, doubleSided=False)
        visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    elif mesh.colors is not None:
        visual = trimesh.visual.ColorVisuals(vertex_colors=(np.clip(mesh.colors, 0, 1) * 255).round().astype(np.uint8))
    shape = trimesh.Trimesh(vertices=positions * scale, faces=tris, visual=visual, process=False)
    buffer = io.BytesIO()
    shape.export(buffer, file_type="glb")
    return buffer.getvalue()


def write_glb(path: str | PathLike, mesh: Mesh, *, scale: float = 1e-3) -> None:
    """Write ``mesh`` (vertices in mm by default, see ``scale``) as a binary glTF file, atomically."""
    data = glb_bytes(mesh, scale=scale)
    with atomic_write(path, "wb") as f:
        f.write(data)
