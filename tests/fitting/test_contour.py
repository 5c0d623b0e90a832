"""Contour correspondences: edge tables vs brute force, silhouettes on an ellipsoid, side selection; FLAME's
dynamic contour for a camera rotation (RingNet's bin layout, checked against the silhouette on the real
template)."""
import itertools
import math

import numpy as np
import torch
import trimesh

from morphable.fitting.camera_estimation import project_scaled_orthographic
from morphable.fitting.contour import (CONTOUR_IDS, contour_correspondences, contour_terms, flame_dynamic_contour,
                                       interior_edges, silhouette_mask)
from morphable.geometry.rotation import euler_to_matrix
from morphable.models.flame import Flame, contour_bin
from morphable.models.formats.flame import load_flame
from tests.conftest import data_file
from tests.fitting._synthetic import camera, face_model
from tests.models.test_flame import DYNAMIC, synthetic_flame
from tests.models.test_safe_pickle import py2_dumps

D = torch.float64


def test_interior_edges_brute_force():
    m = face_model()
    ev, ef = interior_edges(m.triangles)
    faces_of = {}
    for f, tri in enumerate(m.triangles.tolist()):
        for a, b in itertools.combinations(tri, 2):
            faces_of.setdefault((min(a, b), max(a, b)), []).append(f)
    expected = {e: sorted(fs) for e, fs in faces_of.items() if len(fs) == 2}
    got = {tuple(e): sorted(f) for e, f in zip(ev.tolist(), ef.tolist())}
    assert got == expected


def terms():
    m = face_model()
    return m, contour_terms(m.mean, m.triangles, m.contour_right, m.contour_left)


def test_silhouette_lies_where_normals_are_perpendicular_to_the_view():
    m, t = terms()
    cam = camera([[40.0, 0.0, 0.0]])
    R = cam.rotation_matrix
    sil = silhouette_mask(R, t)[0]
    n = t.normals / t.normals.norm(dim=-1, keepdim=True)
    nz = (n @ R[0].T)[:, 2]
    assert sil.any()
    # every silhouette vertex has a neighbour across the sign change: |n_z| is small on the grid
    assert nz[sil].abs().max() < math.sin(math.radians(8))
    # and vertices facing the camera squarely are never on it
    assert not (sil & (nz.abs() > 0.3)).any()


def test_frontal_pose_uses_contour_lists():
    m, t = terms()
    cam = camera([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0]])
    R = cam.rotation_matrix
    proj = project_scaled_orthographic(m.mean[t.region].expand(2, -1, -1), cam.scale, R, cam.translation)
    # put each contour landmark exactly on a chosen candidate of its side
    pick_r = m.contour_right[torch.tensor([0, 2, 5, 9, 11, 14, 20, 39])]
    pick_l = m.contour_left[torch.tensor([1, 3, 5, 7, 12, 19, 25, 33])]
    lm = torch.full((2, 68, 2), float("nan"), dtype=D)
    full = cam.project(m.mean.expand(2, -1, -1))
    lm[:, list(CONTOUR_IDS)] = full[:, torch.cat([pick_r, pick_l])]
    ids = contour_correspondences(lambda pos: proj[:, pos], R, lm, t)
    assert ids.tolist() == [torch.cat([pick_r, pick_l]).tolist()] * 2


def test_turned_away_side_uses_the_silhouette():
    m, t = terms()
    cam = camera([[45.0, 0.0, 0.0]])  # positive yaw: the subject's left (+x) turns away
    R = cam.rotation_matrix
    proj = project_scaled_orthographic(m.mean[t.region][None], cam.scale, R, cam.translation)
    sil = silhouette_mask(R, t)[0] & t.side_left
    outline = t.region[sil]
    full = cam.project(m.mean[None])[0]
    lm = torch.full((1, 68, 2), float("nan"), dtype=D)
    lm[0, list(CONTOUR_IDS[8:])] = full[outline[:8]] + 0.3  # near 8 outline vertices of the left side
    lm[0, list(CONTOUR_IDS[:8])] = full[m.contour_right[:8]]
    ids = contour_correspondences(lambda pos: proj[:, pos], R, lm, t)[0]
    assert ids[8:].tolist() == outline[:8].tolist()
    assert ids[:8].tolist() == m.contour_right[:8].tolist()  # the front side still uses its list
    # the left list vertices themselves are hidden at this yaw: none of them was picked
    assert not set(ids[8:].tolist()) & set(m.contour_left.tolist())


def bin_table_flame(n_bins: int = 79) -> Flame:
    """A 5-joint Flame whose dynamic-contour row ``k`` holds only the vertex id ``k`` (rows identify bins)."""
    V = n_bins
    rows = torch.arange(n_bins)[:, None, None].expand(n_bins, 17, 3)
    return Flame(name="bins", mean=torch.zeros(V, 3), triangles=torch.zeros(0, 3), identity_basis=torch.zeros(V, 3, 1),
                 posedirs=torch.zeros(36, V * 3), joint_regressor=torch.full((5, V), 1 / V), parents=[-1, 0, 1, 1, 1],
                 skinning_weights=torch.full((V, 5), 0.2), contour_indices=rows,
                 contour_weights=torch.full(rows.shape, 1 / 3), dtype=D)


def _rotation(yaw_deg, pitch_deg=0.0, roll_deg=0.0):
    return euler_to_matrix(torch.deg2rad(torch.tensor([[yaw_deg, pitch_deg, roll_deg]], dtype=D)))


