"""BFM 2009 / BFM 2017 loaders on small SYNTHETIC files written in the real files' layouts.

No Basel Face Model file can be redistributed, so each test writes one with the same keys, shapes,
dtypes and units as the real thing. Where each layout comes from:

* ``01_MorphableModel.mat`` (BFM 2009): eos ``share/scripts/convert-bfm2009-to-eos.py`` (shapeMU 3N×1 µm,
  shapePC 3N×K orthonormal, shapeEV K×1 standard deviations, texMU/texPC/texEV in 0–255, tl F×3 1-based
  wound clockwise from the front, so eos swaps two corners) and the BFM page (segbin masks).
* ``Model_Expression.mat`` (3DDFA): mu_exp 3M×1, w_exp 3M×K, sigma_exp K×1, M = vertices kept by
  ``trimIndex`` (3DMM-STN's prepareExpressionBFM and 3DDFA's model_info.mat).
* ``Exp_Pca.bin`` (Guo et al.): int32 K, float32 mean (3M), float32 K×3M; ``std_exp.txt``; and
  ``BFM_exp_idx.mat`` (trimIndex, 1-based): Deep3DFaceRecon ``util/load_mats.py``.
* BFM 2017 statismo ``.h5``: eos ``share/scripts/convert-bfm2017-to-eos.py`` (/shape|color|expression
  /model/{mean, pcaBasis orthonormal, pcaVariance variances, noiseVariance}, /shape/representer/{points 3×N,
  cells 3×F 0-based}).

Expected values are computed here in numpy from the raw arrays written to the file.
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from morphable.errors import ModelFileError
from morphable.models.formats import load_any
from morphable.models.formats.bfm import load_bfm2009, load_bfm2017, outward_winding
from morphable.models.formats.npz import load_npz, save_npz

RNG = np.random.default_rng(2009)


def _grid_face(nx: int = 6, ny: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A face-like cap in mm (bulging towards +z) and its triangles wound counter-clockwise seen from +z."""
    x, y = np.meshgrid(np.linspace(-60, 60, nx), np.linspace(-70, 70, ny))
    z = 100.0 - 0.004 * (x**2 + y**2)
    vertices = np.stack([x, y, z], -1).reshape(-1, 3)
    tris = []
    for j in range(ny - 1):
        for i in range(nx - 1):
            a, b, c, d = j * nx + i, j * nx + i + 1, (j + 1) * nx + i + 1, (j + 1) * nx + i
            tris += [[a, b, c], [a, c, d]]
    return vertices, np.asarray(tris)


