"""MediaPipe canonical face mesh: the real corpus files, cross-checked against the geometry pipeline
metadata (an independent copy of the mesh: x y z u v per vertex + index buffer), and bad files."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from morphable.errors import ModelFileError
from morphable.models.formats import load_any
from morphable.models.formats.mediapipe import load_mediapipe, read_procrustes_basis

DATA = "mediapipe/mediapipe/modules/face_geometry/data/"


def _pbtxt_mesh(path) -> tuple[np.ndarray, np.ndarray]:
    """``vertex_buffer`` (V, 5) and ``index_buffer`` (F, 3) of the metadata's canonical_mesh."""
    text = path.read_text()
    vb = np.array([float(x) for x in re.findall(r"vertex_buffer:\s*([-+0-9.eE]+)", text)]).reshape(-1, 5)
    ib = np.array([int(x) for x in re.findall(r"index_buffer:\s*(\d+)", text)]).reshape(-1, 3)
    return vb, ib


def test_canonical_mesh_matches_metadata(data):
    obj = data(DATA + "canonical_face_model.obj")
    vb, ib = _pbtxt_mesh(data(DATA + "geometry_pipeline_metadata_landmarks.pbtxt"))
    model = load_mediapipe(obj).double()
    assert model.n_vertices == 468 and model.triangles.shape == (898, 3) and model.uv.shape == (468, 2)
    assert model.n_identity == 0 and model.n_expression == 0 and not model.has_albedo
    assert not model.landmark_mask.any()  # MediaPipe defines no iBUG-68 points
    np.testing.assert_allclose(model.mean.numpy(), vb[:, :3] * 10.0, atol=1e-5)  # cm -> mm
    np.testing.assert_array_equal(model.triangles.numpy(), ib)
    # per-corner UVs through the OBJ's own UV triangles = the metadata's per-vertex UVs (v down there)
    corner_uv = model.uv.numpy()[model.uv_triangles.numpy()]
    expected = vb[:, 3:][ib] * [1.0, -1.0] + [0.0, 1.0]
    np.testing.assert_allclose(corner_uv, expected, atol=1e-6)
    width = np.ptp(model.mean[:, 0].numpy())
    assert 120.0 < width < 180.0  # an adult face is ~15 cm wide: the file is in cm, the model in mm
    out = model(identity=torch.zeros(2, 0))
    assert out.vertices.shape == (2, 468, 3) and torch.equal(out.vertices[1], model.mean)


def test_winding_symmetry_and_procrustes(data):
    model = load_mediapipe(data(DATA + "canonical_face_model.obj")).double()
    v, t = model.mean.numpy(), model.triangles.numpy()
    a, b, c = (v[t[:, i]] for i in range(3))
    normal = np.cross(b - a, c - a).sum(0)
    assert normal[2] > 0.9 * np.linalg.norm(normal)  # the face looks towards +z
    sym = model.symmetry.numpy()
    np.testing.assert_allclose(v[sym], v * [-1, 1, 1], atol=1e-6)
    assert np.array_equal(sym[sym], np.arange(468))
    ids, weights = model.metadata["procrustes_landmark_ids"], model.metadata["procrustes_landmark_weights"]
    assert len(ids) == len(weights) == 33 and ids[0] == 4 and weights[0] == pytest.approx(0.070909939706326)


def test_load_any_dispatches_obj_here(data):
    model = load_any(data(DATA + "canonical_face_model.obj"))
    assert model.name == "mediapipe" and model.n_vertices == 468


def test_iris_variant(data):
    model = load_mediapipe(data(DATA + "face_model_with_iris.obj"))
    assert model.n_vertices == 478 and model.triangles.shape == (906, 3)
    assert model.regions["iris"].tolist() == list(range(468, 478)) and len(model.regions["face"]) == 468


def test_bad_files(tmp_path, data):
    obj = data(DATA + "canonical_face_model.obj").read_text()
    lines = obj.splitlines()
    cases = {
        "tiny.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3/1\n",  # a valid OBJ, not MediaPipe's
        "lost.obj": "\n".join(lines[:20] + lines[21:]),  # one vertex line fewer: ids out of range
        "nouv.obj": "\n".join(re.sub(r"/\d+", "", line) if line.startswith("f ") else line for line in lines),
        "quad.obj": obj + "\nf 1/1 2/2 3/3 4/4\n",
        "range.obj": obj + "\nf 1/1 2/2 999/3\n",
        "empty.obj": "",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ModelFileError, match=name):
            load_mediapipe(tmp_path / name)
    (tmp_path / "ok.obj").write_text(obj)
    (tmp_path / "geometry_pipeline_metadata_landmarks.pbtxt").write_text("procrustes_landmark_basis { landmark_id: x }")
    with pytest.raises(ModelFileError, match="geometry_pipeline_metadata_landmarks.pbtxt"):
        load_mediapipe(tmp_path / "ok.obj")
    assert load_mediapipe(tmp_path / "ok.obj", discover=False).n_vertices == 468
    with pytest.raises(ModelFileError, match="absent.pbtxt"):
        load_mediapipe(tmp_path / "ok.obj", metadata=tmp_path / "absent.pbtxt")
    with pytest.raises(ModelFileError, match="empty.obj"):
        read_procrustes_basis(tmp_path / "empty.obj")


def test_truncated_and_flipped_only_raise_our_error(tmp_path, data):
    raw = data(DATA + "canonical_face_model.obj").read_bytes()
    rng = np.random.default_rng(3)
    for i, cut in enumerate(np.linspace(0, len(raw) - 200, 12).astype(int)):  # loses vertices or faces
        p = tmp_path / f"cut{i}.obj"
        p.write_bytes(raw[:cut])
        try:
            model = load_mediapipe(p)
        except ModelFileError as e:
            assert p.name in str(e)
        else:  # only a cut inside the last faces can leave a valid (smaller) mesh
            assert model.n_vertices == 468 and len(model.triangles) < 898
    for i in range(20):
        flipped = bytearray(raw)
        for at in rng.integers(0, len(raw), size=3):
            flipped[at] ^= int(rng.integers(1, 128))
        p = tmp_path / f"flip{i}.obj"
        p.write_bytes(bytes(flipped))
        try:
            load_mediapipe(p, discover=False)
        except ModelFileError as e:
            assert p.name in str(e)
