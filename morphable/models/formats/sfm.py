"""Surrey Face Model / eos: the cereal binary model files and their side files, parsed natively.

Layout (read from eos's headers ``include/eos/morphablemodel/{MorphableModel,PcaModel,Blendshape,
ExpressionModel}.hpp`` and ``io/eigen_cerealisation.hpp`` at commit ce98420, and cereal's binary archive;
all little-endian, no padding):

* an Eigen matrix is ``int32 rows, int32 cols`` then ``rows·cols`` float32 in column-major order;
* a ``std::vector<T>`` is a ``uint64`` count then the elements; a ``std::string`` a ``uint64`` length then
  bytes; ``std::array<T, n>`` is n elements with no count; a ``bool`` one byte;
* ``PcaModel`` = mean ``(3V, 1)``, orthonormal basis ``(3V, K)``, eigenvalues ``(K, 1)``,
  ``vector<array<int32, 3>>`` triangles — data laid out ``[x0 y0 z0 x1 ...]``;
* ``MorphableModel`` starts with its ``uint32`` class version (1–4), then: shape ``PcaModel``, colour
  ``PcaModel`` (all sizes 0 for shape-only models), [v ≥ 2] ``optional<variant<PcaModel, Blendshapes>>``
  expression model (``bool`` "is empty", then ``int32`` variant index 0 = PCA, 1 = blendshapes), [v ≥ 3]
  ``optional<unordered_map<string, int32>>`` landmark definitions, ``vector<array<double, 2>>`` texture
  coordinates (origin top-left, v down), [v ≥ 4] ``vector<array<int32, 3>>`` texture triangles;
* a blendshapes file is ``vector<Blendshape>``, each a ``string`` name and an Eigen ``(3V, 1)``
  deformation (``target − neutral``; eos adds ``Σ wᵢ·deformationᵢ`` to the shape sample).

eos's ``PcaModel::draw_sample(c)`` is ``mean + U·diag(√λ)·c`` (the "rescaled" basis), so our standardised
``identity_basis = U·√λ`` gives ``model(identity=c) == draw_sample(c)`` and ``identity_std = √λ`` (mm).

Side files (found next to ``sfm_shape_<N>.bin`` by eos's names, or passed explicitly):
``expression_blendshapes_<N>.bin``; ``ibug_to_sfm.txt`` (TOML-like ``ibug = vertex`` lines, 1-based iBUG
numbers, 0-based vertex ids; a subset of the 68: contour points come from the contour file);
``sfm_model_contours.json`` (``model_contour.right_contour`` / ``left_contour``, 0-based);
``sfm_<N>_edge_topology.json`` (1-based, 0 = none → 0-based, −1 = none); ``sfm_reference_symmetry.txt``
(one 1-based id per line, defined for the reference's first vertices; the rest are filled with the nearest
mirrored vertex, x → −x).
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from morphable.errors import ModelFileError
from morphable.models.base import N_LANDMARKS, MorphableModel
from morphable.models.landmarks import nearest_mirror

SFM_LICENCE = ("Surrey Face Model: free for non-commercial use only (University of Surrey licence, "
               "cvssp.org/facemodel); eos code Apache-2.0")


class CerealReader:
    """Bounds-checked reader of a cereal binary archive; every overrun becomes a :class:`ModelFileError`."""

    def __init__(self, data: bytes, path: str | Path):
        self.data = memoryview(data)
        self.path = path
        self.pos = 0

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelFileError(self.path, f"truncated while reading {what} at byte {self.pos} "
                                            f"(needs {n} bytes, {len(self.data) - self.pos} left)")
        out = self.data[self.pos: self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self._take(struct.calcsize(fmt), what))[0]

    def count(self, item_size: int, what: str) -> int:
        """A ``uint64`` element count, checked against the bytes left (so corruption cannot allocate GBs)."""
        n = self.scalar("Q", what)
        if n * item_size > len(self.data) - self.pos:
            raise ModelFileError(self.path, f"{what}: count {n} exceeds the file size (corrupted?)")
        return n

    def array(self, n: int, dtype: str, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize
        return np.frombuffer(self._take(n * size, what), dtype=dtype).copy()

    def matrix(self, what: str) -> np.ndarray:
        """An Eigen float matrix ``(rows, cols)`` (stored column-major)."""
        rows, cols = self.scalar("i", what), self.scalar("i", what)
        if rows < 0 or cols < 0:
            raise ModelFileError(self.path, f"{what}: negative size {rows}×{cols}")
        flat = self.array(rows * cols, "<f4", what)
        return flat.reshape(cols, rows).T

    def vector_of(self, n_items: int, dtype: str, what: str) -> np.ndarray:
        """``vector<array<dtype, n_items>>`` → ``(N, n_items)``."""
        size = np.dtype(dtype).itemsize * n_items
        n = self.count(size, what)
        return self.array(n * n_items, dtype, what).reshape(n, n_items)

    def string(self, what: str) -> str:
        n = self.count(1, what)
        try:
            return bytes(self._take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFileError(self.path, f"{what}: not valid UTF-8") from None

    def flag(self, what: str) -> bool:
        b = self.scalar("B", what)
        if b > 1:
            raise ModelFileError(self.path, f"{what}: invalid bool byte {b}")
        return bool(b)

    def pca_model(self, what: str) -> dict[str, np.ndarray]:
        mean = self.matrix(f"{what} mean")
        basis = self.matrix(f"{what} basis")
        eig = self.matrix(f"{what} eigenvalues")
        tri = self.vector_of(3, "<i4", f"{what} triangles")
        n = mean.shape[0]
        if mean.size and (mean.shape[1] != 1 or n % 3):
            raise ModelFileError(self.path, f"{what}: mean has shape {mean.shape}, expected (3V, 1)")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(basis))):
            raise ModelFileError(self.path, f"{what}: non-finite values (corrupted?)")
        if mean.size and (basis.shape[0] != n or eig.size != basis.shape[1]):
            raise ModelFileError(self.path, f"{what}: basis {basis.shape} / eigenvalues {eig.shape} do not "
                                            f"match the mean ({n} values)")
        if eig.size and (not np.all(np.isfinite(eig)) or eig.min() < 0):
            raise ModelFileError(self.path, f"{what}: eigenvalues must be finite and non-negative")
        return {"mean": mean.reshape(-1), "basis": basis, "eigenvalues": eig.reshape(-1), "triangles": tri}

    def blendshapes(self, what: str) -> tuple[list[str], np.ndarray]:
        n = self.count(16, what)
        names, columns = [], []
        for i in range(n):
            names.append(self.string(f"{what} {i} name"))
            d = self.matrix(f"{what} {i} deformation")
            if d.shape[1] != 1 or (columns and d.shape[0] != columns[0].shape[0]):
                raise ModelFileError(self.path, f"{what} {i}: deformation has shape {d.shape}")
            columns.append(d[:, 0])
        return names, (np.stack(columns, 1) if columns else np.zeros((0, 0), np.float32))

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ModelFileError(self.path, f"{len(self.data) - self.pos} unexpected bytes after the data")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ModelFileError(path, f"cannot read ({err.strerror or err})") from None


def read_eos_model(path: str | Path) -> dict[str, Any]:
    """Parse an eos ``MorphableModel`` cereal file (versions 1–4) into numpy arrays.

    Returns:
        dict with ``version``, ``shape`` and ``color`` (each ``mean (3V,)``, ``basis (3V, K)``,
        ``eigenvalues (K,)``, ``triangles (F, 3)``), ``expression`` (``None``, ``("pca", pca dict)`` or
        ``("blendshapes", (names, deformations (3V, K)))``), ``landmark_definitions`` (dict or ``None``),
        ``texture_coordinates (T, 2)`` float64 (eos convention, v down), ``texture_triangles (F, 3)``.
    """
    path = Path(path)
    r = CerealReader(_read_bytes(path), path)
    version = r.scalar("I", "class version")
    if version not in (1, 2, 3, 4):
        raise ModelFileError(path, f"not an eos MorphableModel file (class version {version}, expected 1-4)")
    out: dict[str, Any] = {"version": version, "expression": None, "landmark_definitions": None}
    out["shape"] = r.pca_model("shape model")
    out["color"] = r.pca_model("colour model")
    if version >= 2 and not r.flag("expression model optional"):
        index = r.scalar("i", "expression model variant index")
        if index == 0:
            out["expression"] = ("pca", r.pca_model("expression model"))
        elif index == 1:
            out["expression"] = ("blendshapes", r.blendshapes("expression blendshapes"))
        else:
            raise ModelFileError(path, f"unknown expression model variant index {index}")
    if version >= 3 and not r.flag("landmark definitions optional"):
        n = r.count(12, "landmark definitions")
        out["landmark_definitions"] = {r.string("landmark name"): r.scalar("i", "landmark vertex")
                                       for _ in range(n)}
    out["texture_coordinates"] = r.vector_of(2, "<f8", "texture coordinates")
    out["texture_triangles"] = r.vector_of(3, "<i4", "texture triangles") if version >= 4 else None
    r.done()
    if out["shape"]["mean"].size == 0:
        raise ModelFileError(path, "the shape model is empty")
    return out


def read_eos_blendshapes(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Parse an eos blendshapes file: ``(names, deformations (3V, K) float32)``."""
    path = Path(path)
    r = CerealReader(_read_bytes(path), path)
    names, deformations = r.blendshapes("blendshapes")
    r.done()
    if not names:
        raise ModelFileError(path, "contains no blendshapes")
    return names, deformations


