"""SFM / eos cereal loader: checked against eos-py (the reference implementation) and the side files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import morphable
from morphable.errors import ModelFileError
from morphable.models.formats.sfm import load_sfm, read_eos_model
from morphable.models.landmarks import nearest_mirror, nearest_mirror_reference



@pytest.fixture(scope="module")
def eos():
    """eos-py, the reference implementation (test-only dependency)."""
    return pytest.importorskip("eos")

SHAPE = "eos/share/sfm_shape_3448.bin"


@pytest.fixture(scope="module")
def sfm_path():
    from tests.conftest import data_file

    return data_file(SHAPE)


@pytest.fixture(scope="module")
def sfm(sfm_path):
    return load_sfm(sfm_path)


@pytest.fixture(scope="module")
def eos_sfm(eos, sfm_path):
    return eos.morphablemodel.load_model(str(sfm_path))


def test_mean_and_basis_match_eos(sfm, eos_sfm):
    shape = eos_sfm.get_shape_model()
    V = sfm.n_vertices
    assert np.abs(sfm.mean.numpy().reshape(-1) - np.asarray(shape.get_mean())).max() <= 1e-4
    basis = sfm.identity_basis.numpy().reshape(3 * V, -1)
    assert np.abs(basis - np.asarray(shape.get_rescaled_pca_basis())).max() <= 1e-4
    assert np.allclose(sfm.identity_std.numpy() ** 2, np.asarray(shape.get_eigenvalues()), rtol=1e-6)
    assert np.array_equal(sfm.triangles.numpy(), np.asarray(shape.get_triangle_list()))


def test_load_model_sfm_equals_eos_draw_sample(eos_sfm):
    model = morphable.load_model("sfm")  # through the registry: mirror -> checksum -> converted npz
    rng = np.random.default_rng(0)
    c = rng.standard_normal((4, model.n_identity)).astype(np.float32)
    ours = model(identity=torch.from_numpy(c)).vertices.numpy()
    for b in range(4):
        ref = np.asarray(eos_sfm.draw_sample(c[b].tolist(), []).vertices)
        assert np.abs(ours[b] - ref).max() <= 1e-4


def test_blendshapes_match_eos_draw_sample(eos, sfm, eos_sfm, sfm_path):
    blendshapes = eos.morphablemodel.load_blendshapes(str(sfm_path.parent / "expression_blendshapes_3448.bin"))
    full = eos.morphablemodel.MorphableModel(eos_sfm.get_shape_model(), blendshapes, eos_sfm.get_color_model(),
                                             None, eos_sfm.get_texture_coordinates())
    assert sfm.expression_kind == "blendshapes"
    assert sfm.expression_names == [b.name for b in blendshapes]
    rng = np.random.default_rng(1)
    c = rng.standard_normal(sfm.n_identity).astype(np.float32)
    w = rng.uniform(0, 1, 6).astype(np.float32)
    ours = sfm(identity=torch.from_numpy(c), expression=torch.from_numpy(w)).vertices[0].numpy()
    ref = np.asarray(full.draw_sample(c.tolist(), w.tolist(), []).vertices)
    assert np.abs(ours - ref).max() <= 1e-4


def test_uv_is_eos_texcoords_flipped_to_v_up(sfm, eos_sfm):
    tc = np.asarray(eos_sfm.get_texture_coordinates())
    assert sfm.uv_triangles is None
    assert np.allclose(sfm.uv.numpy(), np.stack([tc[:, 0], 1 - tc[:, 1]], 1), atol=1e-7)


def test_landmarks_match_eos_landmark_mapper(eos, sfm, sfm_path):
    mapper = eos.core.LandmarkMapper(str(sfm_path.parent / "ibug_to_sfm.txt"))
    mappings = mapper.get_mappings()
    assert int(sfm.landmark_mask.sum()) == len(mappings)
    for ibug, vertex in mappings.items():
        i = int(ibug) - 1
        assert bool(sfm.landmark_mask[i]) and sfm.landmark_indices[i].tolist() == [int(vertex)] * 3
    assert not sfm.landmark_mask[:8].any() and not sfm.landmark_mask[9:17].any()  # contour points
    lm = sfm.landmarks(sfm.mean[None])[0]
    assert torch.equal(lm[30], sfm.mean[int(mappings["31"])])


def test_contours_and_edge_topology(eos, sfm, sfm_path):
    contours = json.loads((sfm_path.parent / "sfm_model_contours.json").read_text())["model_contour"]
    assert sfm.contour_right.tolist() == contours["right_contour"]
    assert sfm.contour_left.tolist() == contours["left_contour"]
    ref = eos.morphablemodel.load_edge_topology(str(sfm_path.parent / "sfm_3448_edge_topology.json"))
    topo = sfm.metadata["edge_topology"]
    assert np.array_equal(topo["adjacent_faces"] + 1, np.asarray(ref.adjacent_faces))
    assert np.array_equal(topo["adjacent_vertices"] + 1, np.asarray(ref.adjacent_vertices))
    # every edge with two faces: both faces contain both of its vertices
    af, av = topo["adjacent_faces"], topo["adjacent_vertices"]
    tri = sfm.triangles.numpy()
    inner = (af >= 0).all(1)
    for f in (0, 1):
        has = (tri[af[inner, f]] == av[inner, :1]).any(1) & (tri[af[inner, f]] == av[inner, 1:]).any(1)
        assert has.all()


def test_symmetry_file_and_nearest_mirror(sfm, sfm_path):
    listed = [int(line.split("#")[0]) - 1 for line in (sfm_path.parent / "sfm_reference_symmetry.txt")
              .read_text().splitlines() if line.split("#")[0].strip()]
    sym = sfm.symmetry.numpy()
    assert sym[: len(listed)].tolist() == listed
    v = sfm.mean.numpy()
    mirrored = v[sym] * [-1, 1, 1]
    assert np.median(np.linalg.norm(mirrored - v, axis=1)) < 1.0  # mm
    fast = nearest_mirror(v)
    assert np.array_equal(fast, nearest_mirror_reference(v))
    assert (fast[: len(listed)] == listed).mean() > 0.95  # the file agrees with the geometric mirror


def _synthetic_eos_file(eos, tmp_path, expression: str):
    """A small version-4 eos model written by eos-py itself (colour, expression, landmarks, uv triangles)."""
    rng = np.random.default_rng(2)
    V, K = 6, 3

    def pca(mean):
        q, _ = np.linalg.qr(rng.standard_normal((3 * V, K)))
        return eos.morphablemodel.PcaModel(mean.astype(np.float32)[:, None], q.astype(np.float32),
                                           np.array([[4.0], [2.0], [0.5]], np.float32), [[0, 1, 2], [2, 3, 4]])

    shape, color = pca(rng.standard_normal(3 * V) * 10), pca(rng.uniform(0.2, 0.8, 3 * V))
    if expression == "pca":
        expr = pca(np.zeros(3 * V))
    else:
        expr = [eos.morphablemodel.Blendshape(f"b{i}", rng.standard_normal(3 * V).astype(np.float32))
                for i in range(2)]
    model = eos.morphablemodel.MorphableModel(shape, expr, color, {"nose": 3}, [[0.1, 0.2]] * 7,
                                              [[0, 1, 2], [2, 3, 6]])
    path = tmp_path / f"synthetic_{expression}.bin"
    eos.morphablemodel.save_model(model, str(path))
    return path, model


@pytest.mark.parametrize("expression", ["pca", "blendshapes"])
def test_version4_file_written_by_eos(eos, tmp_path, expression):
    path, ref = _synthetic_eos_file(eos, tmp_path, expression)
    model = load_sfm(path)
    assert read_eos_model(path)["version"] == 4
    assert model.expression_kind == expression and model.metadata["landmark_definitions"] == {"nose": 3}
    assert model.uv.shape == (7, 2) and model.uv_triangles.tolist() == [[0, 1, 2], [2, 3, 6]]
    rng = np.random.default_rng(3)
    c, e, a = (rng.standard_normal(n).astype(np.float32) for n in (3, model.n_expression, 3))
    out = model(identity=torch.from_numpy(c), expression=torch.from_numpy(e), albedo=torch.from_numpy(a))
    mesh = ref.draw_sample(c.tolist(), e.tolist(), a.tolist())
    assert np.abs(out.vertices[0].numpy() - np.asarray(mesh.vertices)).max() <= 1e-4
    # eos clamps colours to [0, 1]; ours are unclamped (documented in ModelOutput)
    assert np.abs(out.colors[0].clamp(0, 1).numpy() - np.asarray(mesh.colors)).max() <= 1e-5


# --- corruption: only ModelFileError, ever ------------------------------------------------------------
def _try(path, **kw):
    try:
        load_sfm(path, **kw)
    except ModelFileError as err:
        assert str(err).startswith(f"{path}: ")  # names the file
        return "error"
    return "loaded"


def test_truncated_model_raises_model_file_error(tmp_path, sfm_path):
    data = sfm_path.read_bytes()
    for cut in (0, 3, 4, 10, 9000, 41384, 2_000_000, len(data) - 80_000, len(data) - 1):
        bad = tmp_path / "sfm_shape_3448.bin"
        bad.write_bytes(data[:cut])
        assert _try(bad) == "error", cut
    bad.write_bytes(data + b"\0")
    assert _try(bad) == "error"


def test_flipped_bytes_never_raise_anything_else(tmp_path, sfm_path):
    data = bytearray(sfm_path.read_bytes())
    rng = np.random.default_rng(4)
    positions = [0, 1, 4, 5, 7, 8, 11, 41384, 41388, 41392, 2_648_340, 2_648_344, 2_648_350, 2_729_210,
                 2_729_216, 2_729_220] + rng.integers(0, len(data), 12).tolist()
    outcomes = set()
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        path = tmp_path / "x.bin"
        path.write_bytes(bytes(bad))
        outcomes.add(_try(path))
    assert "error" in outcomes  # header/size corruption is detected; flipped float data may still load


def test_bad_side_files(tmp_path, sfm_path):
    folder = tmp_path / "share"
    folder.mkdir()
    model = folder / "sfm_shape_3448.bin"
    shutil.copy(sfm_path, model)
    cases = {
        "ibug_to_sfm.txt": "[landmark_mappings]\n9 = chin\n",
        "sfm_model_contours.json": '{"model_contour": {"right": []}}',
        "sfm_3448_edge_topology.json": '{"edge_topology": {"adjacent_faces": [[1, 2]]',
        "sfm_reference_symmetry.txt": "1\n99999\n",
        "expression_blendshapes_3448.bin": (sfm_path.parent / "expression_blendshapes_3448.bin").read_bytes()[:-7],
    }
    for name, content in cases.items():
        side = folder / name
        (side.write_bytes if isinstance(content, bytes) else side.write_text)(content)
        with pytest.raises(ModelFileError, match=name.replace(".", r"\.")):
            load_sfm(model)
        side.unlink()
    assert load_sfm(model).expression_basis is None  # no side files: shape only, still valid
    with pytest.raises(ModelFileError, match="not found"):
        load_sfm(model, landmarks=folder / "missing.txt")
    (folder / "ibug_to_sfm.txt").write_text("[landmark_mappings]\n70 = 5\n")
    with pytest.raises(ModelFileError, match="outside"):
        load_sfm(model)


def test_wrong_version_and_missing_file(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"\x07\0\0\0" + b"\0" * 64)
    with pytest.raises(ModelFileError, match="class version 7"):
        load_sfm(path)
    with pytest.raises(ModelFileError, match="cannot read"):
        load_sfm(tmp_path / "absent.bin")
