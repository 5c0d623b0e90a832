"""ICT FaceKit (ICT Face Model Light, USC ICT, MIT licence): the ``FaceXModel/`` OBJ folder or a packed npz.

Layout (ICT-FaceKit ``README.md`` and ``FaceXModel/``, commit da5f95a):

* ``generic_neutral_mesh.obj``: 26 719 vertices in **centimetres**, 28 911 UVs, 26 384 faces (quads and
  triangles, ``f v/vt``), 12 ``usemtl`` material groups; ``vertex_indices.json``: the 53 ARKit-style
  expression names (``expressions``), fitting/rigid vertex sets, the 68 landmark vertices.
* ``identity000.obj`` … ``identity099.obj``: the 100 identity PCA modes as absolute shapes; ``<expr>.obj``:
  the expression targets. ICT's scripts evaluate ``neutral + Σ wᵢ (identityᵢ − neutral) + Σ eⱼ (exprⱼ −
  neutral)``; every file has the neutral's vertex order.
* The packed form (our corpus's ``FaceXModel_vertices_float32.npz``): ``names (158,)`` and
  ``vertices (158, 26719, 3)`` float32 cm for the same meshes (bit-identical to float32 parses of the OBJ
  files); its topology comes from ``FaceXModel/`` beside it (or ``topology=``).

Conversion: everything × 10 to millimetres. Identity basis ``(identityₖ − neutral)``, kept at ICT's own
scale: the modes are mutually orthogonal (|cos| < 1e-4) with norms falling from 613 mm to 10 mm, i.e.
they are already eigenvectors × σₖ, and ICT's sample fit (``sample_data/sample_identity_coeffs.json``) has
coefficients of order one (RMS 0.67 over the first 20, shrinking for later modes), so ICT coefficients
are our standardised N(0, 1) coefficients; ``identity_std[k] = ‖identityₖ − neutral‖`` (mm, over all
vertices). Expressions are blendshape offsets ``(target − neutral)`` with [0, 1] weights.

Regions are the README's vertex ranges ("Face Model Topology", "Face Area Details", "Eyeball Details")
plus ``fitting``/``rigid`` from ``vertex_indices.json``; landmarks are the README's Multi-PIE-68 ids,
contour candidates its extended jawlines (:mod:`morphable.models.landmarks`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from morphable.errors import ModelFileError
from morphable.io.safe_npz import read_npz
from morphable.models.base import MorphableModel
from morphable.models.landmarks import (ICT_JAWLINE_LEFT, ICT_JAWLINE_LEFT_EXTENDED, ICT_JAWLINE_RIGHT,
                                        ICT_JAWLINE_RIGHT_EXTENDED, ICT_MULTIPIE_68, nearest_mirror,
                                        vertex_landmarks)

ICT_LICENCE = "MIT (ICT-FaceKit, USC Institute for Creative Technologies)"
NEUTRAL = "generic_neutral_mesh"
CM_TO_MM = 10.0

# README "Face Model Topology" / "Face Area Details" / "Eyeball Details": name -> (first, last) vertex,
# inclusive as printed there.
ICT_REGIONS: dict[str, tuple[int, int]] = {
    "face": (0, 9408),
    "face_narrow": (0, 6705),
    "head_neck": (9409, 11247),
    "mouth_socket": (11248, 13293),
    "eye_socket_left": (13294, 13677),
    "eye_socket_right": (13678, 14061),
    "gums_tongue": (14062, 17038),
    "teeth": (17039, 21450),
    "eyeball_left": (21451, 23020),
    "eyeball_right": (23021, 24590),
    "eyes": (21451, 24590),
    "sclera_left": (21451, 22220),
    "iris_left": (22221, 23020),
    "sclera_right": (23021, 23790),
    "iris_right": (23791, 24590),
    "lacrimal_fluid_left": (24591, 24794),
    "lacrimal_fluid_right": (24795, 24998),
    "eye_blend_left": (24999, 25022),
    "eye_blend_right": (25023, 25046),
    "eye_occlusion_left": (25047, 25198),
    "eye_occlusion_right": (25199, 25350),
    "eyelashes_left": (25351, 26034),
    "eyelashes_right": (26035, 26718),
}


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ModelFileError(path, f"cannot read ({err.strerror or err})") from None


def read_obj_vertices(path: str | Path) -> np.ndarray:
    """The ``v x y z`` rows of an OBJ file, ``(V, 3)`` float64, in file units (fast: one numpy parse)."""
    path = Path(path)
    rows = [line[2:] for line in _read(path).split(b"\n") if line.startswith(b"v ")]
    try:
        flat = np.array(b" ".join(rows).split(), dtype=np.float64)
    except ValueError:
        raise ModelFileError(path, "malformed 'v' line (not numbers)") from None
    if not rows or flat.size != 3 * len(rows):
        raise ModelFileError(path, "no vertices, or a 'v' line without exactly 3 coordinates")
    if not np.all(np.isfinite(flat)):
        raise ModelFileError(path, "non-finite vertex coordinates")
    return flat.reshape(-1, 3)


def read_neutral_obj(path: str | Path) -> dict[str, Any]:
    """Parse ICT's ``generic_neutral_mesh.obj``: vertices (cm), UVs, polygons with UV ids, material groups.

    Returns:
        dict with ``vertices (V, 3)`` float64 cm, ``uv (T, 2)``, ``polygons``/``polygon_uvs`` (0-based
        lists), ``materials`` {name: [first polygon, polygon count]} in file order.
    """
    path = Path(path)
    try:
        text = _read(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(path, "not a text OBJ file") from None
    vertices, uvs, polygons, polygon_uvs, materials = [], [], [], [], {}
    try:
        for number, line in enumerate(text.split("\n"), 1):
            if line.startswith("v "):
                vertices.append(line[2:])
            elif line.startswith("vt "):
                uvs.append(line[3:])
            elif line.startswith("f "):
                corners = [c.split("/") for c in line[2:].split()]
                if len(corners) < 3 or any(len(c) < 2 or not c[1] for c in corners):
                    raise ModelFileError(path, f"line {number}: expected a polygon 'f v/vt v/vt v/vt ...'")
                polygons.append([int(c[0]) - 1 for c in corners])
                polygon_uvs.append([int(c[1]) - 1 for c in corners])
            elif line.startswith("usemtl "):
                materials[line[7:].strip()] = [len(polygons), 0]
        v = np.array(" ".join(vertices).split(), dtype=np.float64)
        t = np.array(" ".join(uvs).split(), dtype=np.float64)
    except ValueError:
        raise ModelFileError(path, "malformed number in the OBJ data") from None
    if not vertices or v.size != 3 * len(vertices) or t.size != 2 * len(uvs) or not polygons:
        raise ModelFileError(path, "expected 'v x y z', 'vt u v' and 'f' lines")
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(t))):
        raise ModelFileError(path, "non-finite coordinates")
    flat_v = np.fromiter((i for p in polygons for i in p), np.int64)
    flat_t = np.fromiter((i for p in polygon_uvs for i in p), np.int64)
    if flat_v.min() < 0 or flat_v.max() >= len(vertices) or flat_t.min() < 0 or flat_t.max() >= len(uvs):
        raise ModelFileError(path, "face refers to a vertex or UV that does not exist")
    names = list(materials)
    for i, name in enumerate(names):
        end = materials[names[i + 1]][0] if i + 1 < len(names) else len(polygons)
        materials[name][1] = end - materials[name][0]
    return {"vertices": v.reshape(-1, 3), "uv": t.reshape(-1, 2), "polygons": polygons,
            "polygon_uvs": polygon_uvs, "materials": materials}


def triangulate(polygons: list[list[int]]) -> np.ndarray:
    """Fan-split polygons ``[a, b, c, d, ...]`` into ``(a, b, c), (a, c, d), ...``. ``-> (F, 3)`` int64."""
    return np.array([(p[0], p[i], p[i + 1]) for p in polygons for i in range(1, len(p) - 1)], np.int64)


def read_vertex_indices(path: str | Path) -> dict[str, Any]:
    """``vertex_indices.json``: checks the keys the loader uses (``expressions`` names, vertex-id lists)."""
    path = Path(path)
    try:
        d = json.loads(_read(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(path, f"cannot read JSON ({err})") from None
    if not isinstance(d, dict):
        raise ModelFileError(path, "expected a JSON object")
    names = d.get("expressions")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and
                                                          re.fullmatch(r"\w+", n) for n in names):
        raise ModelFileError(path, "'expressions' must be a list of names")
    for key in ("idx_to_fitting_verts", "idx_to_rigid_verts", "idx_to_landmark_verts"):
        ids = d.get(key)
        if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise ModelFileError(path, f"'{key}' must be a list of vertex ids")
    return d


_TOPOLOGY_MEMO: dict[tuple, tuple[dict[str, Any], dict[str, Any]]] = {}


def _topology(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parsed neutral OBJ and vertex_indices.json, memoised per process (keyed by path, mtime, size;
    the polygon lists are then shared between models and must be treated as read-only)."""
    neutral = folder / f"{NEUTRAL}.obj"
    index = folder / "vertex_indices.json"
    for p in (neutral, index):
        if not p.is_file():
            raise ModelFileError(p, "ICT side file not found")
    key = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in (neutral, index))
    if key not in _TOPOLOGY_MEMO:
        _TOPOLOGY_MEMO[key] = (read_neutral_obj(neutral), read_vertex_indices(index))
    return _TOPOLOGY_MEMO[key]