def test_flame_dynamic_contour_uses_ringnet_bin_layout():
    model = bin_table_flame()
    # RingNet / TF_FLAME: bin 0 frontal, bins 1..39 = +1..+39 degrees, bins 40..78 = -1..-39 degrees
    expected = {0.0: 0, 30.0: 30, -30.0: 69, 39.0: 39, -39.0: 78, 1.0: 1, -1.0: 40, 60.0: 39, -60.0: 78, 12.4: 12,
                -12.6: 52}
    for yaw, row in expected.items():
        ids, w = flame_dynamic_contour(model, _rotation(yaw))
        assert (ids == row).all() and torch.allclose(w, torch.full_like(w, 1 / 3)), (yaw, int(ids[0, 0, 0]), row)
    # batched, and agreeing with the model's own lookup (contour_bin of the yaw) whatever the pitch and roll
    R = torch.cat([_rotation(y, p, r) for y, p, r in [(30, 0, 0), (-30, 10, 0), (17, -20, 5), (-8, 15, -10)]])
    ids, _ = flame_dynamic_contour(model, R)
    assert ids[:, 0, 0].tolist()[:2] == [30, 69]
    yaw = torch.atan2(-R[:, 2, 0], torch.hypot(R[:, 0, 0], R[:, 1, 0]))  # RingNet's yaw of the rotation
    assert ids[:, 0, 0].tolist() == contour_bin(yaw).tolist()


def test_flame_dynamic_contour_adds_the_model_pose():
    model = bin_table_flame()
    pose = torch.zeros(3, 5, 3, dtype=D)
    pose[0, 0, 1] = math.radians(20.0)  # global yaw 20 + neck yaw 10, camera frontal
    pose[0, 1, 1] = math.radians(10.0)
    pose[1, 1, 1] = math.radians(10.0)  # camera yaw 20 + neck yaw 10
    pose[2, 2, 0] = 0.3  # the jaw does not turn the head
    R = torch.cat([_rotation(0.0), _rotation(20.0), _rotation(-30.0)])
    ids, _ = flame_dynamic_contour(model, R, pose)
    assert ids[:, 0, 0].tolist() == [30, 30, 69]


def test_flame_dynamic_contour_lies_on_the_silhouette(tmp_path):
    """On the real FLAME template and RingNet embedding: at ±30° yaw the chosen row's away-side points
    lie on the outline that the occluding-edge search finds; the evenly spaced layout's row does not."""
    mesh = trimesh.load(data_file("TF_FLAME/data/template.ply"), process=False)
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)  # metres
    rng = np.random.default_rng(0)
    (tmp_path / "generic_model.pkl").write_bytes(py2_dumps(synthetic_flame(rng, K=4, template=vertices, faces=faces)))
    (tmp_path / "flame_dynamic_embedding.npy").symlink_to(data_file(DYNAMIC))
    model = load_flame(tmp_path / "generic_model.pkl", n_shape=2, dtype=D)
    mean = model.mean
    t = contour_terms(mean, model.triangles, model.contour_right, model.contour_left)
    for yaw, away, wrong_row in ((30.0, slice(9, 17), 69), (-30.0, slice(0, 8), 9)):
        R = _rotation(yaw)
        outline = t.side_left if yaw > 0 else t.side_right
        outline = (mean[t.region[silhouette_mask(R, t)[0] & outline]] @ R[0].T)[:, :2]
        ids, w = flame_dynamic_contour(model, R)
        points = (mean[ids[0]] * w[0, ..., None]).sum(-2)

        def distance(p):
            return torch.cdist((p[away] @ R[0].T)[:, :2], outline).min(1)[0].max()

        assert distance(points) < 4.0  # mm
        wrong = (mean[model.contour_indices[wrong_row]] * model.contour_weights[wrong_row, ..., None]).sum(-2)
        assert distance(wrong) > 6.0


def test_silhouette_mask_brute_force():
    m, t = terms()
    R = camera([[40.0, 10.0, 0.0], [-60.0, -5.0, 5.0], [0.0, 0.0, 0.0]]).rotation_matrix
    got = silhouette_mask(R, t)
    for b in range(3):
        nz = (t.normals @ R[b].T)[:, 2]
        expected = set()
        for i, j in t.edge_vertices.tolist():
            if (nz[i] > 0) != (nz[j] > 0):
                expected |= {i, j}
        assert set(torch.nonzero(got[b]).squeeze(1).tolist()) == expected


def test_batched_subset_projection_equals_per_face():
    """``project_faces`` (each side's silhouette projected only for the faces turned that way) gives the
    per-face answer of the plain ``project``."""
    m, t = terms()
    cam = camera([[45.0, 5.0, 0.0], [-50.0, 0.0, 3.0], [2.0, 0.0, 0.0], [30.0, -10.0, 0.0]])
    R = cam.rotation_matrix
    proj = project_scaled_orthographic(m.mean[t.region].expand(4, -1, -1), cam.scale, R, cam.translation)
    g = torch.Generator().manual_seed(0)
    lm = cam.project(m.mean[t.region[torch.randint(0, t.region.numel(), (4, 68), generator=g)]].reshape(4, 68, 3))
    lm = lm + torch.randn(lm.shape, generator=g, dtype=D)
    calls = []

    def project_faces(pos, faces):
        calls.append(faces.tolist())
        return proj[faces][:, pos]

    ids = contour_correspondences(lambda pos: proj[:, pos], R, lm, t, project_faces=project_faces)
    assert sorted(calls) == [[0, 3], [1]]  # the left side for the faces with positive yaw, the right for the other
    for b in range(4):
        one = contour_correspondences(lambda pos: proj[b:b + 1, pos], R[b:b + 1], lm[b:b + 1], t)
        assert ids[b].tolist() == one[0].tolist()
