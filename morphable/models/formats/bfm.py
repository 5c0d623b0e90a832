"""Basel Face Model loaders: BFM 2009 (MATLAB ``.mat``) and BFM 2017/2019 (statismo ``.h5``).

**BFM 2009** — ``PublicMM1/01_MorphableModel.mat`` (Paysan et al., AVSS 2009; a MATLAB v5 file read with
:func:`scipy.io.loadmat`). Layout, as read by eos's ``share/scripts/convert-bfm2009-to-eos.py`` (commit
001e015) and the BFM web page:

* ``shapeMU (3N, 1)`` mean shape in **micrometres**, laid out ``[x0 y0 z0 x1 ...]`` (N = 53 490);
* ``shapePC (3N, K)`` orthonormal principal components, ``shapeEV (K, 1)`` their **standard deviations**
  (not variances; K = 199);
* ``texMU (3N, 1)``, ``texPC (3N, K)``, ``texEV (K, 1)``: per-vertex RGB colour in **0–255**, same layout;
* ``tl (F, 3)`` triangles, **1-based**, wound clockwise seen from the front (eos swaps two corners);
* ``segbin (N, 4)`` optional binary masks of the four face segments of the BFM download.

Converted to DESIGN.md's conventions: ``mean = shapeMU / 1000`` (mm), standardised
``identity_basis = shapePC · diag(shapeEV) / 1000`` (so ``model(identity=c)`` is
``(shapeMU + shapePC · (shapeEV ∘ c)) / 1000``), ``identity_std = shapeEV / 1000`` (mm), colour
``texMU / 255`` and ``texPC · diag(texEV) / 255``, triangles 0-based and wound so that normals point
out of the head (checked on the mean shape, see :func:`outward_winding`), segments as regions
``segment1..4`` (in the file's column order).

Optional expression bases for BFM 2009 (both defined on the 53 215 vertices that 3DDFA keeps of the
53 490; their vertex ``j`` is BFM vertex ``trimIndex[j] − 1``):

* 3DDFA's ``Model_Expression.mat`` (Zhu et al., CVPR 2016; used by 3DMM-STN): ``mu_exp (3M, 1)``,
  ``w_exp (3M, K)`` in µm (3DMM-STN adds ``w_exp`` columns to ``shapeMU`` directly), ``sigma_exp (K, 1)``
  taken as the coefficients' standard deviations (the name; 3DDFA documents no more). As 3DDFA does,
  ``mu_exp`` is added to the mean shape.
* Guo et al.'s ``Exp_Pca.bin`` (used by Deep3DFaceRecon, ``util/load_mats.py``): little-endian
  ``int32 K``, then ``float32 mean (3M)``, then ``float32 basis (K, 3M)`` component after component, in µm;
  the standard deviations come from the text file ``std_exp.txt`` beside it (K numbers). As
  Deep3DFaceRecon does, the stored mean is not used. M is not stored: it follows from the file size.

When the expression basis has fewer vertices than the model, the vertex index file (Deep3DFaceRecon's
``BFM_exp_idx.mat`` or 3DDFA's ``model_info.mat``, key ``trimIndex``, 1-based) maps them, and the whole
model is restricted to those vertices in that order (as 3DDFA and Deep3DFaceRecon do): triangles with a
dropped corner are removed, landmarks and contours renumbered (ones on dropped vertices are left out).

**BFM 2017/2019** — statismo HDF5 (Gerig et al., FG 2018; layout as read by eos's
``convert-bfm2017-to-eos.py``): for each of ``shape``, ``color``, ``expression``:
``/<part>/model/mean (3N,)``, ``/<part>/model/pcaBasis (3N, K)`` orthonormal columns,
``/<part>/model/pcaVariance (K,)`` **variances**, ``/<part>/model/noiseVariance``; the mesh in
``/shape/representer/points (3, N)`` and ``/shape/representer/cells (3, F)`` (0-based). Shape in mm,
colour in [0, 1]. Standardised bases are ``pcaBasis · diag(√pcaVariance)``; the expression model's mean
is added to the mean shape (eos's ``draw_sample`` adds the whole expression sample, mean included).

Landmarks for both: eos's ``ibug_to_bfm2009.txt`` / ``ibug_to_bfm2017-1_bfm_nomouth.txt`` (iBUG point
→ 0-based vertex) and ``bfm2009_model_contours.json`` / ``bfm2017-1_bfm_nomouth_model_contours.json``
(``eos/share`` in the corpus), passed explicitly or found beside the model file under those names.

Licence: the BFM files are free for non-commercial research under the University of Basel's licence
and may not be redistributed; no BFM file ships with this package.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from morphable.errors import ModelFileError
from morphable.models.base import MorphableModel
from morphable.models.formats.sfm import read_contours, read_ibug_mapping
from morphable.models.landmarks import vertex_landmarks

BFM_LICENCE = ("Basel Face Model: free for non-commercial research under the University of Basel's "
               "licence (faces.dmi.unibas.ch); the model files may not be redistributed")
MICROMETRES_PER_MM = 1000.0
_H5_MAX_RATIO = 1032  # a dataset's bytes per file byte at most (deflate's limit; statismo files are not compressed)
PathLike = str | os.PathLike


def _fail(path: PathLike, problem: str) -> NoReturn:
    raise ModelFileError(path, problem)


def _side_file(explicit: PathLike | None, candidates: list[Path]) -> Path | None:
    """An explicitly given side file must exist; otherwise the first existing candidate (or ``None``)."""
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            _fail(p, "side file not found")
        return p
    return next((c for c in candidates if c.is_file()), None)


# --- reading raw arrays ---------------------------------------------------------------------------
def read_mat(path: PathLike, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB v5 ``.mat`` file; a missing required key is a ModelFileError."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        _fail(path, "file not found")
    try:
        data = loadmat(path, variable_names=list(keys + optional))
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        _fail(path, "MATLAB v7.3 file; save it as v7 (save(..., '-v7')) to load it")
    except Exception as e:  # a parser fed hostile bytes can raise anything (ValueError, zlib.error, ...)
        _fail(path, f"not a readable MATLAB .mat file ({type(e).__name__}: {e})")
    missing = [k for k in keys if k not in data]
    if missing:
        _fail(path, f"missing variable(s) {', '.join(missing)} (is this the right file?)")
    return {k: data[k] for k in keys + optional if k in data}


def _float(array: Any, path: PathLike, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``array`` as finite float64 with the given shape (``None`` = any size)."""
    if np.asarray(array).dtype.kind not in "biuf":  # text, objects, complex numbers (numpy would drop .imag)
        _fail(path, f"{name}: not a real numeric array")
    try:
        with np.errstate(invalid="ignore"):  # a signalling NaN warns when cast; non-finite values fail below
            a = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(path, f"{name}: not a numeric array")
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        want = "×".join("*" if s is None else str(s) for s in shape)
        _fail(path, f"{name}: expected shape {want}, got {'×'.join(map(str, a.shape)) or 'scalar'}")
    if not np.all(np.isfinite(a)):
        _fail(path, f"{name}: contains non-finite values")
    return a


