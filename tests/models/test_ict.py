"""ICT FaceKit loader: packed npz and official OBJ-folder paths against the official OBJ files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import morphable
from morphable.errors import ModelFileError
from morphable.models.formats.ict import ICT_REGIONS, load_ict, read_neutral_obj
from morphable.models.landmarks import ICT_JAWLINE_LEFT, ICT_JAWLINE_RIGHT, ICT_MULTIPIE_68
from tests.conftest import DATA, data_file

SUBSET = ("identity000", "identity001", "jawOpen", "eyeBlink_L")


def obj_vertices(path) -> np.ndarray:
    """Independent OBJ vertex reader (np.loadtxt on the 'v' lines), cm."""
    lines = [line[2:] for line in path.read_text().splitlines() if line.startswith("v ")]
    return np.loadtxt(lines, dtype=np.float64)


def load_registered(name: str, tmp_path_factory) -> morphable.MorphableModel:
    """``morphable.load_model(name)`` with the environment conftest gives each test (module fixtures run
    before its function-scoped fixture): the session's MORPHABLE_HOME and the corpus as mirror."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MORPHABLE_HOME", str(tmp_path_factory.getbasetemp() / "morphable-home"))
        mp.setenv("MORPHABLE_MIRROR", str(DATA))
        return morphable.load_model(name)


@pytest.fixture(scope="module")
def ict(tmp_path_factory):
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    return load_registered("ict", tmp_path_factory)


@pytest.fixture(scope="module")
def obj_folder(tmp_path_factory):
    """A FaceXModel folder made of the four official subset OBJ files plus the neutral mesh (symlinks)."""
    folder = tmp_path_factory.mktemp("FaceXModel")
    topo = data_file("ICT-FaceKit/FaceXModel/generic_neutral_mesh.obj").parent
    for name in ("generic_neutral_mesh.obj", "vertex_indices.json", "ICTFaceModelMaterial.mtl"):
        (folder / name).symlink_to(topo / name)
    for name in SUBSET:
        (folder / f"{name}.obj").symlink_to(data_file(f"ICT-FaceKit/FaceXModel_subset/{name}.obj"))
    return folder


def _reproduces(model, identity=None, expression=None, reference=None):
    out = model(identity=identity, expression=expression).vertices[0].double().numpy() / 10.0  # mm -> cm
    return np.abs(out - reference).max()


@pytest.mark.parametrize("source", ["npz", "obj"])
def test_neutral_plus_identity000_and_jawopen_reproduce_official_objs(ict, obj_folder, source):
    model = ict if source == "npz" else load_ict(obj_folder)
    e = torch.zeros(1, model.n_expression)
    e[0, model.expression_names.index("jawOpen")] = 1.0
    i = torch.zeros(1, model.n_identity)
    i[0, 0] = 1.0
    subset = data_file("ICT-FaceKit/FaceXModel_subset/identity000.obj").parent
    assert _reproduces(model, identity=i, reference=obj_vertices(subset / "identity000.obj")) <= 1e-4
    assert _reproduces(model, expression=e, reference=obj_vertices(subset / "jawOpen.obj")) <= 1e-4
    assert _reproduces(model, reference=obj_vertices(obj_folder / "generic_neutral_mesh.obj")) <= 1e-4


def test_obj_folder_and_packed_npz_agree(ict, obj_folder):
    partial = load_ict(obj_folder)
    assert partial.n_identity == 2 and partial.expression_names == ["eyeBlink_L", "jawOpen"]
    assert partial.metadata["n_identity_files"] == 2
    for k in range(2):
        assert torch.allclose(partial.identity_basis[..., k], ict.identity_basis[..., k], atol=1e-4)
    for name in partial.expression_names:
        j, k = partial.expression_names.index(name), ict.expression_names.index(name)
        assert torch.allclose(partial.expression_basis[..., j], ict.expression_basis[..., k], atol=1e-4)
    assert torch.equal(partial.triangles, ict.triangles) and torch.equal(partial.uv, ict.uv)


def test_counts_names_and_units(ict):
    index = json.loads(data_file("ICT-FaceKit/FaceXModel/vertex_indices.json").read_text())
    assert (ict.n_vertices, ict.n_identity, ict.n_expression) == (26719, 100, 53)
    assert ict.expression_names == index["expressions"] and ict.expression_kind == "blendshapes"
    extent = (ict.mean.max(0).values - ict.mean.min(0).values).numpy()
    assert 200 < extent[0] < 300 and 300 < extent[1] < 360  # head width/height in mm (cm × 10)
    assert len(ict.polygons) == 26384 and ict.uv.shape == (28911, 2)
    assert ict.triangles.shape[0] == sum(len(p) - 2 for p in ict.polygons)
    assert ict.uv_triangles.shape == ict.triangles.shape


