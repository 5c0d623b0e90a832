"""Exact point-to-triangle distances: hand-checked cases, trimesh's kernel, brute force vs the index."""
import numpy as np
import pytest
import trimesh

from morphable.geometry.closest_point import (TriangleIndex, closest_points, closest_points_brute_force,
                                              closest_points_on_triangles, on_boundary)

TRI = np.array([[0.0, 0, 0], [2, 0, 0], [0, 2, 0]])


@pytest.mark.parametrize("point, expected, bary", [
    ([0.5, 0.5, 3.0], [0.5, 0.5, 0.0], [0.5, 0.25, 0.25]),     # interior: straight below
    ([-1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]),     # vertex a region
    ([3.0, -0.5, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]),      # vertex b region
    ([1.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]),      # edge ab
    ([2.0, 2.0, -1.0], [1.0, 1.0, 0.0], [0.0, 0.5, 0.5]),      # edge bc (hypotenuse)
    ([-1.0, 1.5, 0.0], [0.0, 1.5, 0.0], [0.25, 0.0, 0.75]),    # edge ac
])
def test_single_triangle_regions(point, expected, bary):
    closest, b = closest_points_on_triangles(np.array([point]), TRI[None, 0], TRI[None, 1], TRI[None, 2])
    np.testing.assert_allclose(closest[0], expected, atol=1e-15)
    np.testing.assert_allclose(b[0], bary, atol=1e-15)


def test_kernel_matches_trimesh():
    rng = np.random.default_rng(0)
    tris = rng.normal(size=(2000, 3, 3))
    points = rng.normal(size=(2000, 3)) * 2
    ours, bary = closest_points_on_triangles(points, tris[:, 0], tris[:, 1], tris[:, 2])
    theirs = trimesh.triangles.closest_point(tris, points)
    np.testing.assert_allclose(ours, theirs, atol=1e-9)
    np.testing.assert_allclose(np.einsum("ni,nij->nj", bary, tris), ours, atol=1e-12)
    assert (bary >= 0).all() and np.allclose(bary.sum(axis=1), 1)


def test_degenerate_triangles_give_finite_results():
    a = np.array([[0.0, 0, 0], [0, 0, 0]])
    b = np.array([[1.0, 0, 0], [0, 0, 0]])
    c = np.array([[2.0, 0, 0], [0, 0, 0]])                   # collinear, and a single point
    p = np.array([[1.5, 1.0, 0], [0, 0, 3]])
    closest, _ = closest_points_on_triangles(p, a, b, c)
    np.testing.assert_allclose(closest, [[1.5, 0, 0], [0, 0, 0]], atol=1e-15)


def _random_mesh(rng, n_vertices, n_faces):
    return rng.normal(size=(n_vertices, 3)) * 10, rng.integers(0, n_vertices, size=(n_faces, 3))


@pytest.mark.parametrize("seed, n_vertices, n_faces, n_points", [
    (0, 30, 40, 400), (1, 200, 300, 800), (2, 3, 1, 50), (3, 400, 1500, 400)])
def test_index_equals_brute_force_on_random_meshes(seed, n_vertices, n_faces, n_points):
    rng = np.random.default_rng(seed)
    vertices, triangles = _random_mesh(rng, n_vertices, n_faces)
    points = rng.normal(size=(n_points, 3)) * 15
    fast = closest_points(points, vertices, triangles)
    slow = closest_points_brute_force(points, vertices, triangles, chunk_pairs=100_000)
    np.testing.assert_allclose(fast.distance, slow.distance, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.point, slow.point, rtol=0, atol=1e-9)
    corners = vertices[triangles[fast.triangle]]
    np.testing.assert_allclose(np.einsum("ni,nij->nj", fast.barycentric, corners), fast.point, atol=1e-9)


def test_index_with_mixed_triangle_sizes_and_points_on_the_surface():
    """A fine grid plus a few huge triangles (as in real scans): several radius groups, exact anyway."""
    rng = np.random.default_rng(4)
    x, y = np.meshgrid(np.linspace(0, 50, 40), np.linspace(0, 50, 40))
    grid = np.stack([x.ravel(), y.ravel(), np.sin(x.ravel() / 7) * 3], axis=1)
    quads = np.arange(40 * 40).reshape(40, 40)[:-1, :-1].ravel()
    small = np.concatenate([np.stack([quads, quads + 1, quads + 40], 1), np.stack([quads + 1, quads + 41, quads + 40], 1)])
    big = np.array([[0.0, 0, 20], [200, 0, 20], [0, 200, 20], [-100, -100, -30], [-100, 100, -30], [100, -100, -30]])
    vertices = np.concatenate([grid, big])
    triangles = np.concatenate([small, [[1600, 1601, 1602], [1603, 1604, 1605]]])
    index = TriangleIndex(vertices, triangles, candidates=4)
    assert len(index.groups) >= 2
    points = np.concatenate([rng.uniform(-20, 70, size=(400, 3)), grid[::13]])
    fast = index.query(points)
    slow = closest_points_brute_force(points, vertices, triangles)
    np.testing.assert_allclose(fast.distance, slow.distance, rtol=0, atol=1e-12)
    assert fast.distance[-len(grid[::13]):].max() < 1e-12       # vertices lie on the surface


def test_on_boundary_of_a_flat_patch():
    x, y = np.meshgrid(np.arange(5.0), np.arange(5.0))
    vertices = np.stack([x.ravel(), y.ravel(), np.zeros(25)], 1)
    q = np.arange(25).reshape(5, 5)[:-1, :-1].ravel()
    triangles = np.concatenate([np.stack([q, q + 1, q + 5], 1), np.stack([q + 1, q + 6, q + 5], 1)])
    points = np.array([[2.2, 2.3, 1.0],      # above the interior
                       [2.5, -1.0, 0.5],     # beyond the bottom edge
                       [-1.0, -1.0, 0.0],    # beyond a corner
                       [2.0, 2.0, 1.0],      # above an interior vertex
                       [1.5, 1.5, -2.0]])    # below an interior edge
    found = closest_points(points, vertices, triangles)
    assert on_boundary(found, triangles).tolist() == [False, True, True, False, False]


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        closest_points(np.zeros((3, 2)), TRI, np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="outside"):
        closest_points(np.zeros((3, 3)), TRI, np.array([[0, 1, 3]]))