def read_ibug_mapping(path: str | Path) -> dict[int, int]:
    """``ibug_to_*.txt``: the ``[landmark_mappings]`` table, iBUG point number (1-based) → vertex id."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFileError(path, f"cannot read landmark mapping ({err})") from None
    section, mapping = None, {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            section = line.strip("[]").strip()
            continue
        if section != "landmark_mappings":
            continue
        m = re.fullmatch(r"(\d+)\s*=\s*(\d+)", line)
        if m is None:
            raise ModelFileError(path, f"line {number}: expected 'ibug = vertex', got {line!r}")
        point, vertex = int(m.group(1)), int(m.group(2))
        if not 1 <= point <= N_LANDMARKS:
            raise ModelFileError(path, f"line {number}: iBUG point {point} outside 1-{N_LANDMARKS}")
        mapping[point] = vertex
    if not mapping:
        raise ModelFileError(path, "no [landmark_mappings] entries")
    return mapping


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(path, f"cannot read JSON ({err})") from None


def _int_array(values: Any, path: Path, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ModelFileError(path, f"{what}: expected a list of integers") from None
    if arr.ndim != 1:
        raise ModelFileError(path, f"{what}: expected a flat list, got shape {arr.shape}")
    return arr


def read_contours(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``*_model_contours.json`` → ``(right, left)`` 0-based candidate vertex ids."""
    path = Path(path)
    d = _read_json(path)
    try:
        c = d["model_contour"]
        return (_int_array(c["right_contour"], path, "right_contour"),
                _int_array(c["left_contour"], path, "left_contour"))
    except (KeyError, TypeError):
        raise ModelFileError(path, "expected {'model_contour': {'right_contour': [...], "
                                   "'left_contour': [...]}}") from None


