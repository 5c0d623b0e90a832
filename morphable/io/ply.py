"""Stanford PLY meshes with vertex colours and UVs (ascii, binary little- and big-endian).

Layout (Greg Turk, "The PLY Polygon File Format", 1994): an ascii header ``ply`` / ``format
ascii|binary_little_endian|binary_big_endian 1.0`` / ``element NAME COUNT`` followed by its
``property TYPE NAME`` or ``property list COUNT_TYPE ITEM_TYPE NAME`` lines / ``end_header``, then the
elements' records in order. Read: ``vertex`` ``x y z``, colours ``red green blue`` (or
``diffuse_*``; integer types scaled to [0, 1]), per-vertex UVs (``texture_u/texture_v``, ``s/t`` or
``u/v``), ``face`` ``vertex_indices`` (or ``vertex_index``) with any corner count, and MeshLab's per-face
``texcoord`` list (2 floats per corner, giving ``uv`` + ``uv_faces``). Other elements and properties are
skipped. Written: binary little-endian (or ascii), ``double`` coordinates and UVs (exact round trip),
``uchar`` colours (8 bits: exact for multiples of 1/255), ``list uchar int vertex_indices``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from morphable.errors import InputError, MorphableError
from morphable.io.atomic import atomic_write
from morphable.io.meshdata import Mesh

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_UV_NAMES = (("texture_u", "texture_v"), ("s", "t"), ("u", "v"))
_MAX_HEADER = 1 << 20


@dataclass(frozen=True)
class _Property:
    name: str
    dtype: str               # numpy type code without byte order, e.g. "f4"
    count_dtype: str | None  # list length type, ``None`` for a scalar property


@dataclass(frozen=True)
class _Element:
    name: str
    count: int
    properties: tuple[_Property, ...]


def _parse_header(data: bytes, fail) -> tuple[str | None, list[_Element], int]:
    """(byte order or ``None`` for ascii, elements, offset of the body)."""
    if not data.startswith(b"ply"):
        fail("not a PLY file (no 'ply' magic)")
    end = data.find(b"end_header", 0, _MAX_HEADER)
    if end < 0:
        fail("no end_header line")
    body = data.find(b"\n", end)
    body = len(data) if body < 0 else body + 1
    lines = data[:end].decode("latin-1").splitlines()[1:]
    order, elements, props = "missing", [], None
    for line in lines:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            if len(parts) != 3 or parts[1] not in _FORMATS:
                fail(f"unsupported format line {line.strip()!r}")
            order = _FORMATS[parts[1]]
        elif parts[0] == "element":
            if len(parts) != 3 or not parts[2].isdigit():
                fail(f"malformed element line {line.strip()!r}")
            props = []
            elements.append((parts[1], int(parts[2]), props))
        elif parts[0] == "property" and props is not None:
            if len(parts) == 5 and parts[1] == "list" and parts[2] in _TYPES and parts[3] in _TYPES:
                if _TYPES[parts[2]][0] == "f":
                    fail(f"list count type {parts[2]} is not an integer type")
                props.append(_Property(parts[4], _TYPES[parts[3]], _TYPES[parts[2]]))
            elif len(parts) == 3 and parts[1] in _TYPES:
                props.append(_Property(parts[2], _TYPES[parts[1]], None))
            else:
                fail(f"malformed property line {line.strip()!r}")
        else:
            fail(f"unexpected header line {line.strip()!r}")
    if order == "missing":
        fail("no format line")
    return order, [_Element(n, c, tuple(p)) for n, c, p in elements], body


# --- binary bodies ------------------------------------------------------------------------------------
def _read_element_binary_slow(data: bytes, offset: int, element: _Element, order: str, fail):
    """Reference reader: one record, one property at a time. Returns ({name: values}, new offset)."""
    columns: dict[str, list] = {p.name: [] for p in element.properties}
    for _ in range(element.count):
        for p in element.properties:
            if p.count_dtype is None:
                size = np.dtype(p.dtype).itemsize
                if offset + size > len(data):
                    fail(f"file ends inside element '{element.name}'")
                columns[p.name].append(np.frombuffer(data, order + p.dtype, 1, offset)[0])
                offset += size
            else:
                csize = np.dtype(p.count_dtype).itemsize
                if offset + csize > len(data):
                    fail(f"file ends inside element '{element.name}'")
                n = int(np.frombuffer(data, order + p.count_dtype, 1, offset)[0])
                offset += csize
                size = n * np.dtype(p.dtype).itemsize
                if n < 0 or offset + size > len(data):
                    fail(f"file ends inside element '{element.name}'")
                columns[p.name].append(np.frombuffer(data, order + p.dtype, n, offset).copy())
                offset += size
    out = {p.name: (np.asarray(columns[p.name], dtype=p.dtype) if p.count_dtype is None else columns[p.name])
           for p in element.properties}
    return out, offset


def _read_element_binary(data: bytes, offset: int, element: _Element, order: str, fail):
    """Fast reader: one numpy view when every list in the element has the length of the first record's
    (all-triangle faces, scalar-only vertices); otherwise :func:`_read_element_binary_slow`."""
    fields, lengths, probe = [], {}, offset
    for p in element.properties:  # list lengths of the first record give the candidate layout
        if p.count_dtype is None:
            fields.append((p.name, order + p.dtype))
            probe += np.dtype(p.dtype).itemsize
            continue
        csize = np.dtype(p.count_dtype).itemsize
        if element.count == 0 or probe + csize > len(data):
            return _read_element_binary_slow(data, offset, element, order, fail)
        n = int(np.frombuffer(data, order + p.count_dtype, 1, probe)[0])
        if n < 0:
            return _read_element_binary_slow(data, offset, element, order, fail)
        lengths[p.name] = n
        fields += [(f"{p.name}#n", order + p.count_dtype), (p.name, order + p.dtype, (n,))]
        probe += csize + n * np.dtype(p.dtype).itemsize
    record = np.dtype(fields)
    end = offset + element.count * record.itemsize
    if end > len(data):
        if not lengths:
            fail(f"file ends inside element '{element.name}' (needs {end - offset} bytes, has {len(data) - offset})")
        return _read_element_binary_slow(data, offset, element, order, fail)
    table = np.frombuffer(data, record, element.count, offset)
    if any(np.any(table[f"{name}#n"] != n) for name, n in lengths.items()):
        return _read_element_binary_slow(data, offset, element, order, fail)
    out = {}
    for p in element.properties:
        column = table[p.name].astype(p.dtype)  # native byte order
        out[p.name] = column if p.count_dtype is None else list(column)
    return out, end


# --- ascii bodies -------------------------------------------------------------------------------------
def _typed(values: np.ndarray, dtype: str, element: _Element, fail) -> np.ndarray:
    """Ascii numbers (parsed as float64) as ``dtype``: integer properties must hold integers in their type's
    range (a "nan" or "3.7" vertex id is an error, not a silent cast); floats too large for ``float32``
    become ±inf (then rejected where finiteness matters, e.g. coordinates)."""
    if dtype[0] in "iu" and values.size:
        info = np.iinfo(dtype)
        if not (np.all(np.isfinite(values)) and np.all(values == np.floor(values))
                and values.min() >= info.min and values.max() <= info.max):
            fail(f"element '{element.name}': a value of an integer property is not an integer in range")
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def _read_element_ascii(tokens: list[bytes], pos: int, element: _Element, fail):
    """One element from whitespace-separated tokens. Returns ({name: values}, new token position)."""
    props = element.properties
    if all(p.count_dtype is None for p in props):
        n = element.count * len(props)
        if pos + n > len(tokens):
            fail(f"file ends inside element '{element.name}'")
        table = np.asarray(tokens[pos: pos + n], dtype=np.float64).reshape(element.count, len(props))
        return {p.name: _typed(table[:, i], p.dtype, element, fail) for i, p in enumerate(props)}, pos + n
    columns: dict[str, list] = {p.name: [] for p in props}
    for _ in range(element.count):
        for p in props:
            if p.count_dtype is None:
                if pos >= len(tokens):
                    fail(f"file ends inside element '{element.name}'")
                columns[p.name].append(float(tokens[pos]))
                pos += 1
            else:
                if pos >= len(tokens):
                    fail(f"file ends inside element '{element.name}'")
                n = int(tokens[pos])
                if n < 0 or pos + 1 + n > len(tokens):
                    fail(f"file ends inside element '{element.name}'")
                columns[p.name].append(_typed(np.asarray(tokens[pos + 1: pos + 1 + n], dtype=np.float64), p.dtype,
                                              element, fail))
                pos += 1 + n
    out = {p.name: (_typed(np.asarray(columns[p.name], dtype=np.float64), p.dtype, element, fail)
                    if p.count_dtype is None else columns[p.name]) for p in props}
    return out, pos


def read_ply_elements(path: Path, *, error: type[MorphableError] = InputError, fast: bool = True) -> dict[str, dict]:
    """Every element of a PLY file: ``{element: {property: array (scalars) or list of arrays (lists)}}``.

    ``fast=False`` uses the record-by-record reference reader for binary bodies (tests compare both).
    """
    path = Path(path)
    if not path.is_file():
        raise error(path, "no such PLY file")
    data = path.read_bytes()

    def fail(problem: str):
        raise error(path, problem)

    order, elements, offset = _parse_header(data, fail)
    out: dict[str, dict] = {}
    try:
        if order is None:
            tokens, pos = data[offset:].split(), 0
            for element in elements:
                out[element.name], pos = _read_element_ascii(tokens, pos, element, fail)
        else:
            read = _read_element_binary if fast else _read_element_binary_slow
            for element in elements:
                out[element.name], offset = read(data, offset, element, order, fail)
    except (ValueError, OverflowError) as e:  # malformed ascii numbers, impossible sizes
        raise error(path, f"malformed body ({e})") from None
    return out


def _unit_colors(columns: dict, names: tuple[str, str, str]) -> np.ndarray:
    """Colour columns scaled to [0, 1]: integer types by their maximum, floats kept."""
    rgb = []
    for name in names:
        c = columns[name]
        scale = float(np.iinfo(c.dtype).max) if c.dtype.kind in "iu" else 1.0
        rgb.append(c.astype(np.float64) / scale)
    return np.stack(rgb, axis=1)


def read_ply(path: str | PathLike, *, error: type[MorphableError] = InputError) -> Mesh:
    """Read a PLY mesh (ascii or binary). Faces as ``(F, 3)`` when all are triangles, else polygons.

    Raises:
        ``error`` naming the file: missing file, bad header, truncated or malformed body, missing
        ``x y z``, face ids out of range or not integers, non-finite coordinates, colours or UVs.
    """
    path = Path(path)
    elements = read_ply_elements(path, error=error)
    vertex = elements.get("vertex")
    if vertex is None or not all(k in vertex and not isinstance(vertex[k], list) for k in "xyz"):
        raise error(path, "no 'vertex' element with x, y, z")
    with np.errstate(invalid="ignore", over="ignore"):  # casting a signalling NaN warns; checked just below
        vertices = np.stack([vertex[k].astype(np.float64) for k in "xyz"], axis=1)
        colors = None
        for names in (("red", "green", "blue"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
            if all(n in vertex and not isinstance(vertex[n], list) for n in names):
                colors = _unit_colors(vertex, names)
                break
        uv = uv_faces = None
        for u, v in _UV_NAMES:
            if u in vertex and v in vertex and not isinstance(vertex[u], list) and not isinstance(vertex[v], list):
                uv = np.stack([vertex[u], vertex[v]], axis=1).astype(np.float64)
                break
    if not np.all(np.isfinite(vertices)):
        raise error(path, "non-finite vertex coordinates")
    face = elements.get("face", {})
    key = next((k for k in ("vertex_indices", "vertex_index") if isinstance(face.get(k), list)), None)
    polygons = [] if key is None else face[key]
    if any(len(p) < 3 for p in polygons):
        raise error(path, "a face has fewer than 3 corners")
    if any(p.dtype.kind == "f" and not (np.all(np.isfinite(p)) and np.all(p == np.floor(p))) for p in polygons):
        raise error(path, "face vertex ids are not integers")
    if polygons and (min(int(p.min()) for p in polygons) < 0 or max(int(p.max()) for p in polygons) >= len(vertices)):
        raise error(path, f"face vertex ids out of range [0, {len(vertices)})")
    texcoord = face.get("texcoord")
    if isinstance(texcoord, list) and len(texcoord) == len(polygons):
        if any(len(t) != 2 * len(p) for t, p in zip(texcoord, polygons)):
            raise error(path, "face texcoord lists do not have 2 numbers per corner")
        with np.errstate(invalid="ignore", over="ignore"):
            uv = (np.concatenate([t.astype(np.float64) for t in texcoord]).reshape(-1, 2) if polygons
                  else np.zeros((0, 2)))
        starts = np.cumsum([0] + [len(p) for p in polygons])
        uv_faces = [list(range(starts[i], starts[i + 1])) for i in range(len(polygons))]
    for values, what in ((colors, "vertex colours"), (uv, "texture coordinates")):
        if values is not None and not np.all(np.isfinite(values)):
            raise error(path, f"non-finite {what}")
    triangles_only = all(len(p) == 3 for p in polygons)
    faces = (np.asarray(polygons, dtype=np.int64).reshape(-1, 3) if triangles_only
             else [p.astype(np.int64).tolist() for p in polygons])
    if uv_faces is not None and triangles_only:
        uv_faces = np.asarray(uv_faces, dtype=np.int64).reshape(-1, 3)
    return Mesh(vertices=vertices, faces=faces, uv=uv, uv_faces=uv_faces, colors=colors)


def write_ply(path: str | PathLike, mesh: Mesh, *, binary: bool = True) -> None:
    """Write ``mesh`` as PLY (binary little-endian, or ascii), atomically.

    Coordinates and per-vertex UVs (``texture_u``/``texture_v``) are ``double``; colours are rounded to
    ``uchar``. Separate UV faces (``uv_faces``) and textures have no standard PLY form and are not
    written (use OBJ for textured meshes).
    """
    polygons = mesh.polygons()
    if any(len(p) > 255 for p in polygons):
        raise ValueError("write_ply: a face has more than 255 corners")
    per_vertex_uv = mesh.uv is not None and mesh.uv_faces is None
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if per_vertex_uv:
        fields += [("texture_u", "<f8"), ("texture_v", "<f8")]
    table = np.zeros(mesh.n_vertices, dtype=fields)
    for i, k in enumerate("xyz"):
        table[k] = mesh.vertices[:, i]
    if mesh.colors is not None:
        rgb = np.rint(np.clip(mesh.colors, 0.0, 1.0) * 255.0).astype(np.uint8)
        for i, k in enumerate(("red", "green", "blue")):
            table[k] = rgb[:, i]
    if per_vertex_uv:
        table["texture_u"], table["texture_v"] = mesh.uv[:, 0], mesh.uv[:, 1]
    kinds = {"<f8": "double", "u1": "uchar"}
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", "comment written by morphable",
              f"element vertex {mesh.n_vertices}"]
    header += [f"property {kinds[t]} {name}" for name, t in fields]
    header += [f"element face {len(polygons)}", "property list uchar int vertex_indices", "end_header"]
    with atomic_write(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            f.write(table.tobytes())
            f.write(b"".join(struct.pack(f"<B{len(p)}i", len(p), *p) for p in polygons))
        else:
            for row in table.tolist():
                f.write((" ".join(repr(x) for x in row) + "\n").encode("ascii"))
            for p in polygons:
                f.write((" ".join(map(str, [len(p), *p])) + "\n").encode("ascii"))
