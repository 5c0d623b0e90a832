"""Wavefront OBJ meshes with UVs, vertex colours, materials and a texture image.

Layout read and written (Wavefront OBJ, "Appendix B1. Object Files" of the Advanced Visualizer manual,
and MTL "Appendix B2"): ``v x y z [r g b]`` (the common vertex-colour extension), ``vt u v [w]``,
``f v/vt/vn ...`` with 1-based or negative (relative) ids and any number of corners (quads kept),
``usemtl name`` per face group, ``mtllib file.mtl`` whose ``map_Kd`` gives the texture image.
Normals, groups, smoothing groups, lines and free-form geometry are ignored on read.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from morphable.errors import InputError, MorphableError
from morphable.io.atomic import atomic_write
from morphable.io.image import read_image, write_image
from morphable.io.meshdata import Mesh


def _index(token: str, count: int, kind: str, fail) -> int:
    """OBJ id (1-based, or negative = relative to the ``count`` elements read so far) -> 0-based."""
    i = int(token)
    j = i - 1 if i > 0 else count + i
    if i == 0 or not 0 <= j < count:
        fail(f"{kind} id {i} out of range (have {count})")
    return j


def _material_textures(mtl_path: Path) -> dict[str, Path]:
    """Material name -> ``map_Kd`` image path from an MTL file (options before the file name skipped)."""
    textures: dict[str, Path] = {}
    current = None
    for line in mtl_path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "newmtl":
            current = " ".join(parts[1:])
        elif parts[0] == "map_Kd" and current is not None and len(parts) > 1:
            whole = line.split(None, 1)[1].strip()
            candidate = mtl_path.parent / whole
            textures[current] = candidate if candidate.is_file() else mtl_path.parent / parts[-1]
    return textures


def _texture(path: Path, libraries: list[str], materials: list[str], error: type[MorphableError]) -> np.ndarray | None:
    """The image of the first used material that has one; ``None`` when no library/image is present."""
    textures: dict[str, Path] = {}
    for name in libraries:
        mtl = path.parent / name
        if mtl.is_file():
            textures.update(_material_textures(mtl))
    order = [m for m in dict.fromkeys(materials) if m in textures] or list(textures)
    for name in order:
        image = textures[name]
        if image.is_file():
            try:
                return read_image(image)
            except InputError as e:
                raise error(path, f"texture {image.name}: {e.problem}") from None
    return None


def read_obj(path: str | PathLike, *, error: type[MorphableError] = InputError) -> Mesh:
    """Read an OBJ file (and its MTL texture when present).

    Args:
        path: the ``.obj`` file.
        error: exception class raised on a bad file (``InputError`` for user meshes; model loaders
            pass ``ModelFileError``).
    Returns:
        :class:`Mesh`: faces as an ``(F, 3)`` array when every face is a triangle, else a list of
        polygons; ``uv_faces`` when faces carry ``vt`` ids; ``colors`` when every ``v`` line has r g b;
        ``texture`` from the first used material's ``map_Kd`` (``None`` when the MTL or image is absent);
        ``face_materials`` only when faces use more than one material.
    Raises:
        ``error`` naming the file and line: missing file, malformed numbers, ids out of range, faces
        with fewer than 3 corners, faces mixing corners with and without ``vt``, no vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise error(path, "no such OBJ file")
    lineno = 0

    def fail(problem: str):
        raise error(path, f"line {lineno}: {problem}")

    vertices: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[list[int]] = []
    uv_faces: list[list[int]] = []
    materials: list[str] = []
    libraries: list[str] = []
    current_material = ""
    with_uv = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            key = parts[0]
            try:
                if key == "v":
                    if len(parts) not in (4, 5, 7):
                        fail(f"vertex needs 3 (or 4, or 6) numbers, got {len(parts) - 1}")
                    vertices.append([float(x) for x in parts[1:]])
                elif key == "vt":
                    if len(parts) < 2 or len(parts) > 4:
                        fail(f"texture coordinate needs 1 to 3 numbers, got {len(parts) - 1}")
                    uv = [float(x) for x in parts[1:3]]
                    uvs.append(uv + [0.0] * (2 - len(uv)))
                elif key == "f":
                    if len(parts) < 4:
                        fail(f"face needs at least 3 corners, got {len(parts) - 1}")
                    corners = [c.split("/") for c in parts[1:]]
                    has_uv = [len(c) > 1 and c[1] != "" for c in corners]
                    if any(has_uv) != all(has_uv) or (with_uv is not None and with_uv != has_uv[0]):
                        fail("faces mix corners with and without texture coordinates")
                    with_uv = has_uv[0]
                    faces.append([_index(c[0], len(vertices), "vertex", fail) for c in corners])
                    if with_uv:
                        uv_faces.append([_index(c[1], len(uvs), "texture coordinate", fail) for c in corners])
                    materials.append(current_material)
                elif key == "usemtl":
                    current_material = line.split(None, 1)[1].strip() if len(parts) > 1 else ""
                elif key == "mtllib" and len(parts) > 1:
                    whole = line.split(None, 1)[1].strip()
                    libraries.extend([whole] if (path.parent / whole).is_file() else parts[1:])
            except ValueError as e:
                fail(f"malformed {key!r} line ({e})")
    if not vertices:
        raise error(path, "no vertices (not an OBJ file?)")
    if all(len(v) == 6 for v in vertices):  # "v x y z r g b" on every line
        array = np.asarray(vertices, dtype=np.float64)
        xyz, colors = array[:, :3], array[:, 3:]
    else:
        xyz, colors = np.asarray([v[:3] for v in vertices], dtype=np.float64), None
    if not np.all(np.isfinite(xyz)):
        raise error(path, "non-finite vertex coordinates")
    triangles_only = all(len(face) == 3 for face in faces)
    as_faces = (lambda fs: np.asarray(fs, dtype=np.int64).reshape(-1, 3)) if triangles_only else (lambda fs: fs)
    per_vertex_uv = with_uv and len(uvs) == len(vertices) and uv_faces == faces  # as write_obj writes them
    return Mesh(
        vertices=xyz,
        faces=as_faces(faces),
        uv=np.asarray(uvs, dtype=np.float64).reshape(-1, 2) if with_uv else None,
        uv_faces=as_faces(uv_faces) if with_uv and not per_vertex_uv else None,
        colors=colors,
        texture=_texture(path, libraries, materials, error) if libraries else None,
        face_materials=materials if len(set(materials)) > 1 else None,
    )