def _column(array: Any, path: PathLike, name: str, n: int | None = None) -> np.ndarray:
    """A vector stored as ``(n, 1)``, ``(1, n)`` or ``(n,)`` -> ``(n,)`` float64."""
    a = np.asarray(array)
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    return _float(a, path, name, (n,))


def _triangles(array: Any, path: PathLike, name: str, n_vertices: int, base: int) -> np.ndarray:
    """``(F, 3)`` int64 0-based triangles from a ``base``-based integer array; ids checked."""
    a = np.asarray(array)
    if a.ndim != 2 or a.shape[1] != 3 or a.dtype.kind not in "iuf":
        _fail(path, f"{name}: expected an F×3 integer array, got shape {a.shape}")
    if a.dtype.kind == "f" and (not np.all(np.isfinite(a)) or np.any(a != np.round(a))):
        _fail(path, f"{name}: non-integer vertex ids")
    if a.size and (a.min() < base or a.max() > n_vertices - 1 + base):  # before casting: no overflow
        _fail(path, f"{name}: vertex ids outside [{base}, {n_vertices + base - 1}]")
    return a.astype(np.int64) - base


def outward_winding(vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, bool]:
    """Wind triangles so their normals point away from the mesh's centroid (out of the face/head).

    The test is the sign of ``Σ_f n_f · (c_f − c̄)`` over triangles ``f`` with area-weighted normals
    ``n_f = (b − a) × (c − a)``, centroids ``c_f`` and the vertex centroid ``c̄``: for a closed mesh it is
    6× the enclosed volume; for an open face mask (a shell bulging towards the viewer) it is positive
    when the normals point out. Returns ``(triangles, flipped)``.
    """
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    normals = np.cross(b - a, c - a)
    score = float(np.sum(normals * ((a + b + c) / 3.0 - vertices.mean(axis=0))))
    if score >= 0:
        return triangles, False
    return triangles[:, [0, 2, 1]], True


