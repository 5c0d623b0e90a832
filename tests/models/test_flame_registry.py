"""FLAME through the native npz and the registry: the pose (LBS) and the dynamic contour survive
``save_npz``/``load_npz`` exactly, and ``morphable models add`` + ``load_model`` give back a working Flame."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import morphable
from morphable.cli import cli
from morphable.errors import ModelFileError
from morphable.models import registry
from morphable.models.flame import Flame, contour_bin
from morphable.models.formats.flame import load_flame
from morphable.models.formats.npz import load_npz, save_npz
from tests.models.test_flame import reference_flame, synthetic_flame
from tests.models.test_npz import assert_same
from tests.models.test_safe_pickle import py2_dumps

V, BINS = 40, 79


def write_flame(folder, seed=11):
    """A synthetic FLAME pickle with a 51-point static and a 79-bin dynamic embedding beside it (the
    RingNet/TF_FLAME layout). Returns the pickled dict (metres) and the model path."""
    rng = np.random.default_rng(seed)
    d = synthetic_flame(rng, V=V)
    n_faces = len(d["f"])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "generic_model.pkl"
    path.write_bytes(py2_dumps(d))
    bary = rng.random((51, 3))
    (folder / "flame_static_embedding.pkl").write_bytes(py2_dumps(
        {"lmk_face_idx": rng.integers(0, n_faces, 51).astype(np.uint32), "lmk_b_coords": bary / bary.sum(1, keepdims=True)}))
    bary = rng.random((BINS, 17, 3))
    np.save(folder / "flame_dynamic_embedding.npy",
            {"lmk_face_idx": rng.integers(0, n_faces, (BINS, 17)), "lmk_b_coords": bary / bary.sum(-1, keepdims=True)},
            allow_pickle=True)
    return d, path


def random_inputs(dtype, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 300, generator=g, dtype=dtype), torch.randn(B, 100, generator=g, dtype=dtype),
            0.4 * torch.randn(B, 5, 3, generator=g, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flame_npz_round_trip_is_exact(tmp_path, dtype):
    d, path = write_flame(tmp_path / "flame")
    model = load_flame(path, dtype=dtype)
    assert model.contour_indices is not None and model.landmark_mask.all()
    save_npz(model, tmp_path / "flame.npz")
    back = load_npz(tmp_path / "flame.npz")
    assert type(back) is Flame
    assert_same(model, back)  # every buffer (posedirs, regressor, parents, weights, contour) bit-identical
    beta, psi, pose = random_inputs(dtype)
    out, out_back = model(beta, psi, pose), back(beta, psi, pose)
    assert torch.equal(out.vertices, out_back.vertices) and torch.equal(out.joints, out_back.joints)
    yaw = torch.tensor([0.5, -0.2, 0.05], dtype=dtype)
    assert torch.equal(model.landmarks(out.vertices, yaw), back.landmarks(out.vertices, yaw))
    assert torch.equal(model.dynamic_contour(yaw)[0], back.dynamic_contour(yaw)[0])
    if dtype == torch.float64:  # and the loaded model poses like FLAME by the book, not only like the original
        ref, joints = reference_flame(d, beta[1].numpy(), psi[1].numpy(), pose[1].numpy())
        assert np.abs(out_back.vertices[1].numpy() - ref).max() < 1e-6
        assert np.abs(out_back.joints[1].numpy() - joints).max() < 1e-6


def test_flame_without_dynamic_contour_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "m.pkl"
    path.write_bytes(py2_dumps(synthetic_flame(rng, V=12, K=310)))
    model = load_flame(path, dtype=torch.float64)
    save_npz(model, tmp_path / "m.npz")
    back = load_npz(tmp_path / "m.npz")
    assert type(back) is Flame and back.contour_indices is None
    assert_same(model, back)


def test_corrupt_flame_entries_raise_model_file_error(tmp_path):
    _, path = write_flame(tmp_path / "flame")
    good = tmp_path / "good.npz"
    save_npz(load_flame(path), good)
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))
    cases = {
        "no_posedirs": ({"flame_posedirs": None}, "flame_posedirs"),
        "posedirs_shape": ({"flame_posedirs": arrays["flame_posedirs"][:, :-3]}, "flame_posedirs"),
        "regressor_shape": ({"flame_joint_regressor": arrays["flame_joint_regressor"][:4]}, "flame_joint_regressor"),
        "weights_shape": ({"flame_skinning_weights": arrays["flame_skinning_weights"].T}, "flame_skinning_weights"),
        "parents_tree": ({"flame_parents": np.array([-1, 2, 0, 1, 1])}, "parents"),
        "parents_float": ({"flame_parents": arrays["flame_parents"].astype(np.float64)}, "flame_parents"),
        "contour_range": ({"flame_contour_indices": arrays["flame_contour_indices"] + V}, "flame_contour_indices"),
        "contour_alone": ({"flame_contour_weights": None}, "go together"),
        "contour_shape": ({"flame_contour_weights": arrays["flame_contour_weights"][:, :16]}, "flame_contour_weights"),
        "model_type": ({"header": np.array(json.dumps({**header, "model": "smplx"}))}, "unknown model type"),
    }
    for label, (changes, message) in cases.items():
        edited = {**arrays, **changes}
        bad = tmp_path / f"{label}.npz"
        np.savez(bad, **{k: v for k, v in edited.items() if v is not None})
        with pytest.raises(ModelFileError, match=message) as e:
            load_npz(bad)
        assert f"{label}.npz" in str(e.value), label


def test_models_add_flame_then_load_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHABLE_HOME", str(tmp_path / "home"))
    d, path = write_flame(tmp_path / "flame")
    result = CliRunner().invoke(cli, ["models", "add", "myflame", str(path)])
    assert result.exit_code == 0, result.output
    assert "added myflame" in result.output
    direct = load_flame(path)
    for attempt in range(2):  # converted once into the cache, then read from it
        model = morphable.load_model("myflame")
        assert type(model) is Flame and model.n_joints == 5 and model.contour_indices.shape == (BINS, 17, 3)
        assert_same(direct, model)
        cached = list((tmp_path / "home" / "converted").glob("user-myflame-*.npz"))
        assert len(cached) == 1 and type(load_npz(cached[0])) is Flame
    beta, psi, pose = random_inputs(torch.float32, B=2, seed=5)
    posed = model(beta, psi, pose)
    assert torch.equal(posed.vertices, direct(beta, psi, pose).vertices)
    # LBS is really applied: the posed mesh matches FLAME by the book and differs from the unposed one
    ref, _ = reference_flame(d, beta[0].double().numpy(), psi[0].double().numpy(), pose[0].double().numpy())
    assert np.abs(posed.vertices[0].numpy() - ref).max() < 1e-3 * np.abs(ref).max()
    assert (posed.vertices - model(beta, psi).vertices).abs().max() > 1.0  # mm
    # and the dynamic contour follows the yaw with RingNet's bin layout
    yaw = torch.tensor([math.radians(30.0)])
    ids, _ = model.dynamic_contour(yaw)
    assert int(contour_bin(yaw)) == 30 and torch.equal(ids[0], model.contour_indices[30])
    # the registry keeps the model file's absolute path (the converted npz is only a cache)
    assert registry.user_models()["myflame"]["path"] == str(path.resolve())