def _fmt(rows: np.ndarray) -> list[str]:
    """Rows of floats, each with the shortest repr that reads back to the same float64."""
    return [" ".join(map(repr, row)) for row in np.asarray(rows, dtype=np.float64).tolist()]


def write_obj(path: str | PathLike, mesh: Mesh) -> None:
    """Write ``mesh`` as OBJ, atomically; with a texture also ``<stem>.mtl`` and ``<stem>.png`` beside it.

    Floats are written with the shortest decimal that reads back to the same float64, so
    :func:`read_obj` returns the mesh exactly (faces, quads, UVs, colours, texture, materials).
    Vertex colours go on the ``v`` lines (``v x y z r g b``). The side files are written first, so a
    reader that sees the OBJ also sees complete side files.
    """
    path = Path(path)
    materials = mesh.face_materials
    if mesh.texture is not None:
        names = list(dict.fromkeys(materials)) if materials else ["material0"]
        image_name, mtl_name = f"{path.stem}.png", f"{path.stem}.mtl"
        write_image(path.parent / image_name, mesh.texture)
        with atomic_write(path.parent / mtl_name, "w") as f:
            for name in names:
                f.write(f"newmtl {name}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {image_name}\n\n")
        if materials is None:
            materials = ["material0"] * len(mesh.faces)
    lines = ["# written by morphable"]
    if mesh.texture is not None:
        lines.append(f"mtllib {mtl_name}")
    vertex_rows = mesh.vertices if mesh.colors is None else np.concatenate([mesh.vertices, mesh.colors], axis=1)
    lines += ["v " + row for row in _fmt(vertex_rows)]
    if mesh.uv is not None:
        lines += ["vt " + row for row in _fmt(mesh.uv)]
    polygons = mesh.polygons()
    # per-vertex UVs (uv given, no uv_faces) use the vertex ids as vt ids
    uv_polygons = ([list(f) for f in mesh.uv_faces] if mesh.uv_faces is not None
                   else polygons if mesh.uv is not None else None)
    current = ""
    for i, face in enumerate(polygons):
        if materials is not None and materials[i] != current:
            current = materials[i]
            lines.append(f"usemtl {current}")
        if uv_polygons is None:
            lines.append("f " + " ".join(str(v + 1) for v in face))
        else:
            lines.append("f " + " ".join(f"{v + 1}/{t + 1}" for v, t in zip(face, uv_polygons[i])))
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")