def test_triangulation_covers_each_polygon(ict):
    tri = ict.triangles.numpy()
    quad = next(i for i, p in enumerate(ict.polygons) if len(p) == 4)
    first = sum(len(p) - 2 for p in ict.polygons[:quad])
    a, b, c, d = ict.polygons[quad]
    assert tri[first].tolist() == [a, b, c] and tri[first + 1].tolist() == [a, c, d]
    v = ict.mean.double().numpy()
    n = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])
    face = np.isin(tri, ict.regions["face"].numpy()).all(1)
    assert (np.linalg.norm(n[face], axis=1) > 0).all()  # no degenerate face triangles


def test_identity_scaling_is_standardised(ict):
    """ICT modes are orthogonal, σ-scaled PCA modes; ICT's sample fit has coefficients of order one."""
    B = ict.identity_basis.double().reshape(-1, 100)
    gram = B.T @ B
    norms = gram.diagonal().sqrt()
    cos = gram / norms[:, None] / norms[None]
    assert (cos - torch.eye(100, dtype=torch.float64)).abs().max() < 1e-3
    assert torch.allclose(ict.identity_std.double(), norms, rtol=1e-5)
    assert (norms[:-1] >= norms[1:] * 0.99).all()  # decreasing like √eigenvalues
    sample = json.loads(data_file("ICT-FaceKit/sample_data/sample_identity_coeffs.json").read_text())
    c = np.array(sample["identity_coefficients"][:100])
    assert 0.3 < np.sqrt((c[:20] ** 2).mean()) < 1.5  # N(0,1)-sized, not mm- or cm-sized
    sample_face = ict(identity=torch.tensor(c, dtype=torch.float32)[None]).vertices[0]
    assert (sample_face - ict.mean).norm(dim=1).max() < 30  # a plausible face (mm)


def test_landmarks_and_jawlines(ict):
    index = json.loads(data_file("ICT-FaceKit/FaceXModel/vertex_indices.json").read_text())
    assert list(ICT_MULTIPIE_68) == index["idx_to_landmark_verts"]
    assert ict.landmark_mask.all() and ict.landmark_indices[:, 0].tolist() == list(ICT_MULTIPIE_68)
    assert set(ICT_JAWLINE_RIGHT) <= set(ict.contour_right.tolist())
    assert set(ICT_JAWLINE_LEFT) <= set(ict.contour_left.tolist())
    lm = ict.landmarks(ict.mean[None])[0]
    assert lm[36, 0] < lm[45, 0]  # iBUG 37 (right eye outer corner) is at -x (subject's right)
    assert lm[30, 2] > lm[0, 2]   # nose tip in front of the jaw (+z towards the viewer)


def test_regions_match_material_groups(ict):
    neutral = read_neutral_obj(data_file("ICT-FaceKit/FaceXModel/generic_neutral_mesh.obj"))
    polygons = neutral["polygons"]

    def used(*materials):
        ids = set()
        for m in materials:
            first, count = neutral["materials"][m]
            ids.update(i for p in polygons[first: first + count] for i in p)
        return ids

    assert used("M_Face") == set(ict.regions["face"].tolist())
    assert used("M_Teeth") == set(ict.regions["teeth"].tolist())
    assert used("M_GumsTongue") == set(ict.regions["gums_tongue"].tolist())
    assert used("M_ScleraLeft", "M_IrisLeft") == set(ict.regions["eyeball_left"].tolist())
    assert used("M_ScleraLeft", "M_IrisLeft", "M_ScleraRight", "M_IrisRight") == set(ict.regions["eyes"].tolist())
    back = set(range(ICT_REGIONS["head_neck"][0], ICT_REGIONS["eye_socket_right"][1] + 1))
    assert used("M_BackHead") - set(ict.regions["face"].tolist()) == back  # shares the seam with the face


def test_symmetry(ict):
    sym = ict.symmetry.numpy()
    v = ict.mean.double().numpy()
    assert (sym[sym] == np.arange(len(sym))).mean() > 0.95
    assert np.median(np.linalg.norm(v[sym] * [-1, 1, 1] - v, axis=1)) < 0.01  # mm


