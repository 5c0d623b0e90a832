"""UV flattening (Tutte / conformal, symmetric) on hand-checkable grids and the real SFM and ICT meshes."""
import numpy as np
import pytest
import torch

from morphable.geometry import uv as U


def grid_mesh(n: int = 9, holes: bool = False):
    """A planar (n×n)-vertex unit-square grid in the z = 0 plane, centred on x = 0, split into triangles."""
    xs, ys = np.meshgrid(np.linspace(-0.5, 0.5, n), np.linspace(0, 1, n))
    v = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], 1)
    f = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            if holes and r == n // 2 - 1 and c in (1, n - 3):  # two mirrored one-cell holes
                continue
            f += [[a, b, e], [a, e, d]] if (c < (n - 1) // 2) else [[a, b, d], [b, e, d]]
    return v, np.array(f)


def test_flat_square_grid_is_reproduced_exactly():
    """On a regular planar grid the cotangent Laplacian is the 5-point stencil: the identity map is harmonic,
    and the arc-length boundary map puts the border exactly on the square, so uv = (x + 0.5, y)."""
    v, f = grid_mesh()
    uv = U.flatten(v, f).numpy()
    np.testing.assert_allclose(uv, v[:, :2] + [0.5, 0], atol=1e-6)


def test_symmetric_grid_with_holes_mirrors_exactly():
    v, f = grid_mesh(11, holes=True)
    pairs = U.mirror_pairs(v, f)
    assert len(pairs) == len(v)  # every vertex of the symmetric grid has a mirror (or is on the midline)
    uv = U.flatten(v, f, pairs).numpy()
    p = pairs.numpy()
    np.testing.assert_allclose(uv[p[:, 0], 0] + uv[p[:, 1], 0], 1.0, atol=1e-9)
    np.testing.assert_allclose(uv[p[:, 0], 1], uv[p[:, 1], 1], atol=1e-9)
    assert U.count_flips(uv, f) == 0


def test_outputs_nan_outside_largest_component_and_errors():
    v, f = grid_mesh(5)
    extra = np.array([[5.0, 5, 0], [6, 5, 0], [5, 6, 0]])
    uv = U.flatten(np.vstack([v, extra]), np.vstack([f, [[25, 26, 27]]])).numpy()
    assert np.isnan(uv[25:]).all() and np.isfinite(uv[:25]).all()
    with pytest.raises(ValueError, match="paired with both"):
        U.flatten(v, f, torch.tensor([[0, 4], [0, 3]]))
    with pytest.raises(ValueError, match="outer boundary"):
        U.flatten(v, f, torch.tensor([[0, 6]]))  # a corner paired with an interior vertex
    closed = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]])
    with pytest.raises(ValueError, match="no boundary"):
        U.flatten(np.random.default_rng(0).normal(size=(4, 3)), closed)


def test_locate_matches_brute_force():
    rng = np.random.default_rng(1)
    v, f = grid_mesh(7)
    uv = U.flatten(v, f).numpy()
    q = rng.uniform(0, 1, size=(300, 2))
    ids, bary = U.locate(uv, f, q)
    recon = np.einsum("nk,nkd->nd", bary.numpy(), uv[f[ids.numpy()]])
    np.testing.assert_allclose(recon, q, atol=1e-12)
    assert (bary.numpy() >= -1e-9).all()
    # brute force: every triangle containing q (interior points have exactly one)
    for k in range(0, 300, 37):
        inside = [t for t in range(len(f)) if _contains(uv[f[t]], q[k])]
        assert ids[k].item() in inside


def _contains(tri, p):
    d = [(tri[(i + 1) % 3, 0] - tri[i, 0]) * (p[1] - tri[i, 1]) - (tri[(i + 1) % 3, 1] - tri[i, 1]) * (p[0] - tri[i, 0])
         for i in range(3)]
    return all(x >= -1e-12 for x in d) or all(x <= 1e-12 for x in d)


def _check_model_flattening(vertices, faces, name):
    pairs = U.mirror_pairs(vertices, faces)
    uv = U.flatten(vertices, faces, pairs).numpy()
    used = np.isfinite(uv).all(1)
    keep = used[faces].all(1)
    assert U.count_flips(uv, faces[keep]) == 0
    assert uv[used].min() >= 0 and uv[used].max() <= 1
    p = pairs.numpy()
    p = p[used[p[:, 0]] & used[p[:, 1]]]
    assert np.abs(uv[p[:, 0], 0] + uv[p[:, 1], 0] - 1).max() < 1e-6
    assert np.abs(uv[p[:, 0], 1] - uv[p[:, 1], 1]).max() < 1e-6
    dist = U.distortion(vertices, faces[keep], uv)
    print(f"{name}: {used.sum()} vertices, {len(p)} mirrored, distortion {dist}")
    assert dist["angle_deg"] < 20  # conformal weights keep angles close (a flattening of a face is not isometric)


def test_sfm_symmetric_flattening():
    import morphable

    model = morphable.load_model("sfm")
    _check_model_flattening(model.mean.numpy(), model.triangles.numpy(), "sfm")


def test_ict_face_region_symmetric_flattening():
    import morphable

    model = morphable.load_model("ict")
    face = model.regions["face"].numpy()
    inside = np.zeros(model.n_vertices, bool)
    inside[face] = True
    tris = model.triangles.numpy()
    tris = tris[inside[tris].all(1)]
    _check_model_flattening(model.mean.numpy(), tris, "ict face")


def test_symmetry_pairs_drop_non_mutual_and_border_mismatched_entries():
    v, f = grid_mesh(5)
    pairs = U.mirror_pairs(v, f).numpy()
    mirror = np.full(len(v), -1)
    mirror[pairs[:, 0]] = pairs[:, 1]
    mirror[7] = 2      # vertex 7 (interior) claims vertex 2 (border), whose mirror is vertex 2 itself
    mirror[6], mirror[8] = 8, 6  # two interior vertices on one row: a valid mutual pair, kept
    kept = U.symmetry_pairs(mirror, f).numpy()
    as_map = dict(map(tuple, kept.tolist()))
    assert 7 not in as_map and as_map[6] == 8 and as_map[8] == 6 and as_map[2] == 2
    assert len(kept) == len(pairs) - 1
    assert 7 not in dict(map(tuple, U.symmetry_pairs(mirror).numpy().tolist()))  # non-mutual, even without faces
