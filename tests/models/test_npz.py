"""Native npz format: exact round trips and corruption handling."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from morphable.errors import ModelFileError
from morphable.models.base import MorphableModel
from morphable.models.formats.npz import load_npz, save_npz
from tests.conftest import data_file


def synthetic(dtype=torch.float32) -> MorphableModel:
    """A small model using every optional field (albedo, UV faces, quads, regions, array metadata)."""
    g = torch.Generator().manual_seed(0)
    V = 8
    lm = torch.randint(0, V, (68, 3), generator=g)
    return MorphableModel(
        name="tiny", mean=torch.randn(V, 3, generator=g), triangles=[[0, 1, 2], [0, 2, 3], [4, 5, 6]],
        identity_basis=torch.randn(V, 3, 4, generator=g), identity_std=[4.0, 3.0, 2.0, 1.0],
        expression_basis=torch.randn(V, 3, 2, generator=g), expression_kind="pca",
        expression_names=["a", "b"], albedo_mean=torch.rand(V, 3, generator=g),
        albedo_basis=torch.randn(V, 3, 3, generator=g), uv=torch.rand(5, 2, generator=g),
        uv_triangles=[[0, 1, 2], [0, 2, 3], [4, 1, 2]], polygons=[[0, 1, 2, 3], [4, 5, 6]],
        polygon_uvs=[[0, 1, 2, 3], [4, 1, 2]], landmark_indices=lm, landmark_weights=torch.rand(68, 3, generator=g),
        landmark_mask=torch.arange(68) % 3 > 0, contour_right=[1, 2], contour_left=[5, 6, 7],
        regions={"face": [0, 1, 2, 3], "eyes": [4]}, symmetry=[1, 0, 3, 2, 5, 4, 7, 6],
        metadata={"source": "synthetic", "nested": {"k": [1, 2]}, "table": np.arange(6).reshape(3, 2),
                  "topology": {"faces": np.array([[0, -1]]), "verts": np.array([[1, 2]])}},
        dtype=dtype)


def assert_same(a: MorphableModel, b: MorphableModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    for attr in ("name", "expression_kind", "expression_names", "polygons", "polygon_uvs"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert list(a.regions) == list(b.regions)
    assert json.dumps(a.metadata, default=lambda x: x.tolist(), sort_keys=True) == \
        json.dumps(b.metadata, default=lambda x: x.tolist(), sort_keys=True)
    for key, value in a.metadata.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == b.metadata[key].dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_synthetic_round_trip_is_exact(tmp_path, dtype):
    model = synthetic(dtype)
    save_npz(model, tmp_path / "m.npz")
    back = load_npz(tmp_path / "m.npz")
    assert_same(model, back)
    c = torch.randn(2, 4, dtype=dtype)
    assert torch.equal(model(identity=c).vertices, back(identity=c).vertices)


def test_minimal_model_round_trip(tmp_path):
    model = MorphableModel(name="bare", mean=torch.zeros(3, 3), triangles=[[0, 1, 2]],
                           identity_basis=torch.ones(3, 3, 1))
    save_npz(model, tmp_path / "m.npz")
    assert_same(model, load_npz(tmp_path / "m.npz"))


def test_sfm_round_trip_keeps_edge_topology(tmp_path):
    from morphable.models.formats.sfm import load_sfm

    model = load_sfm(data_file("eos/share/sfm_shape_3448.bin"))
    save_npz(model, tmp_path / "sfm.npz")
    back = load_npz(tmp_path / "sfm.npz")
    assert_same(model, back)
    for key in ("adjacent_faces", "adjacent_vertices"):
        assert np.array_equal(model.metadata["edge_topology"][key], back.metadata["edge_topology"][key])


def test_plain_models_stay_plain_and_version_1_files_load(tmp_path):
    model = synthetic(torch.float64)
    save_npz(model, tmp_path / "m.npz")
    assert type(load_npz(tmp_path / "m.npz")) is MorphableModel
    arrays = _arrays(tmp_path / "m.npz")
    header = json.loads(str(arrays["header"]))
    assert (header["version"], header["model"]) == (2, "morphable")
    del header["model"]  # a file written before models were tagged (version 1)
    arrays["header"] = np.array(json.dumps({**header, "version": 1}))
    np.savez(tmp_path / "v1.npz", **arrays)
    old = load_npz(tmp_path / "v1.npz")
    assert type(old) is MorphableModel
    assert_same(model, old)


def test_unserialisable_metadata_is_refused(tmp_path):
    model = synthetic()
    model.metadata["bad"] = object()
    with pytest.raises(ValueError, match="JSON"):
        save_npz(model, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


# --- corruption ---------------------------------------------------------------------------------------
@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.npz"
    save_npz(synthetic(), path)
    return path


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_truncated_and_flipped_files(good, tmp_path):
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in (0, 1, 30, 200, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="bad.npz"):
            load_npz(bad)
    rng = np.random.default_rng(0)
    for pos in rng.integers(0, len(data), 40).tolist():
        flipped = bytearray(data)
        flipped[pos] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        try:
            load_npz(bad)  # flips inside stored array data can go unnoticed (no checksum of the values)
        except ModelFileError:
            pass


def _rewrite(good, tmp_path, **changes):
    arrays = _arrays(good)
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path = tmp_path / "edited.npz"
    np.savez(path, **arrays)
    return path


def _header(good, **changes):
    header = json.loads(str(_arrays(good)["header"]))
    header.update(changes)
    return np.array(json.dumps(header))


@pytest.mark.parametrize("label", [
    "no_mean", "no_header", "header_garbage", "wrong_format", "mean_shape", "basis_shape", "triangle_range",
    "landmark_range", "landmark_shape", "region_missing", "region_range", "symmetry_range", "uv_tri_range",
    "polygon_sizes", "polygon_range", "float_ids", "nan", "dtype", "object_array", "expression_kind",
    "metadata_ref", "header_list", "scalar_mean", "regions_type", "future_version", "model_type",
])
def test_wrong_keys_and_shapes(good, tmp_path, label):
    a = _arrays(good)
    changes = {
        "no_mean": dict(mean=None),
        "no_header": dict(header=None),
        "header_garbage": dict(header=np.array("{not json")),
        "wrong_format": dict(header=_header(good, format="other")),
        "mean_shape": dict(mean=a["mean"][:, :2]),
        "basis_shape": dict(identity_basis=a["identity_basis"][:5]),
        "triangle_range": dict(triangles=a["triangles"] + 100),
        "landmark_range": dict(landmark_indices=a["landmark_indices"] + 100),
        "landmark_shape": dict(landmark_indices=a["landmark_indices"][:60]),
        "region_missing": dict(region_1=None),
        "region_range": dict(region_0=np.array([99])),
        "symmetry_range": dict(symmetry=-a["symmetry"] - 1),
        "uv_tri_range": dict(uv_triangles=a["uv_triangles"] + 10),
        "polygon_sizes": dict(polygons_sizes=np.array([4, 4])),
        "polygon_range": dict(polygons_ids=a["polygons_ids"] + 50),
        "float_ids": dict(contour_left=a["contour_left"].astype(np.float64)),
        "nan": dict(mean=np.full_like(a["mean"], np.nan)),
        "dtype": dict(header=_header(good, dtype="int8")),
        "object_array": dict(uv=np.array([None, 1], dtype=object)),
        "expression_kind": dict(header=_header(good, expression_kind="linear")),
        "metadata_ref": dict(header=_header(good, metadata_arrays={"x": "meta_999"})),
        "header_list": dict(header=np.array("[1, 2]")),
        "scalar_mean": dict(mean=np.float32(1.0)),
        "regions_type": dict(header=_header(good, regions=5)),
        "future_version": dict(header=_header(good, version=3)),
        "model_type": dict(header=_header(good, model="smplx")),
    }[label]
    if label == "object_array":  # np.savez pickles object arrays; load_npz must refuse them
        arrays = {**a, **changes}
        path = tmp_path / "edited.npz"
        np.savez(path, **arrays)
    else:
        path = _rewrite(good, tmp_path, **changes)
    with pytest.raises(ModelFileError, match="edited.npz"):
        load_npz(path)


def test_missing_and_non_zip(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_npz(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ModelFileError, match="text.npz"):
        load_npz(tmp_path / "text.npz")
    with zipfile.ZipFile(tmp_path / "empty.npz", "w"):
        pass
    with pytest.raises(ModelFileError, match="header"):
        load_npz(tmp_path / "empty.npz")
