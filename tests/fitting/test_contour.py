"""Contour correspondences: edge tables vs brute force, silhouettes on an ellipsoid, side selection."""
import itertools
import math

import torch

from morphable.fitting.contour import (CONTOUR_IDS, contour_correspondences, contour_terms, dynamic_contour_rows,
                                       interior_edges, silhouette_mask)
from morphable.fitting.camera_estimation import project_scaled_orthographic
from tests.fitting._synthetic import camera, face_model

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


def test_dynamic_contour_rows():
    yaw = torch.deg2rad(torch.tensor([0.0, 39.0, -39.0, 80.0, -80.0, 10.0]))
    rows = dynamic_contour_rows(yaw, n_bins=79, max_yaw_deg=39.0)
    assert rows.tolist() == [39, 78, 0, 78, 0, 49]