def read_packed(path: str | Path) -> dict[str, np.ndarray]:
    """A packed ICT npz (``names (M,)``, ``vertices (M, V, 3)`` cm) → ``{name: (V, 3) float64}``."""
    path = Path(path)
    arrays = read_npz(path, keys=("names", "vertices"))  # sizes checked before anything is allocated
    if "names" not in arrays or "vertices" not in arrays:
        raise ModelFileError(path, "not a packed ICT npz with 'names' and 'vertices'")
    names, verts = arrays["names"], arrays["vertices"]
    if names.ndim != 1 or verts.ndim != 3 or verts.shape[0] != names.shape[0] or verts.shape[2] != 3 \
            or names.dtype.kind != "U":
        raise ModelFileError(path, f"expected names (M,) and vertices (M, V, 3), got {names.shape} and "
                                   f"{verts.shape}")
    if not np.all(np.isfinite(verts)):
        raise ModelFileError(path, "non-finite vertex coordinates")
    return {str(n): verts[i].astype(np.float64) for i, n in enumerate(names)}


def read_obj_folder(folder: str | Path, expression_names: list[str]) -> dict[str, np.ndarray]:
    """The meshes of a ``FaceXModel/`` folder: neutral, ``identity000.obj``, ``identity001.obj``, … (as
    many as are consecutive) and whichever of ``expression_names`` exist. ``{name: (V, 3) cm}``."""
    folder = Path(folder)
    meshes = {NEUTRAL: read_obj_vertices(folder / f"{NEUTRAL}.obj")}
    k = 0
    while (folder / f"identity{k:03d}.obj").is_file():
        meshes[f"identity{k:03d}"] = read_obj_vertices(folder / f"identity{k:03d}.obj")
        k += 1
    for name in expression_names:
        if (folder / f"{name}.obj").is_file():
            meshes[name] = read_obj_vertices(folder / f"{name}.obj")
    return meshes