def read_edge_topology(path: str | Path) -> dict[str, np.ndarray]:
    """eos edge topology JSON (1-based, 0 = none) → ``adjacent_faces``/``adjacent_vertices`` ``(E, 2)``,
    0-based with −1 for "none"."""
    path = Path(path)
    d = _read_json(path)
    out = {}
    try:
        topo = d["edge_topology"]
        for key in ("adjacent_faces", "adjacent_vertices"):
            pairs = [(e["value0"], e["value1"]) for e in topo[key]]
            arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2) - 1
            if arr.size and arr.min() < -1:
                raise ModelFileError(path, f"{key}: negative id")
            out[key] = arr
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ModelFileError(path, "expected {'edge_topology': {'adjacent_faces': [{'value0', 'value1'}], "
                                   "'adjacent_vertices': [...]}}") from None
    if len(out["adjacent_faces"]) != len(out["adjacent_vertices"]):
        raise ModelFileError(path, "adjacent_faces and adjacent_vertices differ in length")
    return out


def read_symmetry(path: str | Path) -> np.ndarray:
    """``*_symmetry.txt``: one 1-based vertex id per line (``#`` starts a comment) → 0-based ``(N,)``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFileError(path, f"cannot read symmetry list ({err})") from None
    ids = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            if not line.isdigit() or int(line) < 1:
                raise ModelFileError(path, f"line {number}: expected a 1-based vertex id, got {line!r}")
            ids.append(int(line) - 1)
    return np.asarray(ids, dtype=np.int64)


def _check_ids(ids: np.ndarray, n: int, path: Path, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise ModelFileError(path, f"{what}: vertex id outside [0, {n})")


def _scaled(basis: np.ndarray, std: np.ndarray, path: Path, what: str) -> np.ndarray:
    """``basis · diag(std)`` (float32), refusing products that overflow to inf (corrupted values)."""
    with np.errstate(over="ignore"):
        out = basis * std
    if not np.all(np.isfinite(out)):
        raise ModelFileError(path, f"{what}: basis × √eigenvalue overflows float32 (corrupted?)")
    return out


def _side_file(explicit: str | Path | None, default: Path | None) -> Path | None:
    """An explicitly given side file must exist; a default one is used only if present."""
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise ModelFileError(p, "side file not found")
        return p
    return default if default is not None and default.is_file() else None


def load_sfm(path: str | Path, *, blendshapes: str | Path | None = None, landmarks: str | Path | None = None,
             contours: str | Path | None = None, edge_topology: str | Path | None = None,
             symmetry: str | Path | None = None) -> MorphableModel:
    """Load an eos/SFM ``.bin`` model (and its side files) as a :class:`MorphableModel` in millimetres.

    Args:
        path: the cereal model file, e.g. ``eos/share/sfm_shape_3448.bin``.
        blendshapes, landmarks, contours, edge_topology, symmetry: side files; when not given they are
            looked up next to ``path`` under eos's names (``expression_blendshapes_<N>.bin``,
            ``ibug_to_sfm.txt``, ``sfm_model_contours.json``, ``sfm_<N>_edge_topology.json``,
            ``sfm_reference_symmetry.txt``) for files named ``sfm_shape_<N>.bin``, and skipped if absent.
            An expression model stored inside the file (eos version ≥ 2) takes precedence over
            ``blendshapes``.
    Returns:
        the model: ``identity_basis = U·√λ`` (``model(identity=c) == eos draw_sample(c)``), expression
        blendshape offsets (``expression_kind="blendshapes"``, weights in [0, 1]) or a standardised
        expression PCA basis, per-vertex UVs (v up), iBUG landmarks, contours, symmetry and
        ``metadata["edge_topology"]``.
    Raises:
        ModelFileError: unreadable, truncated or inconsistent model or side file.
    """
    path = Path(path)
    data = read_eos_model(path)
    shape = data["shape"]
    V = shape["mean"].size // 3
    m = re.fullmatch(r"sfm_shape_(\d+)\.bin", path.name)
    folder, res = path.parent, (m.group(1) if m else None)
    default = (lambda name: folder / name) if m else (lambda name: None)

    mean = shape["mean"].reshape(V, 3)
    std = np.sqrt(shape["eigenvalues"])
    identity_basis = _scaled(shape["basis"], std, path, "shape model").reshape(V, 3, -1)
    tri = shape["triangles"].astype(np.int64)
    _check_ids(tri, V, path, "triangles")

    kind, names, expr = None, None, None
    if data["expression"] is not None:
        kind, payload = data["expression"]
        if kind == "pca":
            if payload["mean"].size != 3 * V:
                raise ModelFileError(path, "the expression PCA model's mean does not match the shape model")
            with np.errstate(over="ignore"):  # float32 overflow becomes inf, refused by _scaled's check
                mean = mean + payload["mean"].reshape(V, 3)  # eos adds the expression sample, mean included
            expr = _scaled(payload["basis"], np.sqrt(payload["eigenvalues"]), path, "expression model")
            if not np.all(np.isfinite(mean)):
                raise ModelFileError(path, "the expression model's mean overflows the shape mean (corrupted?)")
        else:
            names, expr = payload
        if expr.shape[0] != 3 * V:
            raise ModelFileError(path, f"expression model has {expr.shape[0] // 3} vertices, shape has {V}")
        expr = expr.reshape(V, 3, -1)
    else:
        bs_path = _side_file(blendshapes, default(f"expression_blendshapes_{res}.bin"))
        if bs_path is not None:
            names, deformations = read_eos_blendshapes(bs_path)
            if deformations.shape[0] != 3 * V:
                raise ModelFileError(bs_path, f"blendshapes have {deformations.shape[0] // 3} vertices, "
                                              f"the model {path.name} has {V}")
            kind, expr = "blendshapes", deformations.reshape(V, 3, -1)

    color = data["color"]
    albedo_mean = albedo_basis = None
    if color["mean"].size:
        if color["mean"].size != 3 * V:
            raise ModelFileError(path, f"colour model has {color['mean'].size // 3} vertices, shape has {V}")
        albedo_mean = color["mean"].reshape(V, 3)
        albedo_basis = _scaled(color["basis"], np.sqrt(color["eigenvalues"]), path, "colour model").reshape(V, 3, -1)

    uv = uv_tri = None
    tc = data["texture_coordinates"]
    if len(tc):
        uv = np.stack([tc[:, 0], 1.0 - tc[:, 1]], 1)  # eos: origin top-left, v down -> OBJ convention (v up)
        if data["texture_triangles"] is not None and len(data["texture_triangles"]):
            uv_tri = data["texture_triangles"].astype(np.int64)
            if uv_tri.shape != tri.shape:
                raise ModelFileError(path, "texture triangles do not match the shape triangles")
            _check_ids(uv_tri, len(uv), path, "texture triangles")
        elif len(uv) != V:
            raise ModelFileError(path, f"{len(uv)} texture coordinates for {V} vertices and no texture triangles")

    lm_idx = np.zeros((N_LANDMARKS, 3), np.int64)
    lm_w = np.tile([1.0, 0.0, 0.0], (N_LANDMARKS, 1))
    lm_mask = np.zeros(N_LANDMARKS, bool)
    sources: dict[str, str] = {"model": path.name}
    lm_path = _side_file(landmarks, default("ibug_to_sfm.txt"))
    if lm_path is not None:
        for point, vertex in read_ibug_mapping(lm_path).items():
            if not 0 <= vertex < V:
                raise ModelFileError(lm_path, f"iBUG point {point}: vertex {vertex} outside [0, {V})")
            lm_idx[point - 1] = vertex
            lm_mask[point - 1] = True
        sources["landmarks"] = lm_path.name

    right = left = None
    c_path = _side_file(contours, default("sfm_model_contours.json"))
    if c_path is not None:
        right, left = read_contours(c_path)
        _check_ids(right, V, c_path, "right_contour")
        _check_ids(left, V, c_path, "left_contour")
        sources["contours"] = c_path.name

    metadata: dict[str, Any] = {"source": f"eos cereal model {path.name} (Surrey Face Model)",
                                "licence": SFM_LICENCE, "units": "mm", "eos_version": data["version"]}
    e_path = _side_file(edge_topology, default(f"sfm_{res}_edge_topology.json"))
    if e_path is not None:
        topo = read_edge_topology(e_path)
        if topo["adjacent_faces"].size and topo["adjacent_faces"].max() >= len(tri):
            raise ModelFileError(e_path, f"adjacent face id outside [0, {len(tri)})")
        _check_ids(topo["adjacent_vertices"][topo["adjacent_vertices"] >= 0], V, e_path, "adjacent_vertices")
        metadata["edge_topology"] = topo
        sources["edge_topology"] = e_path.name

    sym = None
    s_path = _side_file(symmetry, default("sfm_reference_symmetry.txt"))
    if s_path is not None:
        listed = read_symmetry(s_path)
        if len(listed) > V:
            raise ModelFileError(s_path, f"{len(listed)} entries for a model of {V} vertices")
        _check_ids(listed, V, s_path, "symmetry")
        sym = nearest_mirror(mean)
        sym[: len(listed)] = listed
        sources["symmetry"] = s_path.name
    if data["landmark_definitions"] is not None:
        metadata["landmark_definitions"] = data["landmark_definitions"]
    metadata["files"] = sources

    try:
        return MorphableModel(
            name="sfm" if m else path.stem, mean=mean, triangles=tri, identity_basis=identity_basis,
            identity_std=std, expression_basis=expr, expression_kind=kind, expression_names=names,
            albedo_mean=albedo_mean, albedo_basis=albedo_basis, uv=uv, uv_triangles=uv_tri,
            landmark_indices=lm_idx, landmark_weights=lm_w, landmark_mask=lm_mask,
            contour_right=right, contour_left=left, symmetry=sym, metadata=metadata)
    except (ValueError, RuntimeError) as err:  # torch reports shape mismatches as RuntimeError
        raise ModelFileError(path, " ".join(str(err).split())) from None
