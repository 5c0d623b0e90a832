"""Umeyama against a generic least-squares solver; ICP recovering known transforms."""
import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from morphable.geometry.align import Similarity, icp, umeyama
from morphable.geometry.rotation import axis_angle_to_matrix


def _rotation(r):
    return axis_angle_to_matrix(torch.as_tensor(r, dtype=torch.float64)).numpy()


def _random_similarity(rng, scale=True, angle=1.0, shift=50.0):
    return Similarity(float(rng.uniform(0.5, 2.0)) if scale else 1.0, _rotation(rng.normal(size=3) * angle),
                      rng.normal(size=3) * shift)


@pytest.mark.parametrize("scale", [True, False])
def test_umeyama_recovers_an_exact_transform(scale):
    rng = np.random.default_rng(0)
    truth = _random_similarity(rng, scale)
    x = rng.normal(size=(7, 3)) * 30
    got = umeyama(x, truth.apply(x), scale=scale)
    assert got.scale == pytest.approx(truth.scale, rel=1e-12)
    np.testing.assert_allclose(got.rotation, truth.rotation, atol=1e-12)
    np.testing.assert_allclose(got.translation, truth.translation, atol=1e-9)


@pytest.mark.parametrize("scale", [True, False])
def test_umeyama_is_the_least_squares_optimum(scale):
    """With noise, the closed form equals a generic Levenberg-Marquardt fit over (log s, axis-angle, t)."""
    rng = np.random.default_rng(1)
    truth = _random_similarity(rng, scale)
    x = rng.normal(size=(20, 3)) * 30
    y = truth.apply(x) + rng.normal(size=x.shape) * 2.0
    w = rng.uniform(0.2, 2.0, size=len(x))
    got = umeyama(x, y, scale=scale, weights=w)

    def residual(p):
        s = np.exp(p[0]) if scale else 1.0
        return (np.sqrt(w)[:, None] * (s * x @ _rotation(p[1:4]).T + p[4:] - y)).ravel()

    start = np.zeros(7)
    fit = least_squares(residual, start, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert (residual(np.r_[np.log(got.scale), _axis(got.rotation), got.translation]) ** 2).sum() <= fit.cost * 2 + 1e-9
    assert got.scale == pytest.approx(np.exp(fit.x[0]) if scale else 1.0, rel=1e-6)
    np.testing.assert_allclose(got.rotation, _rotation(fit.x[1:4]), atol=1e-6)


def _axis(rotation):
    from morphable.geometry.rotation import matrix_to_axis_angle
    return matrix_to_axis_angle(torch.as_tensor(rotation)).numpy()


def test_umeyama_never_reflects():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 3))
    mirrored = x * np.array([-1.0, 1.0, 1.0])
    got = umeyama(x, mirrored)
    assert np.linalg.det(got.rotation) == pytest.approx(1.0)


def test_umeyama_zero_weights_ignore_outliers():
    rng = np.random.default_rng(3)
    truth = _random_similarity(rng)
    x = rng.normal(size=(12, 3)) * 10
    y = truth.apply(x)
    y[:3] += 100.0
    got = umeyama(x, y, weights=np.r_[np.zeros(3), np.ones(9)])
    np.testing.assert_allclose(got.apply(x[3:]), y[3:], atol=1e-9)


def test_similarity_algebra():
    rng = np.random.default_rng(4)
    a, b = _random_similarity(rng), _random_similarity(rng)
    p = rng.normal(size=(5, 3))
    np.testing.assert_allclose(a.compose(b).apply(p), a.apply(b.apply(p)), atol=1e-9)
    np.testing.assert_allclose(a.inverse().apply(a.apply(p)), p, atol=1e-9)
    homogeneous = (a.matrix() @ np.c_[p, np.ones(5)].T).T[:, :3]
    np.testing.assert_allclose(homogeneous, a.apply(p), atol=1e-9)