def load_ict(path: str | Path, *, topology: str | Path | None = None) -> MorphableModel:
    """Load ICT FaceKit as a :class:`MorphableModel` (mm).

    Args:
        path: a ``FaceXModel/`` folder (official layout) or a packed npz (``names``/``vertices``).
        topology: folder with ``generic_neutral_mesh.obj`` and ``vertex_indices.json``; default: ``path``
            for a folder, ``<npz folder>/FaceXModel`` for a packed npz.
    Returns:
        ``identity_basis (V, 3, K≤100)`` (ICT's own, already standardised scale — see module docstring),
        ``expression_basis (V, 3, E≤53)`` blendshape offsets with ``expression_names``, triangles (quads
        fan-split) with the original ``polygons``, UVs with ``uv_triangles``, 68 landmarks, extended jawline
        contour candidates, regions, mirror symmetry. A folder holding only some of the identity/expression
        OBJ files gives a model with just those (counts are in ``metadata``).
    Raises:
        ModelFileError: missing/corrupt mesh or side file, meshes whose vertex count differs.
    """
    path = Path(path)
    if path.is_dir():
        folder = Path(topology) if topology is not None else path
    elif path.is_file():
        folder = Path(topology) if topology is not None else path.parent / "FaceXModel"
    else:
        raise ModelFileError(path, "ICT model not found (expected a FaceXModel folder or a packed npz)")
    expression_names = read_vertex_indices(folder / "vertex_indices.json")["expressions"]
    meshes = read_obj_folder(path, expression_names) if path.is_dir() else read_packed(path)
    kind = "FaceXModel OBJ folder" if path.is_dir() else "packed npz"
    return build_ict(meshes, folder, f"ICT FaceKit ({kind} {path.name})", path)


