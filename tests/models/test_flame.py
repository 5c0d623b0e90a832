"""FLAME: loader (synthetic Python-2/chumpy pickles), LBS against a loop-based numpy reference, gradients,
and the real RingNet / TF_FLAME landmark embeddings on ``TF_FLAME/data/template.ply``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse
import torch
import trimesh
from scipy.spatial.transform import Rotation

from morphable.errors import ModelFileError
from morphable.models.base import MorphableModel
from morphable.models.flame import Flame, contour_bin, head_yaw
from morphable.models.formats.flame import (embedding_to_vertices, load_dynamic_embedding, load_flame,
                                            load_static_embedding)
from morphable.models.formats.npz import load_npz, save_npz
from morphable.models.lbs import lbs
from tests.conftest import data_file
from tests.models.test_safe_pickle import FakeCh, py2_dumps

ROOT = 4294967295  # the root's parent id in FLAME/SMPL kintree tables (uint32 -1)


def synthetic_flame(rng, V=40, K=400, template=None, faces=None) -> dict:
    """A dict with FLAME's keys, shapes (up to V and K) and types, in metres."""
    if template is None:
        template = rng.normal(scale=0.05, size=(V, 3))
        faces = np.stack([np.arange(V - 2), np.arange(1, V - 1), np.arange(2, V)], 1)
    V = len(template)
    weights = rng.random((V, 5)) ** 3
    weights /= weights.sum(1, keepdims=True)
    regressor = np.zeros((5, V))
    for j in range(5):
        ids = rng.choice(V, 6, replace=False)
        regressor[j, ids] = rng.random(6)
        regressor[j] /= regressor[j].sum()
    return {
        "v_template": FakeCh(template),
        "shapedirs": FakeCh(rng.normal(scale=1e-3, size=(V, 3, K))),
        "posedirs": rng.normal(scale=1e-3, size=(V, 3, 36)),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "weights": weights,
        "kintree_table": np.array([[ROOT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.uint32),
        "f": np.asarray(faces, np.uint32),
        "J": regressor @ template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def reference_flame(d: dict, beta: np.ndarray, psi: np.ndarray, pose: np.ndarray):
    """FLAME by the book, one joint and one vertex at a time (numpy, scipy's Rodrigues). Returns mm."""
    T = d["v_template"].x
    S = d["shapedirs"].x
    shaped = T.copy()
    for k, b in enumerate(beta):
        shaped += b * S[:, :, k]
    for k, e in enumerate(psi):
        shaped += e * S[:, :, 300 + k]
    Jreg = d["J_regressor"].toarray()
    joints = np.array([sum(Jreg[j, v] * shaped[v] for v in range(len(shaped))) for j in range(5)])
    R = [Rotation.from_rotvec(pose[j]).as_matrix() for j in range(5)]
    feature = np.concatenate([(R[j] - np.eye(3)).ravel() for j in range(1, 5)])
    posed = shaped.copy()
    for n, f in enumerate(feature):
        posed += f * d["posedirs"][:, :, n]
    parents = [-1, 0, 1, 1, 1]
    G = []
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = R[j]
        local[:3, 3] = joints[j] - (joints[parents[j]] if j else 0)
        G.append(local if j == 0 else G[parents[j]] @ local)
    out = np.zeros_like(posed)
    for i in range(len(posed)):
        M = np.zeros((4, 4))
        for j in range(5):
            unrest = np.eye(4)
            unrest[:3, 3] = -joints[j]
            M += d["weights"][i, j] * (G[j] @ unrest)
        out[i] = (M @ np.append(posed[i], 1.0))[:3]
    return out * 1000, np.array([g[:3, 3] for g in G]) * 1000


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rng = np.random.default_rng(7)
    d = synthetic_flame(rng)
    path = tmp_path_factory.mktemp("flame") / "generic_model.pkl"
    path.write_bytes(py2_dumps(d))
    return d, path


def test_loader_reads_python2_chumpy_pickle(synthetic):
    d, path = synthetic
    assert b"cchumpy.ch\nCh\n" in path.read_bytes()
    model = load_flame(path, dtype=torch.float64)
    assert isinstance(model, Flame) and isinstance(model, MorphableModel)
    assert (model.n_vertices, model.n_identity, model.n_expression, model.n_joints) == (40, 300, 100, 5)
    assert model.parents.tolist() == [-1, 0, 1, 1, 1]
    np.testing.assert_allclose(model.mean.numpy(), d["v_template"].x * 1000)
    np.testing.assert_allclose(model.identity_std.numpy(),
                               np.linalg.norm(d["shapedirs"].x[..., :300].reshape(-1, 300), axis=0) * 1000)
    assert not model.landmark_mask.any() and model.contour_indices is None  # no embeddings beside it
    assert "5 joints (global, neck, jaw, left_eye, right_eye)" in model.describe()


def test_lbs_matches_loop_reference(synthetic):
    d, path = synthetic
    model = load_flame(path, dtype=torch.float64)
    rng = np.random.default_rng(1)
    B = 3
    beta, psi = rng.normal(size=(B, 300)), rng.normal(size=(B, 100))
    pose = rng.normal(scale=0.4, size=(B, 5, 3))
    out = model(torch.from_numpy(beta), torch.from_numpy(psi), torch.from_numpy(pose))
    for b in range(B):
        verts, joints = reference_flame(d, beta[b], psi[b], pose[b])
        err = np.abs(out.vertices[b].numpy() - verts).max()
        assert err < 1e-6, f"batch {b}: max vertex error {err} mm"
        assert np.abs(out.joints[b].numpy() - joints).max() < 1e-6


def test_fewer_coefficients_named_parts_and_zero_pose(synthetic):
    d, path = synthetic
    model = load_flame(path, dtype=torch.float64)
    rng = np.random.default_rng(2)
    beta, psi = rng.normal(size=(2, 20)), rng.normal(size=(2, 5))
    pose = rng.normal(scale=0.3, size=(2, 5, 3))
    full = model(torch.from_numpy(beta), torch.from_numpy(psi), torch.from_numpy(pose))
    parts = model(torch.from_numpy(beta), torch.from_numpy(psi), global_rotation=torch.from_numpy(pose[:, 0]),
                  neck=torch.from_numpy(pose[:, 1]), jaw=torch.from_numpy(pose[:, 2]),
                  eyes=torch.from_numpy(pose[:, 3:]))
    torch.testing.assert_close(parts.vertices, full.vertices, rtol=0, atol=1e-12)
    flat = model(torch.from_numpy(beta), torch.from_numpy(psi), torch.from_numpy(pose.reshape(2, 15)))
    torch.testing.assert_close(flat.vertices, full.vertices, rtol=0, atol=0)
    ref, _ = reference_flame(d, np.pad(beta[1], (0, 280)), np.pad(psi[1], (0, 95)), pose[1])
    assert np.abs(full.vertices[1].numpy() - ref).max() < 1e-6
    # zero pose is the linear model exactly (up to rounding)
    linear = MorphableModel.forward(model, torch.from_numpy(beta), torch.from_numpy(psi)).vertices
    torch.testing.assert_close(model(torch.from_numpy(beta), torch.from_numpy(psi)).vertices, linear,
                               rtol=0, atol=1e-9)
    # pose alone broadcasts the mean shape over the pose batch
    only_pose = model(pose=torch.from_numpy(pose))
    assert only_pose.vertices.shape == (2, 40, 3)
    with pytest.raises(ValueError, match="not both"):
        model(pose=torch.from_numpy(pose), jaw=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch"):
        model(torch.zeros(3, 4, dtype=torch.float64), pose=torch.from_numpy(pose))
    with pytest.raises(ValueError, match="eyes"):
        model(eyes=torch.zeros(2, 3, dtype=torch.float64))


def test_flame_module_checks_its_inputs(synthetic):
    d, path = synthetic
    model = load_flame(path, dtype=torch.float64)
    with pytest.raises(ValueError, match="dynamic contour"):
        model.dynamic_contour(torch.zeros(1))
    with pytest.raises(ValueError, match="pose"):
        model(pose=torch.zeros(1, 4, 3, dtype=torch.float64))
    # a 3-joint chain: pose works, FLAME's named parts do not
    V = 10
    three = Flame(name="chain", mean=np.zeros((V, 3)), triangles=np.zeros((0, 3)), identity_basis=np.zeros((V, 3, 1)),
                  posedirs=np.zeros((18, V * 3)), joint_regressor=np.full((3, V), 1 / V), parents=[-1, 0, 1],
                  skinning_weights=np.full((V, 3), 1 / 3), dtype=torch.float64)
    assert three(pose=torch.zeros(2, 3, 3, dtype=torch.float64)).joints.shape == (2, 3, 3)
    with pytest.raises(ValueError, match="named pose parts"):
        three(jaw=torch.zeros(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="parents"):
        Flame(name="bad", mean=np.zeros((V, 3)), triangles=np.zeros((0, 3)), identity_basis=np.zeros((V, 3, 1)),
              posedirs=np.zeros((18, V * 3)), joint_regressor=np.zeros((3, V)), parents=[-1, 2, 0],
              skinning_weights=np.zeros((V, 3)))
    with pytest.raises(ValueError, match="go together"):
        Flame(name="bad", mean=np.zeros((V, 3)), triangles=np.zeros((0, 3)), identity_basis=np.zeros((V, 3, 1)),
              posedirs=np.zeros((18, V * 3)), joint_regressor=np.zeros((3, V)), parents=[-1, 0, 1],
              skinning_weights=np.zeros((V, 3)), contour_indices=np.zeros((1, 17, 3)))


def test_lbs_gradcheck_pose_float64():
    rng = np.random.default_rng(4)
    d = synthetic_flame(rng, V=7, K=4)
    shaped = torch.from_numpy(d["v_template"].x * 1000)[None]
    posedirs = torch.from_numpy((d["posedirs"] * 1000).reshape(-1, 36).T.copy())
    args = (posedirs, torch.from_numpy(d["J_regressor"].toarray()), torch.tensor([-1, 0, 1, 1, 1]),
            torch.from_numpy(d["weights"]))
    pose = torch.from_numpy(rng.normal(scale=0.5, size=(1, 5, 3))).requires_grad_()
    shaped = shaped.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda p, s: lbs(s, p, *args), (pose, shaped))


def test_contour_bin_matches_ringnet_rule():
    def slow(deg: float) -> int:  # RingNet / TF_FLAME: round(clamp(yaw, max=39)); negatives to 39 - yaw
        y = round(min(deg, 39.0))
        if y >= 0:
            return y
        return 78 if y < -39 else 39 - y
    degrees = np.concatenate([np.linspace(-60, 60, 241) + 0.13, [-39.4, -39.6, 39.6, 0.4, -0.4, 12.6, -13.4]])
    got = contour_bin(torch.from_numpy(np.deg2rad(degrees)))
    assert got.tolist() == [slow(x) for x in degrees]
    assert got.min() == 0 and got.max() == 78


def test_head_yaw_of_pure_yaw_rotations():
    a, b = 0.3, -0.1
    pose = torch.zeros(2, 5, 3, dtype=torch.float64)
    pose[0, 0, 1] = a
    pose[1, 0, 1], pose[1, 1, 1] = a, b
    pose[:, 2] = torch.tensor([0.2, 0.0, 0.0])  # the jaw does not turn the head
    torch.testing.assert_close(head_yaw(pose), torch.tensor([a, a + b], dtype=torch.float64))


def test_corrupt_model_files_raise_model_file_error(tmp_path):
    rng = np.random.default_rng(5)
    good = synthetic_flame(rng, V=12, K=310)

    def write(d, name="m.pkl"):
        p = tmp_path / name
        p.write_bytes(py2_dumps(d))
        return p

    cases = {
        "missing": ({k: v for k, v in good.items() if k != "posedirs"}, "missing key"),
        "posedirs": ({**good, "posedirs": np.zeros((12, 3, 35))}, "'posedirs'"),
        "shapedirs": ({**good, "shapedirs": FakeCh(np.zeros((12, 3, 300)))}, "'shapedirs'"),
        "faces": ({**good, "f": np.array([[0, 1, 12]], np.uint32)}, "'f'"),
        "kintree": ({**good, "kintree_table": np.array([[ROOT, 3, 1, 1, 1], [0, 1, 2, 3, 4]])}, "kintree"),
        "weights": ({**good, "weights": np.zeros((12, 4))}, "'weights'"),
        "nan": ({**good, "v_template": FakeCh(np.full((12, 3), np.nan))}, "non-finite"),
        "text": ({**good, "weights": "abc"}, "'weights'"),
    }
    for name, (d, message) in cases.items():
        with pytest.raises(ModelFileError, match=message) as e:
            load_flame(write(d, f"{name}.pkl"))
        assert f"{name}.pkl" in str(e.value)
    with pytest.raises(ModelFileError, match="expected a pickled dict"):
        load_flame(write([1, 2]))
    data = write(good).read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pkl").write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="cut.pkl"):
            load_flame(tmp_path / "cut.pkl")
    assert load_flame(write(good), n_shape=300).n_expression == 10


# --- the real embeddings ----------------------------------------------------------------------------

STATIC_68 = "TF_FLAME/data/flame_static_embedding_68.pkl"
STATIC_51 = "TF_FLAME/data/flame_static_embedding.pkl"
DYNAMIC = "RingNet/flame_model/flame_dynamic_embedding.npy"


@pytest.fixture(scope="module")
def template():
    mesh = trimesh.load(data_file("TF_FLAME/data/template.ply"), process=False)
    return np.asarray(mesh.vertices, np.float64) * 1000, np.asarray(mesh.faces, np.int64)  # mm


def _points(vertices, faces, face_idx, bary):
    ids, w = embedding_to_vertices(face_idx, bary, faces)
    return (vertices[ids] * w[..., None]).sum(-2)


def test_real_embeddings_land_on_template_faces(template):
    vertices, faces = template
    assert faces.shape == (9976, 3) and vertices.shape == (5023, 3)
    for rel in (STATIC_68, STATIC_51, "RingNet/flame_model/flame_static_embedding.pkl"):
        face_idx, bary = load_static_embedding(data_file(rel))
        assert face_idx.max() < 9976 and face_idx.min() >= 0
        np.testing.assert_allclose(bary.sum(1), 1.0, atol=1e-6)
        assert bary.min() > -1e-6
    dyn_faces, dyn_bary = load_dynamic_embedding(data_file(DYNAMIC))
    assert dyn_faces.shape == (79, 17) and dyn_faces.max() < 9976
    np.testing.assert_allclose(dyn_bary.sum(-1), 1.0, atol=1e-6)
    # TF_FLAME's 51-point file is the inner part (iBUG 17-67) of its 68-point file
    f68, b68 = load_static_embedding(data_file(STATIC_68))
    f51, b51 = load_static_embedding(data_file(STATIC_51))
    assert np.array_equal(f68[17:], f51) and np.allclose(b68[17:], b51)


def test_static_landmarks_form_a_face(template):
    vertices, faces = template
    L = _points(vertices, faces, *load_static_embedding(data_file(STATIC_68)))  # (68, 3) mm, iBUG order
    x, y, z = L.T
    nose_tip, chin = 30, 8
    # eyes: right eye (36-41) at -x, left eye (42-47) at +x, both above the nose tip; corners ordered
    assert x[36] < x[39] < x[nose_tip] < x[42] < x[45]
    assert min(y[36:48]) > y[nose_tip] + 15
    # mouth below the nose, chin below the mouth; mouth corners either side of the midline
    assert max(y[48:68]) < y[33] < y[nose_tip] and y[chin] < min(y[48:68]) - 20
    assert x[48] < x[51] < x[54] and abs(x[51] - x[nose_tip]) < 3
    # nose tip is the most forward point; brows above the eyes; the face is about symmetric
    assert z[nose_tip] == z.max() and min(y[17:27]) > max(y[36:48])
    mirror = [16 - i for i in range(17)]
    assert np.abs(x[:17] + x[mirror]).max() < 8 and np.abs(y[:17] - y[mirror]).max() < 8
    eye_distance = np.linalg.norm(L[45] - L[36])
    assert 80 < eye_distance < 110  # outer eye corners of an adult head, mm


def test_dynamic_contour_follows_the_yaw(template):
    vertices, faces = template
    C = _points(vertices, faces, *load_dynamic_embedding(data_file(DYNAMIC)))  # (79, 17, 3)
    front = C[0]
    assert np.abs(front[:, 0] + front[::-1, 0]).max() < 8  # frontal contour is symmetric
    assert front[8, 1] == front[:, 1].min()  # iBUG 8 is the chin
    right_turn, left_turn = C[int(contour_bin(torch.tensor([math.radians(30)])))], C[int(contour_bin(torch.tensor([math.radians(-30)])))]
    # turning towards +x hides the +x side: its silhouette (iBUG 9-16) moves forward, and vice versa
    assert right_turn[12:, 2].mean() > front[12:, 2].mean() + 15
    assert left_turn[:5, 2].mean() > front[:5, 2].mean() + 15
    assert abs(right_turn[:5, 2].mean() - front[:5, 2].mean()) < abs(right_turn[12:, 2].mean() - front[12:, 2].mean())


def test_flame_with_real_topology_and_embeddings(template, tmp_path):
    vertices, faces = template
    rng = np.random.default_rng(9)
    d = synthetic_flame(rng, K=12, template=vertices / 1000, faces=faces)
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(py2_dumps(d))
    for rel in (STATIC_51, STATIC_68, DYNAMIC):  # beside the model, as RingNet/TF_FLAME lay them out
        (tmp_path / rel.rsplit("/", 1)[1]).symlink_to(data_file(rel))
    model = load_flame(path, n_shape=8, dtype=torch.float64)
    assert (model.n_identity, model.n_expression) == (8, 4) and model.landmark_mask.all()
    assert len(model.contour_right) > 17 and len(model.contour_left) > 17
    mesh = model().vertices
    dyn = _points(vertices, faces, *load_dynamic_embedding(data_file(DYNAMIC)))
    static = _points(vertices, faces, *load_static_embedding(data_file(STATIC_51)))
    lm = model.landmarks(mesh)[0].numpy()
    np.testing.assert_allclose(lm[17:], static, atol=1e-9)
    np.testing.assert_allclose(lm[:17], dyn[0], atol=1e-9)  # contour at yaw 0
    yaw = torch.tensor([math.radians(25.2), math.radians(-7.0)], dtype=torch.float64)
    posed = model.landmarks(mesh.expand(2, -1, -1), yaw=yaw).numpy()
    np.testing.assert_allclose(posed[0, :17], dyn[25], atol=1e-9)
    np.testing.assert_allclose(posed[1, :17], dyn[46], atol=1e-9)
    np.testing.assert_allclose(posed[:, 17:], np.stack([static] * 2), atol=1e-9)
    assert "79 yaw bins" in model.describe()
    # the native npz keeps the whole Flame (LBS and the real 79-bin dynamic contour), exactly
    save_npz(model, tmp_path / "flame.npz")
    back = load_npz(tmp_path / "flame.npz")
    assert type(back) is Flame
    beta, psi = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    pose = 0.3 * torch.randn(2, 5, 3, dtype=torch.float64)
    assert torch.equal(back(beta, psi, pose).vertices, model(beta, psi, pose).vertices)
    assert torch.equal(back.landmarks(mesh.expand(2, -1, -1), yaw=yaw), model.landmarks(mesh.expand(2, -1, -1), yaw=yaw))
    # an explicit 68-point embedding replaces the static contour; so does the 68 file beside a model
    # that has no dynamic embedding
    model68 = load_flame(path, n_shape=8, static_embedding=data_file(STATIC_68), dtype=torch.float64)
    (tmp_path / "no_dynamic").mkdir()
    (tmp_path / "no_dynamic" / "m.pkl").symlink_to(path)
    (tmp_path / "no_dynamic" / "flame_static_embedding_68.pkl").symlink_to(data_file(STATIC_68))
    (tmp_path / "no_dynamic" / "flame_static_embedding.pkl").symlink_to(data_file(STATIC_51))
    beside = load_flame(tmp_path / "no_dynamic" / "m.pkl", n_shape=8, dtype=torch.float64)
    assert beside.contour_indices is None and torch.equal(beside.landmark_indices, model68.landmark_indices)
    f68, b68 = load_static_embedding(data_file(STATIC_68))
    np.testing.assert_allclose(model68.landmarks(mesh)[0].numpy(), _points(vertices, faces, f68, b68), atol=1e-9)
    # embeddings that do not fit the mesh, or are malformed, are refused naming the embedding file
    bad = tmp_path / "bad_embedding.pkl"
    for payload, message in [
        ({"lmk_face_idx": np.array([99999] * 51, np.uint32), "lmk_b_coords": b68[17:]}, "triangle ids"),
        ({"lmk_face_idx": f68[:10], "lmk_b_coords": b68[:10]}, "expected 51 or 68"),
        ({"lmk_face_idx": f68, "lmk_b_coords": b68[:, :2]}, "lmk_b_coords"),
        ({"lmk_face_idx": f68, "lmk_b_coords": b68 * 2}, "sum to 1"),
        ({"lmk_b_coords": b68}, "missing key"),
    ]:
        bad.write_bytes(py2_dumps(payload))
        with pytest.raises(ModelFileError, match=message) as e:
            load_flame(path, n_shape=8, static_embedding=bad)
        assert "bad_embedding.pkl" in str(e.value)
    bad_dynamic = tmp_path / "bad_dynamic.npy"
    np.save(bad_dynamic, {"lmk_face_idx": np.zeros((79, 16), np.uint32), "lmk_b_coords": np.ones((79, 16, 3)) / 3},
            allow_pickle=True)
    with pytest.raises(ModelFileError, match="bad_dynamic.npy"):
        load_flame(path, n_shape=8, dynamic_embedding=bad_dynamic)