# --- corruption ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_pack(tmp_path_factory):
    """A packed npz with three meshes (neutral, identity000, jawOpen) beside a FaceXModel topology folder."""
    folder = tmp_path_factory.mktemp("pack")
    topo = data_file("ICT-FaceKit/FaceXModel/generic_neutral_mesh.obj").parent
    (folder / "FaceXModel").symlink_to(topo)
    subset = data_file("ICT-FaceKit/FaceXModel_subset/identity000.obj").parent
    names = np.array(["generic_neutral_mesh", "identity000", "jawOpen"])
    verts = np.stack([obj_vertices(topo / "generic_neutral_mesh.obj"), obj_vertices(subset / "identity000.obj"),
                      obj_vertices(subset / "jawOpen.obj")]).astype(np.float32)
    path = folder / "pack.npz"
    np.savez(path, names=names, vertices=verts)
    return path, names, verts


def test_small_pack_loads(small_pack):
    model = load_ict(small_pack[0])
    assert model.n_identity == 1 and model.expression_names == ["jawOpen"]


def test_truncated_or_flipped_pack_only_raises_model_file_error(small_pack, tmp_path):
    path = small_pack[0]
    data = path.read_bytes()
    (tmp_path / "FaceXModel").symlink_to(path.parent / "FaceXModel")
    bad = tmp_path / "pack.npz"
    for cut in (0, 10, 100, 1000, len(data) // 2, len(data) - 22, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            load_ict(bad)
    rng = np.random.default_rng(5)
    for pos in [0, 1, 30, 60, 100, len(data) - 10] + rng.integers(0, len(data), 6).tolist():
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        try:
            load_ict(bad)
        except ModelFileError:
            pass


def test_wrong_keys_and_shapes(small_pack, tmp_path):
    _, names, verts = small_pack
    (tmp_path / "FaceXModel").symlink_to(small_pack[0].parent / "FaceXModel")
    cases = {
        "keys": dict(name=names, vertices=verts),
        "shape": dict(names=names, vertices=verts[:, :100]),
        "dims": dict(names=names, vertices=verts[..., :2]),
        "count": dict(names=names[:2], vertices=verts),
        "no_identity": dict(names=np.array(["generic_neutral_mesh", "jawOpen"]), vertices=verts[[0, 2]]),
        "no_neutral": dict(names=np.array(["identity000", "jawOpen"]), vertices=verts[1:]),
        "moved_neutral": dict(names=names, vertices=verts + np.float32(1.0)),
        "nan": dict(names=names, vertices=np.where(verts > 5, np.nan, verts)),
        "numeric_names": dict(names=np.arange(3), vertices=verts),
    }
    for label, arrays in cases.items():
        path = tmp_path / f"{label}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ModelFileError):
            load_ict(path)
    with pytest.raises(ModelFileError, match="not found"):
        load_ict(tmp_path / "absent.npz")


def test_bad_obj_folder(obj_folder, tmp_path):
    folder = tmp_path / "FaceXModel"
    folder.mkdir()
    for f in obj_folder.iterdir():
        (folder / f.name).symlink_to(f.resolve())
    text = (obj_folder / "identity001.obj").read_text()
    (folder / "identity001.obj").unlink()
    (folder / "identity001.obj").write_text(text[: len(text) // 5])  # truncated inside the v lines
    with pytest.raises(ModelFileError, match="identity001"):
        load_ict(folder)
    (folder / "identity001.obj").write_text(text.replace("v ", "v x", 1))
    with pytest.raises(ModelFileError, match="identity001.obj"):
        load_ict(folder)
    (folder / "identity001.obj").unlink()
    (folder / "vertex_indices.json").unlink()
    (folder / "vertex_indices.json").write_text('{"expressions": "jawOpen"}')
    with pytest.raises(ModelFileError, match="vertex_indices.json"):
        load_ict(folder)
    (folder / "vertex_indices.json").unlink()
    with pytest.raises(ModelFileError, match="vertex_indices.json"):
        load_ict(folder)
    neutral = (obj_folder / "generic_neutral_mesh.obj").read_text()
    (folder / "vertex_indices.json").symlink_to(obj_folder.joinpath("vertex_indices.json").resolve())
    (folder / "generic_neutral_mesh.obj").unlink()
    (folder / "generic_neutral_mesh.obj").write_text(neutral.replace("f 874/1 12/2", "f 874 12", 1))
    with pytest.raises(ModelFileError, match="generic_neutral_mesh.obj"):
        load_ict(folder)
