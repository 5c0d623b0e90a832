"""Identity consistency: rigid Procrustes distances without scale, same/different AUC, the full report."""
import numpy as np
import pytest
import torch

from morphable.eval.consistency import (identity_consistency, neutral_face_meshes, rigid_align,
                                        rigid_distance_matrix, rigid_rms_distance, same_different_auc)
from morphable.geometry.rotation import axis_angle_to_matrix
from morphable.losses.identity import roc_auc_pairs
from morphable.models.base import MorphableModel


def _rotation(seed):
    rng = np.random.default_rng(seed)
    return axis_angle_to_matrix(torch.as_tensor(rng.normal(size=3))).numpy()


def _cloud(seed, n=200):
    return np.random.default_rng(seed).normal(size=(n, 3)) * [40.0, 50.0, 30.0]


def test_rigid_align_recovers_rotation_and_translation():
    a = _cloud(0)
    rotation, translation = _rotation(1), np.array([12.0, -7.0, 30.0])
    b = a @ rotation.T + translation
    found = rigid_align(a, b)
    assert found.scale == 1.0
    np.testing.assert_allclose(found.rotation, rotation, atol=1e-10)
    np.testing.assert_allclose(found.translation, translation, atol=1e-8)
    d = rigid_distance_matrix(torch.as_tensor(np.stack([a, b])))
    # the closed form's difference of squares leaves ~sqrt(eps · |A|² / V) ≈ 1e-6 mm for these ~50 mm clouds
    # (1.08e-6 on an AMD EPYC's MKL): 1e-5 mm is that rounding, five orders below any face difference
    assert float(d[0, 1]) < 1e-5 and float(d[1, 0]) < 1e-5


@pytest.mark.parametrize("scale", [0.9, 1.15])
def test_scale_is_not_removed(scale):
    """A scaled copy (then rotated and moved) keeps the distance |1 - s| · RMS of the centred mesh, the exact
    optimum: no rigid motion can change a size."""
    a = _cloud(2)
    centred = a - a.mean(axis=0)
    b = scale * centred @ _rotation(3).T + [5.0, 1.0, -2.0]
    expected = abs(1 - scale) * np.sqrt((centred ** 2).sum(axis=1).mean())
    d = rigid_distance_matrix(torch.as_tensor(np.stack([a, b])))
    assert expected > 1.0
    assert float(d[0, 1]) == pytest.approx(expected, rel=1e-9)
    assert rigid_rms_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_closed_form_matches_the_umeyama_reference_including_mirror_images():
    meshes = [_cloud(10 + k) for k in range(4)]
    meshes.append(meshes[0] * [-1.0, 1.0, 1.0])             # a mirror image: no reflection allowed
    meshes.append(meshes[1] @ _rotation(7).T + 3.0)
    fast = rigid_distance_matrix(torch.as_tensor(np.stack(meshes))).numpy()
    slow = np.array([[rigid_rms_distance(a, b) for b in meshes] for a in meshes])
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-5)      # closed form: cancellation near 0
    assert fast[0, 4] > 1.0 and fast[1, 5] < 1e-5
    np.testing.assert_array_equal(fast, fast.T)


def test_auc_of_a_hand_built_case():
    """Same pairs at 1 and 5; different pairs at 2, 3, 5, 6, 7, 8, 9, 10: the pair at 1 beats all 8, the pair at
    5 beats 5 and ties 1 -> (8 + 5.5) / 16."""
    ids = ["a", "a", "b", "b", "c"]
    i, j = torch.triu_indices(5, 5, offset=1)
    same = torch.tensor([ids[p] == ids[q] for p, q in zip(i.tolist(), j.tolist())])
    values = iter([2.0, 3.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    d = torch.zeros(5, 5, dtype=torch.float64)
    for p, q, s in zip(i.tolist(), j.tolist(), same.tolist()):
        d[p, q] = d[q, p] = (1.0 if p == 0 else 5.0) if s else next(values)
    assert same_different_auc(d, ids) == pytest.approx(13.5 / 16)
    with pytest.raises(ValueError, match="both positive and negative"):
        same_different_auc(d[:2, :2], ["a", "a"])


def _tiny_model():
    """6 vertices in the face region, 4 outside; component 0 moves only the outside, component 1 bends the
    face (not a rigid motion)."""
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(10, 3)) * 30
    basis = np.zeros((10, 3, 2))
    basis[6:, :, 0] = rng.normal(size=(4, 3)) * 5
    basis[:6, :, 1] = rng.normal(size=(6, 3)) * 5
    return MorphableModel(name="tiny", mean=mean, triangles=np.array([[0, 1, 2], [3, 4, 5]]), identity_basis=basis,
                          regions={"face": np.arange(6)}, dtype=torch.float64)


def test_neutral_face_meshes_use_the_region():
    model = _tiny_model()
    alpha = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    meshes = neutral_face_meshes(model, alpha)
    assert meshes.shape == (1, 6, 3)
    np.testing.assert_allclose(meshes[0].numpy(), (model.mean + model.identity_basis @ alpha[0])[:6].numpy())
    assert model.region_ids("nose").tolist() == list(range(10))       # no such region: all vertices
    assert model.region_ids("face").tolist() == list(range(6))


def test_identity_consistency_separates_coefficients_but_not_invisible_meshes():
    """People differ only in component 0 (outside the face region); photos of one person differ in
    component 1 (the face). Coefficients separate people perfectly; face meshes cannot, and their AUC equals
    the brute-force reference (Umeyama per pair, AUC by counting pairs)."""
    model = _tiny_model()
    ids = [p for p in "abc" for _ in range(3)]
    alpha = torch.tensor([[10.0 * "abc".index(p), c] for p, c in zip(ids, [-1.0, 0.1, 0.9] * 3)], dtype=torch.float64)
    desc = torch.tensor([[float("abc".index(p)), 0.0] for p in ids], dtype=torch.float64)
    report = identity_consistency(model, alpha, ids, descriptors=desc)
    assert (report.n_items, report.n_ids, report.n_same, report.n_different) == (9, 3, 9, 27)
    assert report.auc_coeff == 1.0 and report.auc_descriptor == 1.0
    meshes = (model.mean + torch.einsum("vck,nk->nvc", model.identity_basis, alpha))[:, :6].numpy()
    i, j = torch.triu_indices(9, 9, offset=1)
    scores = torch.tensor([-rigid_rms_distance(meshes[p], meshes[q]) for p, q in zip(i.tolist(), j.tolist())])
    same = torch.tensor([ids[p] == ids[q] for p, q in zip(i.tolist(), j.tolist())])
    expected = roc_auc_pairs(scores, same)
    assert report.auc_mesh == pytest.approx(expected, abs=1e-12)
    assert report.auc_mesh < 0.6