def test_umeyama_bad_input():
    with pytest.raises(ValueError, match="N >= 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="weights"):
        umeyama(np.eye(3), np.eye(3), weights=-np.ones(3))


def _bumpy_patch(n=30, size=60.0):
    """A height field with asymmetric bumps (every similarity is observable), mm."""
    u = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(u, u)
    z = 8 * np.exp(-((x - 5) ** 2 + (y + 3) ** 2) / 150) - 5 * np.exp(-((x + 12) ** 2 + (y - 10) ** 2) / 80) + 0.004 * x * y
    vertices = np.stack([x.ravel(), y.ravel(), z.ravel()], 1)
    q = np.arange(n * n).reshape(n, n)[:-1, :-1].ravel()
    triangles = np.concatenate([np.stack([q, q + 1, q + n], 1), np.stack([q + 1, q + n + 1, q + n], 1)])
    return vertices, triangles


def _surface_samples(rng, vertices, triangles, count, inner=None):
    tri = triangles if inner is None else triangles[inner]
    pick = tri[rng.integers(0, len(tri), count)]
    b = rng.dirichlet(np.ones(3), size=count)
    return np.einsum("ni,nij->nj", b, vertices[pick])


@pytest.mark.parametrize("method, scale", [("point_to_plane", True), ("point_to_plane", False),
                                           ("point_to_point", True)])
def test_icp_recovers_a_known_transform(method, scale):
    rng = np.random.default_rng(5)
    vertices, triangles = _bumpy_patch()
    truth = _random_similarity(rng, scale, angle=0.5)
    # fixed points: samples of the true surface moved by `truth`, away from the rim
    central = np.abs(vertices[triangles].mean(axis=1)[:, :2]).max(axis=1) < 22
    fixed = truth.apply(_surface_samples(rng, vertices, triangles, 1500, central))
    start = Similarity(truth.scale * (1.03 if scale else 1.0), truth.rotation @ _rotation([0.04, -0.03, 0.02]),
                       truth.translation + [1.5, -1.0, 2.0])
    result = icp(fixed, vertices, triangles, method=method, scale=scale, init=start, max_iterations=120,
                 tolerance=1e-14)
    tol = 1e-6 if method == "point_to_plane" else 2e-2
    assert result.transform.scale == pytest.approx(truth.scale, abs=tol)
    np.testing.assert_allclose(result.transform.rotation, truth.rotation, atol=tol)
    assert np.median(result.distances) < tol
    assert result.inliers.all()


def test_icp_point_cloud_with_normals():
    rng = np.random.default_rng(6)
    vertices, triangles = _bumpy_patch(n=60)
    normals = np.cross(vertices[triangles[:, 1]] - vertices[triangles[:, 0]], vertices[triangles[:, 2]] - vertices[triangles[:, 0]])
    vertex_normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(vertex_normals, triangles[:, k], normals)
    vertex_normals /= np.linalg.norm(vertex_normals, axis=1, keepdims=True)
    truth = _random_similarity(rng, False, angle=0.3)
    inner = np.abs(vertices[:, :2]).max(axis=1) < 20
    fixed = truth.apply(vertices[inner])                       # same points: the cloud can match exactly
    start = Similarity(1.0, truth.rotation @ _rotation([0.02, 0.01, -0.02]), truth.translation + [0.5, 0.5, -0.5])
    result = icp(fixed, vertices, None, method="point_to_plane", init=start, moving_normals=vertex_normals,
                 max_iterations=100)
    assert np.median(result.distances) < 1e-6
    with pytest.raises(ValueError, match="moving_normals"):
        icp(fixed, vertices, None, method="point_to_plane")


def test_icp_exclude_boundary_handles_partial_overlap():
    """Fixed points beyond the moving patch's rim would pull plain ICP; rim rejection ignores them."""
    rng = np.random.default_rng(7)
    vertices, triangles = _bumpy_patch()
    truth = _random_similarity(rng, True, angle=0.3)
    on_patch = _surface_samples(rng, vertices, triangles, 1500)
    beyond = rng.uniform(-30, 30, size=(300, 3)) * [1, 1, 0.1] + [62, 0, 0]   # a flap beyond the rim
    fixed = truth.apply(np.concatenate([on_patch, beyond]))
    start = Similarity(truth.scale * 1.02, truth.rotation @ _rotation([0.03, 0.0, -0.02]), truth.translation + 1.0)
    plain = icp(fixed, vertices, triangles, scale=True, init=start, max_iterations=5)
    robust = icp(fixed, vertices, triangles, scale=True, init=start, max_distance=10.0, exclude_boundary=True,
                 max_iterations=100, tolerance=1e-12)
    err = lambda r: abs(r.transform.scale - truth.scale) + np.abs(r.transform.rotation - truth.rotation).max()  # noqa: E731
    assert err(robust) < 1e-6 < err(plain)
    assert not robust.inliers[1500:].any() and robust.inliers[:1500].mean() > 0.95
    with pytest.raises(ValueError, match="moving_triangles"):
        icp(fixed, vertices, None, method="point_to_point", exclude_boundary=True)


def test_icp_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        icp(np.zeros((3, 3)), np.eye(3), np.array([[0, 1, 2]]), method="nearest")