def build_ict(meshes: dict[str, np.ndarray], folder: str | Path, source: str, path: str | Path) -> MorphableModel:
    """Assemble the model from ICT meshes ``{name: (V, 3) cm}`` (neutral, ``identity###``, expressions;
    other names are ignored) and the topology folder (``generic_neutral_mesh.obj``,
    ``vertex_indices.json``). ``source`` goes to the metadata, ``path`` into error messages."""
    folder, path = Path(folder), Path(path)
    neutral_obj, index = _topology(folder)
    expression_names = list(index["expressions"])
    if NEUTRAL not in meshes:
        raise ModelFileError(path, f"no '{NEUTRAL}' mesh")
    neutral = meshes[NEUTRAL]
    V = len(neutral_obj["vertices"])
    for name, verts in meshes.items():
        if verts.shape != (V, 3):
            raise ModelFileError(path, f"mesh '{name}' has {len(verts)} vertices, the neutral mesh has {V}")
    if np.abs(neutral - neutral_obj["vertices"]).max() > 1e-4:
        raise ModelFileError(path, f"the neutral mesh differs from {folder / (NEUTRAL + '.obj')}")
    ids = sorted(n for n in meshes if re.fullmatch(r"identity\d{3}", n))
    if not ids or ids != [f"identity{k:03d}" for k in range(len(ids))]:
        raise ModelFileError(path, "identity modes missing or not numbered identity000, identity001, ...")
    exprs = [n for n in expression_names if n in meshes]

    identity = np.stack([meshes[n] - neutral for n in ids], -1) * CM_TO_MM       # (V, 3, K) mm
    expression = (np.stack([meshes[n] - neutral for n in exprs], -1) * CM_TO_MM if exprs else None)
    landmark_ids = dict(enumerate(ICT_MULTIPIE_68))
    indices, weights, mask = vertex_landmarks(landmark_ids)
    regions = {name: np.arange(a, b + 1) for name, (a, b) in ICT_REGIONS.items() if b < V}
    regions["fitting"] = np.asarray(index["idx_to_fitting_verts"], np.int64)
    regions["rigid"] = np.asarray(index["idx_to_rigid_verts"], np.int64)
    for name, r in regions.items():
        if r.size and r.max() >= V:
            raise ModelFileError(folder / "vertex_indices.json", f"region {name}: vertex id beyond {V}")
    polygons, polygon_uvs = neutral_obj["polygons"], neutral_obj["polygon_uvs"]
    metadata = {
        "source": source,
        "licence": ICT_LICENCE, "units": "mm (files: cm)",
        "identity_scaling": "ICT's modes (identity_k - neutral) unchanged: already eigenvector x sigma, "
                            "coefficients ~N(0,1); identity_std = mode norm in mm",
        "materials": neutral_obj["materials"],
        "jawline_right": list(ICT_JAWLINE_RIGHT), "jawline_left": list(ICT_JAWLINE_LEFT),
        "n_identity_files": len(ids), "n_expression_files": len(exprs),
    }
    try:
        return MorphableModel(
            name="ict", mean=neutral * CM_TO_MM, triangles=triangulate(polygons),
            identity_basis=identity, identity_std=np.linalg.norm(identity.reshape(-1, len(ids)), axis=0),
            expression_basis=expression, expression_kind="blendshapes" if exprs else None,
            expression_names=exprs or None, uv=neutral_obj["uv"], uv_triangles=triangulate(polygon_uvs),
            polygons=polygons, polygon_uvs=polygon_uvs, landmark_indices=indices, landmark_weights=weights,
            landmark_mask=mask, contour_right=list(ICT_JAWLINE_RIGHT_EXTENDED),
            contour_left=list(ICT_JAWLINE_LEFT_EXTENDED), regions=regions,
            symmetry=nearest_mirror(neutral), metadata=metadata)
    except (ValueError, RuntimeError) as err:  # torch reports shape mismatches as RuntimeError
        raise ModelFileError(path, " ".join(str(err).split())) from None