def read_model_expression(path: PathLike) -> dict[str, np.ndarray]:
    """3DDFA's ``Model_Expression.mat`` -> ``mean (3M,)``, ``basis (3M, K)``, ``std (K,)``, all in µm."""
    d = read_mat(path, ("mu_exp", "w_exp", "sigma_exp"))
    basis = _float(d["w_exp"], path, "w_exp", (None, None))
    rows, K = basis.shape
    if rows % 3 or K == 0:
        _fail(path, f"w_exp: expected a 3M×K array, got {rows}×{K}")
    return {"mean": _column(d["mu_exp"], path, "mu_exp", rows), "basis": basis,
            "std": _column(d["sigma_exp"], path, "sigma_exp", K)}


def read_exp_pca(path: PathLike, std_path: PathLike) -> dict[str, np.ndarray]:
    """Guo et al.'s ``Exp_Pca.bin`` + ``std_exp.txt`` -> ``mean (3M,)``, ``basis (3M, K)``, ``std (K,)`` (µm)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        _fail(path, f"cannot read ({e.strerror or e})")
    if len(raw) < 4:
        _fail(path, "truncated: no component count")
    K = int(np.frombuffer(raw, "<i4", 1)[0])
    payload = len(raw) - 4
    if K <= 0 or K > 10_000 or payload % (12 * (K + 1)):
        _fail(path, f"size {len(raw)} bytes does not fit 'int32 K={K}, float32 mean (3M), float32 basis (K×3M)'")
    M = payload // (12 * (K + 1))
    values = np.frombuffer(raw, "<f4", offset=4).astype(np.float64)
    if M == 0 or not np.all(np.isfinite(values)):
        _fail(path, "empty or non-finite expression basis")
    mean, basis = values[: 3 * M], values[3 * M:].reshape(K, 3 * M).T
    std_path = Path(std_path)
    try:
        std = np.loadtxt(std_path, dtype=np.float64, ndmin=1)
    except (OSError, ValueError) as e:
        _fail(std_path, f"cannot read expression standard deviations ({e})")
    if std.shape != (K,) or not np.all(np.isfinite(std)) or np.any(std < 0):
        _fail(std_path, f"expected {K} non-negative standard deviations for {path.name}, got {std.size}")
    return {"mean": mean, "basis": basis, "std": std}


def read_trim_index(path: PathLike, n_model: int) -> np.ndarray:
    """``trimIndex`` (1-based, from ``BFM_exp_idx.mat`` / ``model_info.mat``) -> 0-based ``(M,)`` int64."""
    d = read_mat(path, ("trimIndex",))
    ids = _column(d["trimIndex"], path, "trimIndex")
    if np.any(ids != np.round(ids)) or ids.min() < 1 or ids.max() > n_model:
        _fail(path, f"trimIndex: expected integer vertex ids in [1, {n_model}]")
    ids = ids.astype(np.int64) - 1
    if len(np.unique(ids)) != len(ids):
        _fail(path, "trimIndex: repeated vertex ids")
    return ids


# --- assembling --------------------------------------------------------------------------------------
def _restrict_triangles(triangles: np.ndarray, keep: np.ndarray, n: int) -> np.ndarray:
    """Triangles of the sub-mesh on vertices ``keep`` (renumbered 0..len(keep)-1)."""
    new_id = np.full(n, -1, np.int64)
    new_id[keep] = np.arange(len(keep))
    mapped = new_id[triangles]
    return mapped[np.all(mapped >= 0, axis=1)]


def _landmarks(lm_path: Path | None, c_path: Path | None, new_id: np.ndarray) -> dict[str, Any]:
    """iBUG-68 definitions and contours from eos side files, in the (possibly restricted) numbering."""
    n_full = len(new_id)
    out: dict[str, Any] = {}
    if lm_path is not None:
        mapping = {}
        for point, vertex in read_ibug_mapping(lm_path).items():
            if not 0 <= vertex < n_full:
                _fail(lm_path, f"iBUG point {point}: vertex {vertex} outside [0, {n_full})")
            if new_id[vertex] >= 0:
                mapping[point - 1] = int(new_id[vertex])
        out["landmark_indices"], out["landmark_weights"], out["landmark_mask"] = vertex_landmarks(mapping)
    if c_path is not None:
        for side, ids in zip(("right", "left"), read_contours(c_path)):
            if ids.size and (ids.min() < 0 or ids.max() >= n_full):
                _fail(c_path, f"{side}_contour: vertex id outside [0, {n_full})")
            mapped = new_id[ids]
            out[f"contour_{side}"] = mapped[mapped >= 0]
    return out


def _build(path: Path, name: str, parts: dict[str, Any], **kwargs: Any) -> MorphableModel:
    try:
        return MorphableModel(name=name, **parts, **kwargs)
    except (ValueError, RuntimeError) as e:  # a size mismatch the checks above did not name (torch: RuntimeError)
        _fail(path, " ".join(str(e).split()))


def _expression_files(path: Path, expression: PathLike | None, expression_std: PathLike | None,
                      vertex_index: PathLike | None, discover: bool) -> tuple[Path | None, Path | None, Path | None]:
    folder = path.parent
    e_path = _side_file(expression, [folder / "Exp_Pca.bin", folder / "Model_Expression.mat"] if discover else [])
    if e_path is None:
        return None, None, None
    s_path = None
    if e_path.suffix.lower() == ".bin":
        s_path = _side_file(expression_std, [e_path.parent / "std_exp.txt"])
        if s_path is None:
            _fail(e_path, "needs its standard deviations: std_exp.txt beside it, or expression_std=...")
    i_path = _side_file(vertex_index, [e_path.parent / "BFM_exp_idx.mat", e_path.parent / "model_info.mat"])
    return e_path, s_path, i_path


def load_bfm2009(path: PathLike, *, expression: PathLike | None = None, expression_std: PathLike | None = None,
                 vertex_index: PathLike | None = None, landmarks: PathLike | None = None,
                 contours: PathLike | None = None, discover: bool = True) -> MorphableModel:
    """Load ``01_MorphableModel.mat`` (BFM 2009) as a :class:`MorphableModel` in millimetres.

    Args:
        path: the BFM 2009 ``.mat`` file.
        expression: ``Model_Expression.mat`` (3DDFA) or ``Exp_Pca.bin`` (Guo et al.); optional.
        expression_std: ``std_exp.txt`` for ``Exp_Pca.bin`` (default: beside it).
        vertex_index: ``.mat`` with ``trimIndex`` mapping expression vertices to BFM vertices (default:
            ``BFM_exp_idx.mat`` or ``model_info.mat`` beside the expression file); needed only when the
            expression basis has fewer vertices than the model.
        landmarks, contours: eos's ``ibug_to_bfm2009.txt`` and ``bfm2009_model_contours.json``.
        discover: look for the side files beside ``path`` under the names above (``Exp_Pca.bin`` before
            ``Model_Expression.mat``) when they are not given.
    Returns:
        the model (see the module docstring for every conversion).
    Raises:
        ModelFileError: naming the model or side file that is missing, unreadable, truncated or of the
            wrong layout.
    """
    path = Path(path)
    d = read_mat(path, ("shapeMU", "shapePC", "shapeEV", "tl"), ("texMU", "texPC", "texEV", "segbin"))
    mu = _column(d["shapeMU"], path, "shapeMU")
    if mu.size == 0 or mu.size % 3:
        _fail(path, f"shapeMU: expected 3N values, got {mu.size}")
    N = mu.size // 3
    pc = _float(d["shapePC"], path, "shapePC", (3 * N, None))
    ev = _column(d["shapeEV"], path, "shapeEV", pc.shape[1])
    if np.any(ev < 0):
        _fail(path, "shapeEV: negative standard deviations")
    mean = mu.reshape(N, 3) / MICROMETRES_PER_MM
    identity_basis = (pc * (ev / MICROMETRES_PER_MM)).reshape(N, 3, -1)  # one 3N×K temporary, not two
    albedo_mean = albedo_basis = None
    if all(k in d for k in ("texMU", "texPC", "texEV")):
        tex_pc = _float(d["texPC"], path, "texPC", (3 * N, None))
        tex_ev = _column(d["texEV"], path, "texEV", tex_pc.shape[1])
        albedo_mean = _column(d["texMU"], path, "texMU", 3 * N).reshape(N, 3) / 255.0
        albedo_basis = (tex_pc * tex_ev).reshape(N, 3, -1) / 255.0
    elif any(k in d for k in ("texMU", "texPC", "texEV")):
        _fail(path, "colour model incomplete: needs texMU, texPC and texEV")
    triangles, flipped = outward_winding(mean, _triangles(d["tl"], path, "tl", N, base=1))
    regions = {}
    if "segbin" in d:
        seg = np.asarray(d["segbin"])
        seg = seg.T if seg.ndim == 2 and seg.shape[0] != N and seg.shape[1] == N else seg
        if seg.ndim != 2 or seg.shape[0] != N:
            _fail(path, f"segbin: expected N×k masks for N={N}, got shape {seg.shape}")
        regions = {f"segment{j + 1}": np.flatnonzero(seg[:, j]) for j in range(seg.shape[1])}

    files = {"model": path.name}
    keep = np.arange(N)
    expression_basis = expression_std_mm = None
    e_path, s_path, i_path = _expression_files(path, expression, expression_std, vertex_index, discover)
    if e_path is not None:
        exp = read_exp_pca(e_path, s_path) if s_path is not None else read_model_expression(e_path)
        M = exp["basis"].shape[0] // 3
        if M != N:
            if i_path is None:
                _fail(e_path, f"expression basis has {M} vertices, the model {N}: needs the vertex index file "
                              "(BFM_exp_idx.mat or model_info.mat with trimIndex) beside it, or vertex_index=...")
            keep = read_trim_index(i_path, N)
            if len(keep) != M:
                _fail(i_path, f"trimIndex has {len(keep)} entries, the expression basis {M} vertices")
            files["vertex_index"] = i_path.name
        expression_basis = (exp["basis"] * exp["std"]).reshape(M, 3, -1) / MICROMETRES_PER_MM
        expression_std_mm = exp["std"] / MICROMETRES_PER_MM
        if s_path is None:  # 3DDFA adds mu_exp to the mean shape; Deep3DFaceRecon ignores Exp_Pca's mean
            mean = mean[keep] + exp["mean"].reshape(M, 3) / MICROMETRES_PER_MM
        else:
            mean = mean[keep]
            files["expression_std"] = s_path.name
        files["expression"] = e_path.name
        identity_basis = identity_basis[keep]
        albedo_mean = None if albedo_mean is None else albedo_mean[keep]
        albedo_basis = None if albedo_basis is None else albedo_basis[keep]
        triangles = _restrict_triangles(triangles, keep, N)
    new_id = np.full(N, -1, np.int64)  # BFM vertex -> model vertex (-1: dropped with the expression basis)
    new_id[keep] = np.arange(len(keep))
    regions = {k: new_id[v][new_id[v] >= 0] for k, v in regions.items()}

    folder = path.parent
    lm_path = _side_file(landmarks, [folder / "ibug_to_bfm2009.txt"] if discover else [])
    c_path = _side_file(contours, [folder / "bfm2009_model_contours.json"] if discover else [])
    lm = _landmarks(lm_path, c_path, new_id)
    files.update({k: p.name for k, p in (("landmarks", lm_path), ("contours", c_path)) if p is not None})
    metadata: dict[str, Any] = {"source": f"Basel Face Model 2009 ({path.name})", "licence": BFM_LICENCE,
                                "units": "mm (file: micrometres)", "winding_flipped": flipped, "files": files}
    if len(keep) != N:
        metadata["bfm_vertex_ids"] = keep  # model vertex i is BFM 2009 vertex bfm_vertex_ids[i]
    if expression_std_mm is not None:
        metadata["expression_std"] = expression_std_mm
    return _build(path, "bfm2009", dict(
        mean=mean, triangles=triangles, identity_basis=identity_basis, identity_std=ev / MICROMETRES_PER_MM,
        expression_basis=expression_basis, expression_kind="pca" if expression_basis is not None else None,
        albedo_mean=albedo_mean, albedo_basis=albedo_basis, regions=regions, metadata=metadata, **lm))


# --- BFM 2017 / 2019 ----------------------------------------------------------------------------------
def _read_h5(path: Path) -> dict[str, np.ndarray]:
    """Every dataset under shape/, color/, expression/ (``"shape/model/mean"`` -> array)."""
    import h5py

    out: dict[str, np.ndarray] = {}
    size = path.stat().st_size
    limit = _H5_MAX_RATIO * size
    try:
        with h5py.File(path, "r") as f:
            for part in ("shape", "color", "expression"):
                if part not in f:
                    continue
                for group in ("model", "representer"):
                    node = f[part].get(group)
                    if node is None or not isinstance(node, h5py.Group):
                        continue
                    for key, item in node.items():
                        if isinstance(item, h5py.Dataset):
                            nbytes = item.size * item.dtype.itemsize
                            if nbytes > limit:  # a tiny file can declare a huge (unwritten, fill-value) dataset
                                _fail(path, f"/{part}/{group}/{key}: declares {nbytes} bytes of data, more than a "
                                            f"{size}-byte file can hold")
                            out[f"{part}/{group}/{key}"] = item[()]
    except ModelFileError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, RuntimeError, ValueError... on corrupt files
        _fail(path, f"not a readable HDF5 model file ({type(e).__name__}: {' '.join(str(e).split())})")
    return out


def _pca_part(raw: dict[str, np.ndarray], path: Path, part: str, n: int | None) -> dict[str, np.ndarray] | None:
    """``mean (3N,)``, standardised ``basis (3N, K)``, ``std (K,)`` of one statismo PCA model."""
    keys = [f"{part}/model/{k}" for k in ("mean", "pcaBasis", "pcaVariance")]
    present = [k in raw for k in keys]
    if not any(present):
        return None
    if not all(present):
        _fail(path, f"/{part}/model: needs mean, pcaBasis and pcaVariance")
    mean = _column(raw[keys[0]], path, f"/{part}/model/mean", n)
    basis = _float(raw[keys[1]], path, f"/{part}/model/pcaBasis", (mean.size, None))
    variance = _column(raw[keys[2]], path, f"/{part}/model/pcaVariance", basis.shape[1])
    if np.any(variance < 0):
        _fail(path, f"/{part}/model/pcaVariance: negative variances")
    std = np.sqrt(variance)
    return {"mean": mean, "basis": basis * std, "std": std}


def load_bfm2017(path: PathLike, *, landmarks: PathLike | None = None, contours: PathLike | None = None,
                 discover: bool = True) -> MorphableModel:
    """Load a BFM 2017/2019 statismo ``.h5`` file (shape, colour, expression) in millimetres.

    Args:
        path: e.g. ``model2017-1_bfm_nomouth.h5``.
        landmarks, contours: eos's iBUG mapping and contour files for this model; with ``discover`` they
            are looked up beside ``path`` as ``ibug_to_bfm2017-1_bfm_nomouth.txt`` and
            ``bfm2017-1_bfm_nomouth_model_contours.json`` (eos's names: the file stem with ``model``
            replaced by ``bfm``) or ``ibug_to_<stem>.txt`` / ``<stem>_model_contours.json``.
    Raises:
        ModelFileError: naming the file that is missing, unreadable or of the wrong layout.
    """
    path = Path(path)
    if not path.is_file():
        _fail(path, "file not found")
    raw = _read_h5(path)
    shape = _pca_part(raw, path, "shape", None)
    if shape is None:
        _fail(path, "no /shape/model group (not a statismo face model?)")
    N3 = shape["mean"].size
    if N3 == 0 or N3 % 3:
        _fail(path, f"/shape/model/mean: expected 3N values, got {N3}")
    N = N3 // 3
    if "shape/representer/cells" not in raw:
        _fail(path, "no /shape/representer/cells (triangles)")
    cells = np.asarray(raw["shape/representer/cells"])
    cells = cells.T if cells.ndim == 2 and cells.shape[0] == 3 and cells.shape[1] != 3 else cells
    points = raw.get("shape/representer/points")
    if points is not None and np.asarray(points).size != N3:
        _fail(path, f"/shape/representer/points has {np.asarray(points).size // 3} points, the model {N}")
    mean = shape["mean"].reshape(N, 3)
    triangles, flipped = outward_winding(mean, _triangles(cells, path, "/shape/representer/cells", N, base=0))
    color = _pca_part(raw, path, "color", N3)
    expression = _pca_part(raw, path, "expression", N3)
    if expression is not None:
        mean = mean + expression["mean"].reshape(N, 3)

    stem = path.stem
    eos_stem = re.sub(r"^model", "bfm", stem)
    folder = path.parent
    lm_path = _side_file(landmarks, [folder / f"ibug_to_{s}.txt" for s in (eos_stem, stem)] if discover else [])
    c_path = _side_file(contours, [folder / f"{s}_model_contours.json" for s in (eos_stem, stem)] if discover else [])
    lm = _landmarks(lm_path, c_path, np.arange(N))
    files = {"model": path.name}
    files.update({k: p.name for k, p in (("landmarks", lm_path), ("contours", c_path)) if p is not None})
    metadata: dict[str, Any] = {"source": f"Basel Face Model 2017/2019 ({path.name})", "licence": BFM_LICENCE,
                                "units": "mm", "winding_flipped": flipped, "files": files}
    for part in ("shape", "color", "expression"):
        if f"{part}/model/noiseVariance" in raw:
            noise = _column(np.asarray(raw[f"{part}/model/noiseVariance"]).reshape(-1), path,
                            f"/{part}/model/noiseVariance", 1)
            metadata[f"{part}_noise_variance"] = float(noise[0])
    return _build(path, "bfm2017", dict(
        mean=mean, triangles=triangles, identity_basis=shape["basis"].reshape(N, 3, -1), identity_std=shape["std"],
        expression_basis=None if expression is None else expression["basis"].reshape(N, 3, -1),
        expression_kind=None if expression is None else "pca",
        albedo_mean=None if color is None else color["mean"].reshape(N, 3),
        albedo_basis=None if color is None else color["basis"].reshape(N, 3, -1),
        metadata=metadata, **lm))
