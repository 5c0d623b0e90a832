"""NoW protocol on a synthetic face: crop geometry, exact recovery after similarity/rigid transforms,
known offsets with alignment off, and the landmark file formats."""
import numpy as np
import pytest
import torch

from morphable.errors import InputError
from morphable.eval.now import NOW_LANDMARKS_IBUG68, crop_scan, crop_sphere, now_errors, read_landmarks_3d
from morphable.geometry.align import Similarity
from morphable.geometry.rotation import axis_angle_to_matrix


def _similarity(seed, scale):
    rng = np.random.default_rng(seed)
    rot = axis_angle_to_matrix(torch.as_tensor(rng.normal(size=3))).numpy()
    return Similarity(scale, rot, rng.normal(size=3) * 200)


def test_landmark_order_is_ibug():
    assert NOW_LANDMARKS_IBUG68 == (36, 39, 42, 45, 33, 48, 54)


def test_crop_sphere_by_hand():
    lm = np.array([[-45, 15, 0], [-15, 15, 0], [15, 15, 0], [45, 15, 0], [0, -25, 10], [-25, -40, 0], [25, -40, 0.]])
    centre, radius = crop_sphere(lm)
    bridge = np.array([0, 15, 0.0])
    np.testing.assert_allclose(centre, lm[4] + 0.3 * (bridge - lm[4]))
    assert radius == pytest.approx(1.4 * (90 + np.sqrt(40 ** 2 + 10 ** 2)) / 2)
    points = np.array([centre, centre + [radius - 1e-9, 0, 0], centre + [0, radius + 1e-6, 0]])
    assert crop_scan(points, lm).tolist() == [0, 1]


@pytest.mark.parametrize("metrical", [False, True])
def test_mesh_against_itself_after_a_transform(patch, metrical):
    """Full protocol (crop, Procrustes, refinement) from landmarks perturbed by 3 mm: error < 1e-3 mm."""
    vertices, triangles, ids = patch
    scan_lm = vertices[ids]
    move = _similarity(1, 1.0 if metrical else 0.37)
    noisy = move.apply(scan_lm) + np.random.default_rng(2).normal(size=(7, 3)) * 3.0
    result = now_errors(vertices, scan_lm, move.apply(vertices), triangles, noisy, metrical=metrical)
    assert len(result.distances) > 1000
    assert result.median_mm < 1e-3 and result.mean_mm < 1e-3 and result.distances.max() < 1e-3
    assert result.transform.scale == pytest.approx(1.0 if metrical else 1 / 0.37, rel=1e-6)
    np.testing.assert_allclose(result.aligned_vertices, vertices, atol=1e-3)


def test_metrical_reports_a_wrong_size(patch):
    """A mesh 5 % too large: the similarity protocol forgives it, the metrical one does not."""
    vertices, triangles, ids = patch
    big = 1.05 * vertices
    similarity = now_errors(vertices, vertices[ids], big, triangles, big[ids])
    metrical = now_errors(vertices, vertices[ids], big, triangles, big[ids], metrical=True)
    assert similarity.median_mm < 1e-3
    assert metrical.mean_mm > 0.1


@pytest.mark.parametrize("offset", [0.5, 2.0])
def test_no_align_measures_a_known_offset(patch, normals_of, offset):
    vertices, triangles, ids = patch
    scan = vertices + offset * normals_of(vertices, triangles)
    result = now_errors(scan, scan[ids], vertices, triangles, vertices[ids], align=False)
    assert result.median_mm == pytest.approx(offset, rel=0.02)
    assert result.transform.scale == 1.0 and np.array_equal(result.aligned_vertices, vertices)


def test_read_landmarks_3d_formats(tmp_path):
    points = np.arange(21, dtype=float).reshape(7, 3) / 7
    (tmp_path / "a.txt").write_text("\n".join(" ".join(repr(float(v)) for v in row) for row in points) + "\n")
    np.save(tmp_path / "b.npy", points)
    rows = "\n".join(f'  <point x="{float(x)!r}" y="{float(y)!r}" z="{float(z)!r}" name="{i}" active="1"/>' for i, (x, y, z) in enumerate(points))
    (tmp_path / "c.pp").write_text(f"<!DOCTYPE PickedPoints>\n<PickedPoints>\n <DocumentData/>\n{rows}\n</PickedPoints>\n")
    for name in ("a.txt", "b.npy", "c.pp"):
        np.testing.assert_array_equal(read_landmarks_3d(tmp_path / name), points)
    (tmp_path / "bad.txt").write_text("1 2 3\n4 5\n")
    with pytest.raises(InputError, match="bad.txt"):
        read_landmarks_3d(tmp_path / "bad.txt")
    with pytest.raises(InputError, match="expected 5"):
        read_landmarks_3d(tmp_path / "a.txt", 5)


def test_bad_landmarks_raise(patch):
    vertices, triangles, ids = patch
    with pytest.raises(ValueError, match=r"\(7, 3\)"):
        now_errors(vertices, vertices[ids[:5]], vertices, triangles, vertices[ids])


@pytest.mark.parametrize("metrical", [False, True])
def test_refinement_reaches_a_minimum_with_a_different_partial_mesh(patch, metrical):
    """A different face that covers only part of the crop (scan points beyond its rim): the refined
    transform is a local minimum of the summed squared scan-to-mesh distances."""
    from morphable.geometry.closest_point import closest_points

    vertices, triangles, ids = patch
    other = vertices.copy()
    other[:, 2] += 4 * np.exp(-((vertices[:, 0] - 20) ** 2 + (vertices[:, 1] - 30) ** 2) / 200)  # a new bump
    keep = np.abs(vertices[:, 0]) < 40                                   # narrower than the crop
    remap = np.full(len(vertices), -1)
    remap[keep] = np.arange(keep.sum())
    tri = remap[triangles]
    tri = tri[(tri >= 0).all(axis=1)]
    mesh_lm = other[ids] + np.random.default_rng(3).normal(size=(7, 3))
    result = now_errors(vertices, vertices[ids], other[keep], tri, mesh_lm, metrical=metrical)
    points = vertices[result.scan_ids]

    def energy(t):
        return float((closest_points(points, t.apply(other[keep]), tri).distance ** 2).sum())

    best = energy(result.transform)
    assert best == pytest.approx(float((result.distances ** 2).sum()), rel=1e-9)
    t = result.transform
    for axis in np.eye(3):
        for sign in (-1, 1):
            turn = axis_angle_to_matrix(torch.as_tensor(sign * 2e-3 * axis)).numpy()
            shifted = [Similarity(t.scale, t.rotation, t.translation + sign * 0.05 * axis),
                       Similarity(t.scale, turn @ t.rotation, turn @ t.translation)]
            for other_t in shifted:
                assert energy(other_t) >= best * (1 - 1e-9)
    if not metrical:
        for factor in (0.995, 1.005):
            assert energy(Similarity(t.scale * factor, t.rotation, t.translation * factor)) >= best * (1 - 1e-9)