def _orthonormal(rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(RNG.normal(size=(rows, cols)))
    return q.astype(np.float32)


def _write_bfm2009(path, vertices_mm, triangles_ccw, K=4, Kt=3, flip=True, extra=None, drop=()):
    """A BFM 2009 ``.mat``; returns the raw arrays as written."""
    N = len(vertices_mm)
    raw = {
        "shapeMU": (vertices_mm * 1000.0).reshape(-1, 1).astype(np.float32),  # µm
        "shapePC": _orthonormal(3 * N, K),
        "shapeEV": np.array([[4000.0], [2500.0], [1200.0], [600.0]][:K], np.float32),  # std devs, µm
        "texMU": RNG.uniform(60, 200, size=(3 * N, 1)).astype(np.float32),  # 0-255
        "texPC": _orthonormal(3 * N, Kt),
        "texEV": np.array([[300.0], [150.0], [80.0]][:Kt], np.float32),
        "tl": (triangles_ccw[:, [0, 2, 1]] if flip else triangles_ccw).astype(np.float64) + 1,  # 1-based
        "segbin": np.stack([np.arange(N) % 4 == j for j in range(4)], 1).astype(np.uint8),
    }
    raw.update(extra or {})
    for key in drop:
        raw.pop(key)
    scipy.io.savemat(path, raw)
    return raw


def _normals_z(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[triangles[:, i]] for i in range(3))
    return np.cross(b - a, c - a)[:, 2]


# --- BFM 2009 ------------------------------------------------------------------------------------------
def test_bfm2009_units_standardisation_and_sample(tmp_path):
    verts, tris = _grid_face()
    raw = _write_bfm2009(tmp_path / "01_MorphableModel.mat", verts, tris)
    model = load_bfm2009(tmp_path / "01_MorphableModel.mat").double()
    N = len(verts)
    np.testing.assert_allclose(model.mean.numpy(), raw["shapeMU"].reshape(N, 3) / 1000.0, atol=1e-5)
    np.testing.assert_allclose(model.identity_std.numpy(), raw["shapeEV"].ravel() / 1000.0, rtol=1e-6)
    # standardised: each basis column has norm = std (shapePC is orthonormal)
    norms = model.identity_basis.reshape(3 * N, -1).norm(dim=0).numpy()
    np.testing.assert_allclose(norms, raw["shapeEV"].ravel() / 1000.0, rtol=1e-5)

    c = RNG.normal(size=(2, 4))
    t = RNG.normal(size=(2, 3))
    out = model(identity=torch.tensor(c), albedo=torch.tensor(t))
    for b in range(2):
        shape = raw["shapeMU"].ravel().astype(np.float64) + raw["shapePC"] @ (raw["shapeEV"].ravel() * c[b])
        np.testing.assert_allclose(out.vertices[b].numpy(), shape.reshape(N, 3) / 1000.0, atol=1e-4)
        colour = raw["texMU"].ravel().astype(np.float64) + raw["texPC"] @ (raw["texEV"].ravel() * t[b])
        np.testing.assert_allclose(out.colors[b].numpy(), colour.reshape(N, 3) / 255.0, atol=1e-6)
    assert model.name == "bfm2009" and model.n_identity == 4 and model.n_albedo == 3
    assert sorted(model.regions) == ["segment1", "segment2", "segment3", "segment4"]
    np.testing.assert_array_equal(model.regions["segment2"].numpy(), np.arange(1, N, 4))


@pytest.mark.parametrize("flip", [True, False])
def test_bfm2009_triangles_zero_based_and_outward(tmp_path, flip):
    """tl is 1-based and (in the real file) wound clockwise: loaded triangles are 0-based and every
    normal of the cap points towards +z, whichever winding the file used."""
    verts, tris = _grid_face()
    _write_bfm2009(tmp_path / "m.mat", verts, tris, flip=flip)
    model = load_bfm2009(tmp_path / "m.mat")
    np.testing.assert_array_equal(model.triangles.numpy(), tris)
    assert model.metadata["winding_flipped"] is flip
    assert np.all(_normals_z(model.mean.double().numpy(), model.triangles.numpy()) > 0)


def test_outward_winding_on_a_closed_mesh():
    """A closed tetrahedron wound inwards is flipped; wound outwards it is kept (signed volume test)."""
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    outward = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    kept, flipped = outward_winding(v, outward)
    assert not flipped and np.array_equal(kept, outward)
    fixed, flipped = outward_winding(v, outward[:, [0, 2, 1]])
    assert flipped and np.array_equal(fixed, outward)


def _write_landmark_files(folder, mapping: dict[int, int], right, left, stem="bfm2009"):
    lines = ["# test mapping in eos's ibug_to_*.txt layout", "[landmark_mappings]"]
    lines += [f"{k} = {v}  # point {k}" for k, v in mapping.items()]
    (folder / f"ibug_to_{stem}.txt").write_text("\n".join(lines) + "\n")
    contours = {"model_contour": {"right_contour": right, "left_contour": left}}
    (folder / f"{stem}_model_contours.json").write_text(json.dumps(contours))


def test_bfm2009_landmarks_found_beside(tmp_path):
    verts, tris = _grid_face()
    _write_bfm2009(tmp_path / "01_MorphableModel.mat", verts, tris)
    _write_landmark_files(tmp_path, {31: 14, 37: 7, 46: 10}, [0, 6, 12], [5, 11, 17])
    model = load_bfm2009(tmp_path / "01_MorphableModel.mat")
    assert model.landmark_mask.sum() == 3 and model.landmark_mask[30] and model.landmark_mask[36]
    assert model.landmark_indices[30, 0] == 14 and model.landmark_indices[45, 0] == 10
    np.testing.assert_allclose(model.landmarks(model().vertices)[0, 30].numpy(), model.mean[14].numpy())
    assert model.contour_right.tolist() == [0, 6, 12] and model.contour_left.tolist() == [5, 11, 17]
    assert not load_bfm2009(tmp_path / "01_MorphableModel.mat", discover=False).landmark_mask.any()


def test_bfm2009_with_real_eos_mapping(tmp_path, data):
    """The corpus's eos files for BFM 2009 on a synthetic model with BFM 2009's 53 490 vertices:
    values checked against lines of the files (iBUG 31 = 8319 nose tip, 37 = 2088, contour 27302...)."""
    lm, ct = data("eos/share/ibug_to_bfm2009.txt"), data("eos/share/bfm2009_model_contours.json")
    N = 53490
    verts = RNG.normal(size=(N, 3)) * 50
    tris = np.array([[0, 1, 2], [1, 3, 2]])
    _write_bfm2009(tmp_path / "bfm.mat", verts, tris, K=1, Kt=1, drop=("segbin",))
    model = load_bfm2009(tmp_path / "bfm.mat", landmarks=lm, contours=ct)
    assert model.landmark_indices[30, 0] == 8319 and model.landmark_indices[36, 0] == 2088
    assert not model.landmark_mask[:17].any() and model.landmark_mask[17]
    assert model.contour_right[0] == 27302 and model.contour_left[-1] == 27818
    assert len(model.contour_right) == len(model.contour_left) == 8


def _trim(N: int) -> np.ndarray:
    """3DDFA keeps a subset of BFM vertices in its own order: here all but four, shuffled."""
    keep = np.setdiff1d(np.arange(N), [3, 8, 14, 20])
    return RNG.permutation(keep)


def test_bfm2009_with_3ddfa_expression(tmp_path):
    verts, tris = _grid_face()
    N = len(verts)
    raw = _write_bfm2009(tmp_path / "01_MorphableModel.mat", verts, tris)
    keep = _trim(N)
    M, Ke = len(keep), 5
    exp = {"mu_exp": RNG.normal(size=(3 * M, 1)).astype(np.float32) * 500,
           "w_exp": RNG.normal(size=(3 * M, Ke)).astype(np.float32) * 100,
           "sigma_exp": RNG.uniform(1, 5, size=(Ke, 1)).astype(np.float32)}
    scipy.io.savemat(tmp_path / "Model_Expression.mat", exp)
    scipy.io.savemat(tmp_path / "model_info.mat", {"trimIndex": (keep + 1).reshape(-1, 1).astype(np.float64)})
    _write_landmark_files(tmp_path, {31: 14, 37: keep[5]}, [0, 8, 12], [5, 11])  # 14 and 8 are dropped
    model = load_bfm2009(tmp_path / "01_MorphableModel.mat").double()
    assert model.n_vertices == M and model.expression_kind == "pca" and model.n_expression == Ke

    c, e = RNG.normal(size=4), RNG.normal(size=Ke)
    out = model(identity=torch.tensor(c)[None], expression=torch.tensor(e)[None]).vertices[0].numpy()
    shape = (raw["shapeMU"].ravel() + raw["shapePC"].astype(np.float64) @ (raw["shapeEV"].ravel() * c)).reshape(N, 3)
    expected = shape[keep] + (exp["mu_exp"].ravel() + exp["w_exp"].astype(np.float64) @ (exp["sigma_exp"].ravel() * e)).reshape(M, 3)
    np.testing.assert_allclose(out, expected / 1000.0, atol=1e-4)

    # triangles: exactly the original ones whose corners all survive, renumbered
    new_id = np.full(N, -1)
    new_id[keep] = np.arange(M)
    survivors = tris[np.all(np.isin(tris, keep), axis=1)]
    np.testing.assert_array_equal(model.triangles.numpy(), new_id[survivors])
    assert not model.landmark_mask[30] and model.landmark_indices[36, 0] == 5
    assert model.contour_right.tolist() == [new_id[0], new_id[12]] and model.contour_left.tolist() == [new_id[5], new_id[11]]
    np.testing.assert_array_equal(model.metadata["bfm_vertex_ids"], keep)
    assert np.all(np.isin(model.regions["segment1"].numpy(), np.arange(M)))


def _write_exp_pca(folder, M, K, std=True, index=None):
    mean = RNG.normal(size=3 * M).astype(np.float32) * 100
    basis = RNG.normal(size=(K, 3 * M)).astype(np.float32) * 50  # stored component after component
    with open(folder / "Exp_Pca.bin", "wb") as f:
        f.write(np.array([K], "<i4").tobytes() + mean.astype("<f4").tobytes() + basis.astype("<f4").tobytes())
    stds = RNG.uniform(0.5, 3.0, size=K)
    if std:
        np.savetxt(folder / "std_exp.txt", stds)
    if index is not None:
        scipy.io.savemat(folder / "BFM_exp_idx.mat", {"trimIndex": (index + 1).reshape(-1, 1).astype(np.int32)})
    return mean, basis, stds


def test_bfm2009_with_guo_exp_pca(tmp_path):
    """Deep3DFaceRecon's folder layout, found beside the model; the stored expression mean is unused."""
    verts, tris = _grid_face()
    N = len(verts)
    raw = _write_bfm2009(tmp_path / "01_MorphableModel.mat", verts, tris)
    keep = _trim(N)
    M, K = len(keep), 6
    _, basis, stds = _write_exp_pca(tmp_path, M, K, index=keep)
    model = load_bfm2009(tmp_path / "01_MorphableModel.mat").double()
    assert model.n_expression == K and model.n_vertices == M
    e = RNG.normal(size=K)
    out = model(expression=torch.tensor(e)[None]).vertices[0].numpy()
    expected = raw["shapeMU"].reshape(N, 3)[keep] + (basis.T.astype(np.float64) @ (stds * e)).reshape(M, 3)
    np.testing.assert_allclose(out, expected / 1000.0, atol=1e-4)
    np.testing.assert_allclose(model.metadata["expression_std"], stds / 1000.0)
    assert model.metadata["files"]["expression"] == "Exp_Pca.bin"


def test_bfm2009_expression_full_vertex_set_needs_no_index(tmp_path):
    verts, tris = _grid_face()
    N = len(verts)
    _write_bfm2009(tmp_path / "m.mat", verts, tris)
    _write_exp_pca(tmp_path, N, 3)
    model = load_bfm2009(tmp_path / "m.mat", expression=tmp_path / "Exp_Pca.bin")
    assert model.n_vertices == N and model.n_expression == 3 and "bfm_vertex_ids" not in model.metadata


def test_bfm2009_expression_side_file_errors(tmp_path):
    verts, tris = _grid_face()
    _write_bfm2009(tmp_path / "m.mat", verts, tris)
    keep = _trim(len(verts))
    _write_exp_pca(tmp_path, len(keep), 3, std=False)
    with pytest.raises(ModelFileError, match="Exp_Pca.bin.*std_exp.txt"):
        load_bfm2009(tmp_path / "m.mat")
    np.savetxt(tmp_path / "std_exp.txt", np.ones(3))
    with pytest.raises(ModelFileError, match="Exp_Pca.bin.*vertex index"):
        load_bfm2009(tmp_path / "m.mat")
    np.savetxt(tmp_path / "std_exp.txt", np.ones(2))
    with pytest.raises(ModelFileError, match="std_exp.txt"):
        load_bfm2009(tmp_path / "m.mat")
    with pytest.raises(ModelFileError, match="nothere.mat"):
        load_bfm2009(tmp_path / "m.mat", vertex_index=tmp_path / "nothere.mat")


# --- BFM 2017 ------------------------------------------------------------------------------------------
def _write_bfm2017(path, verts_mm, tris_ccw, K=5, Ke=4, Kc=3, parts=("shape", "color", "expression")):
    N = len(verts_mm)
    raw = {}
    with h5py.File(path, "w") as f:
        for part, k in (("shape", K), ("color", Kc), ("expression", Ke)):
            if part not in parts:
                continue
            if part == "shape":
                mean = verts_mm.reshape(-1)
            elif part == "color":
                mean = RNG.uniform(0.2, 0.8, size=3 * N)
            else:
                mean = RNG.normal(size=3 * N) * 0.5  # the mean expression offset, mm
            raw[part] = {"mean": mean.astype(np.float32), "pcaBasis": _orthonormal(3 * N, k),
                         "pcaVariance": RNG.uniform(1.0, 20.0, size=k).astype(np.float32),
                         "noiseVariance": np.float32(0.01)}
            for key, value in raw[part].items():
                f.create_dataset(f"{part}/model/{key}", data=value)
            f.create_dataset(f"{part}/representer/points", data=verts_mm.T.astype(np.float32))
            f.create_dataset(f"{part}/representer/cells", data=tris_ccw.T.astype(np.uint32))
    return raw


def test_bfm2017_standardisation_and_sample(tmp_path):
    verts, tris = _grid_face()
    N = len(verts)
    raw = _write_bfm2017(tmp_path / "model2017-1_bfm_nomouth.h5", verts, tris)
    _write_landmark_files(tmp_path, {31: 7}, [1, 2], [3, 4], stem="bfm2017-1_bfm_nomouth")
    model = load_bfm2017(tmp_path / "model2017-1_bfm_nomouth.h5").double()
    s, x, col = raw["shape"], raw["expression"], raw["color"]
    np.testing.assert_allclose(model.identity_std.numpy(), np.sqrt(s["pcaVariance"]), rtol=1e-6)
    c, e, t = RNG.normal(size=5), RNG.normal(size=4), RNG.normal(size=3)
    out = model(identity=torch.tensor(c)[None], expression=torch.tensor(e)[None], albedo=torch.tensor(t)[None])
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    shape = f64(s["mean"]) + f64(s["pcaBasis"]) @ (np.sqrt(f64(s["pcaVariance"])) * c)
    shape += f64(x["mean"]) + f64(x["pcaBasis"]) @ (np.sqrt(f64(x["pcaVariance"])) * e)
    np.testing.assert_allclose(out.vertices[0].numpy(), shape.reshape(N, 3), atol=1e-4)
    colour = f64(col["mean"]) + f64(col["pcaBasis"]) @ (np.sqrt(f64(col["pcaVariance"])) * t)
    np.testing.assert_allclose(out.colors[0].numpy(), colour.reshape(N, 3), atol=1e-6)
    np.testing.assert_array_equal(model.triangles.numpy(), tris)
    assert not model.metadata["winding_flipped"]
    assert model.landmark_indices[30, 0] == 7 and model.contour_left.tolist() == [3, 4]
    assert model.metadata["shape_noise_variance"] == pytest.approx(0.01)


def test_bfm2017_with_real_eos_mapping(tmp_path, data):
    """eos's BFM 2017 (bfm_nomouth, 53 149 vertices) mapping and contours on a synthetic model of that
    size; values checked against lines of the files (iBUG 9 = 47846 chin, 31 = 8156 nose tip, 37 = 2602;
    26 points: the chin and 31-68)."""
    lm = data("eos/share/ibug_to_bfm2017-1_bfm_nomouth.txt")
    ct = data("eos/share/bfm2017-1_bfm_nomouth_model_contours.json")
    verts = RNG.normal(size=(53149, 3)) * 50
    _write_bfm2017(tmp_path / "m.h5", verts, np.array([[0, 1, 2]]), K=1, parts=("shape",))
    model = load_bfm2017(tmp_path / "m.h5", landmarks=lm, contours=ct)
    assert model.landmark_indices[30, 0] == 8156 and model.landmark_indices[36, 0] == 2602
    assert model.landmark_indices[8, 0] == 47846
    assert int(model.landmark_mask.sum()) == 26 and model.landmark_mask[8] and not model.landmark_mask[9:30].any()
    assert len(model.contour_right) == len(model.contour_left) == 11 and model.contour_right[0] == 22451


def test_bfm2017_shape_only_and_inward_cells(tmp_path):
    verts, tris = _grid_face()
    _write_bfm2017(tmp_path / "m.h5", verts, tris[:, [0, 2, 1]], parts=("shape",))
    model = load_bfm2017(tmp_path / "m.h5")
    assert model.n_expression == 0 and not model.has_albedo and model.metadata["winding_flipped"]
    assert np.all(_normals_z(model.mean.double().numpy(), model.triangles.numpy()) > 0)


def test_dispatch_and_native_round_trip(tmp_path):
    """``load_any`` picks these loaders by suffix; the models survive the native npz format exactly."""
    verts, tris = _grid_face()
    _write_bfm2009(tmp_path / "01_MorphableModel.mat", verts, tris)
    keep = _trim(len(verts))
    _write_exp_pca(tmp_path, len(keep), 3, index=keep)
    _write_bfm2017(tmp_path / "model2017.h5", verts, tris)
    for name in ("01_MorphableModel.mat", "model2017.h5"):
        model = load_any(tmp_path / name)
        save_npz(model, tmp_path / "native.npz")
        back = load_npz(tmp_path / "native.npz")
        for key, value in model.state_dict().items():
            assert torch.equal(value, back.state_dict()[key]), key
    assert model.name == "bfm2017"
    assert load_npz(tmp_path / "native.npz").metadata["files"]["model"] == "model2017.h5"


# --- bad files: only ModelFileError, naming the file ------------------------------------------------------
def _only_our_error(load, path):
    """Call ``load(path)``; any exception must be a ModelFileError naming the file."""
    try:
        load(path)
    except ModelFileError as e:
        assert path.name in str(e), str(e)
        return True
    return False


def _corrupt_variants(tmp_path, good, rng, n_cuts=14, n_flips=25):
    data = good.read_bytes()
    out = []
    for i, cut in enumerate(np.linspace(0, len(data) - 1, n_cuts).astype(int)):
        p = tmp_path / f"cut{i}{good.suffix}"
        p.write_bytes(data[:cut])
        out.append(("cut", p))
    for i in range(n_flips):
        flipped = bytearray(data)
        for at in rng.integers(0, len(data), size=4):
            flipped[at] ^= int(rng.integers(1, 256))
        p = tmp_path / f"flip{i}{good.suffix}"
        p.write_bytes(bytes(flipped))
        out.append(("flip", p))
    return out


def test_bfm2009_corruptions(tmp_path):
    verts, tris = _grid_face()
    good = tmp_path / "good.mat"
    _write_bfm2009(good, verts, tris)
    rng = np.random.default_rng(0)
    for kind, p in _corrupt_variants(tmp_path, good, rng):
        raised = _only_our_error(load_bfm2009, p)
        assert raised or kind == "flip", p.name  # every truncation is detected
    bad = {
        "nokey.mat": dict(drop=("shapeEV",)),
        "rows.mat": dict(extra={"shapePC": _orthonormal(3 * len(verts) - 3, 4)}),
        "ev.mat": dict(extra={"shapeEV": np.ones((3, 1), np.float32)}),
        "tl.mat": dict(extra={"tl": np.array([[1, 2, 999]], float)}),
        "tl0.mat": dict(extra={"tl": np.array([[0, 1, 2]], float)}),
        "nan.mat": dict(extra={"shapeMU": np.full((3 * len(verts), 1), np.nan, np.float32)}),
        "tex.mat": dict(drop=("texEV",)),
        "seg.mat": dict(extra={"segbin": np.ones((3, 3))}),
    }
    for name, kw in bad.items():
        _write_bfm2009(tmp_path / name, verts, tris, **kw)
        with pytest.raises(ModelFileError, match=name):
            load_bfm2009(tmp_path / name)
    (tmp_path / "text.mat").write_text("not a mat file")
    for name in ("text.mat", "missing.mat"):
        with pytest.raises(ModelFileError, match=name):
            load_bfm2009(tmp_path / name)


def test_expression_file_corruptions(tmp_path):
    verts, tris = _grid_face()
    N = len(verts)
    _write_bfm2009(tmp_path / "m.mat", verts, tris)
    _write_exp_pca(tmp_path, N, 3)
    scipy.io.savemat(tmp_path / "Model_Expression.mat", {
        "mu_exp": np.zeros((3 * N, 1)), "w_exp": np.ones((3 * N, 2)), "sigma_exp": np.ones((2, 1))})
    rng = np.random.default_rng(1)
    for good in (tmp_path / "Exp_Pca.bin", tmp_path / "Model_Expression.mat"):
        for kind, p in _corrupt_variants(tmp_path, good, rng, n_cuts=8, n_flips=12):
            raised = _only_our_error(lambda q: load_bfm2009(tmp_path / "m.mat", expression=q,
                                                            expression_std=tmp_path / "std_exp.txt"), p)
            assert raised or kind == "flip", p.name
    scipy.io.savemat(tmp_path / "wrong.mat", {"mu_exp": np.zeros((3 * N, 1)), "w_exp": np.ones((3 * N, 2)),
                                              "sigma_exp": np.ones((5, 1))})
    with pytest.raises(ModelFileError, match="wrong.mat.*sigma_exp"):
        load_bfm2009(tmp_path / "m.mat", expression=tmp_path / "wrong.mat")


def test_bfm2017_corruptions(tmp_path):
    verts, tris = _grid_face()
    good = tmp_path / "good.h5"
    _write_bfm2017(good, verts, tris)
    rng = np.random.default_rng(2)
    for kind, p in _corrupt_variants(tmp_path, good, rng):
        raised = _only_our_error(load_bfm2017, p)
        assert raised or kind == "flip", p.name
    import shutil

    for name, edit in {
        "nobasis.h5": lambda f: f.__delitem__("shape/model/pcaBasis"),
        "noshape.h5": lambda f: f.__delitem__("shape"),
        "cells.h5": lambda f: (f.__delitem__("shape/representer/cells"),
                               f.create_dataset("shape/representer/cells", data=np.full((3, 2), 10**6))),
        "variance.h5": lambda f: (f.__delitem__("color/model/pcaVariance"),
                                  f.create_dataset("color/model/pcaVariance", data=np.ones(7))),
        "negvar.h5": lambda f: (f.__delitem__("shape/model/pcaVariance"),
                                f.create_dataset("shape/model/pcaVariance", data=-np.ones(5))),
        "exprmean.h5": lambda f: (f.__delitem__("expression/model/mean"),
                                  f.create_dataset("expression/model/mean", data=np.ones(6))),
    }.items():
        shutil.copy(good, tmp_path / name)
        with h5py.File(tmp_path / name, "a") as f:
            edit(f)
        with pytest.raises(ModelFileError, match=name):
            load_bfm2017(tmp_path / name)
