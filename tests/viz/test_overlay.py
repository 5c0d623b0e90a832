"""Overlay drawing: markers where the points are, only front-facing mesh edges, NaN points skipped."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from morphable.geometry.camera import ScaledOrthographic
from morphable.viz.overlay import (FITTED_COLOR, INPUT_COLOR, MESH_COLOR, draw_overlay, front_facing, shade_mesh,
                                   unique_edges, vertex_normals)


def _project(points3d, yaw=0.0):
    cam = ScaledOrthographic(torch.tensor([10.0]), torch.tensor([[0.0, yaw, 0.0]]), torch.tensor([[50.0, 50.0]]))
    return cam.project(torch.tensor(points3d, dtype=torch.float32)[None])[0].numpy()


def test_front_facing_follows_the_camera():
    # counter-clockwise seen from +z (the viewer): front-facing; the reversed triangle is not
    tris = np.array([[0, 1, 2], [0, 2, 1]])
    points = _project([[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(front_facing(points, tris), [True, False])
    turned = _project([[0, 0, 0], [1, 0, 0], [0, 1, 0]], yaw=np.pi)  # seen from behind
    np.testing.assert_array_equal(front_facing(turned, tris), [False, True])


def test_unique_edges():
    edges = unique_edges(np.array([[0, 1, 2], [2, 1, 3]]))
    np.testing.assert_array_equal(edges, [[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]])


def test_markers_and_mesh_pixels():
    image = np.zeros((100, 100, 3), np.uint8)
    landmarks = np.array([[20.0, 30.0], [np.nan, np.nan]])
    fitted = np.array([[70.0, 30.0]])
    # a front triangle on the left half, a back-facing one on the right half
    points = np.array([[10, 90], [40, 90], [10, 60], [60, 90], [90, 90], [60, 60]], float)
    tris = np.array([[0, 1, 2], [3, 5, 4]])
    assert front_facing(points, tris).tolist() == [True, False]
    out = draw_overlay(image, landmarks=landmarks, landmarks_fitted=fitted, points=points, triangles=tris,
                       mesh_opacity=1.0)
    assert out.shape == image.shape and out.dtype == np.uint8 and not out is image
    np.testing.assert_array_equal(out[30, 20], INPUT_COLOR)
    np.testing.assert_array_equal(out[30, 70], FITTED_COLOR)
    np.testing.assert_array_equal(out[90, 25], MESH_COLOR)   # bottom edge of the front triangle
    assert out[90, 75].sum() == 0                            # back-facing triangle: not drawn
    assert out[80, 20].sum() == 0                            # wireframe, not filled
    half = draw_overlay(image, points=points, triangles=tris, mesh_opacity=0.5)
    np.testing.assert_allclose(half[90, 25], np.array(MESH_COLOR) * 0.5, atol=1)
    hidden = draw_overlay(image, points=points, triangles=tris, visible=np.array([1, 1, 0, 1, 1, 1], bool))
    assert hidden.sum() == 0  # every front edge touches the hidden vertex 2
    dots = draw_overlay(image, points=points[:3], mesh_opacity=1.0)
    np.testing.assert_array_equal(dots[90, 40], MESH_COLOR)


def test_rejects_float_image():
    with pytest.raises(ValueError, match="uint8"):
        draw_overlay(np.zeros((4, 4, 3)))


def test_vertex_normals_of_a_tent():
    vertices = np.array([[-1, 0, 0], [0, 0, 1], [1, 0, 0], [-1, 1, 0], [0, 1, 1], [1, 1, 0]], float)
    tris = np.array([[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4]])
    n = vertex_normals(vertices, tris)
    np.testing.assert_allclose(n[0], [-1, 0, 1] / np.sqrt(2), atol=1e-12)
    # ridge vertex 1 touches one left and two right triangles of equal area: weights 1 and 2
    np.testing.assert_allclose(n[1], np.array([1, 0, 3]) / np.sqrt(10), atol=1e-12)


def test_shade_mesh_follows_the_facing_angle():
    # a 40 x 40 mm square tilted by 60° about y, seen by a scaled-orthographic camera (2 px/mm)
    square = torch.tensor([[-20, -20, 0], [20, -20, 0], [20, 20, 0], [-20, 20, 0]], dtype=torch.float64)
    tris = np.array([[0, 1, 2], [0, 2, 3]])
    cam = ScaledOrthographic(torch.tensor([2.0], dtype=torch.float64),
                             torch.tensor([[0.0, np.radians(60), 0.0]], dtype=torch.float64),
                             torch.tensor([[50.0, 50.0]], dtype=torch.float64))
    screen = cam.project_with_depth(square[None])[0].numpy()
    shade, mask = shade_mesh(screen, cam.transform(square[None])[0].numpy(), tris, (100, 120))
    # the square projects to x in 50 ± 20 (cos 60° · 40 mm · 2 px/mm / 2), y in 50 ± 40
    assert mask[50, 50] and mask[15, 35] and not mask[50, 75] and not mask[5, 50]
    np.testing.assert_allclose(shade[mask], 0.25 + 0.75 * 0.5, atol=1e-5)
    assert (shade[~mask] == 0).all()
    # seen from behind: culled
    back = ScaledOrthographic(cam.scale, torch.tensor([[0.0, np.pi, 0.0]], dtype=torch.float64), cam.translation)
    screen = back.project_with_depth(square[None])[0].numpy()
    assert not shade_mesh(screen, back.transform(square[None])[0].numpy(), tris, (100, 120))[1].any()
    # a downscaled raster gives the same picture up to the edges
    small_shade, small_mask = shade_mesh(cam.project_with_depth(square[None])[0].numpy(),
                                         cam.transform(square[None])[0].numpy(), tris, (100, 120), max_side=20)
    assert (small_mask != mask).mean() < 0.03


def test_shading_is_blended_where_the_mesh_is():
    image = np.full((10, 10, 3), 100, np.uint8)
    shade = np.full((10, 10), 0.8, np.float32)
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    out = draw_overlay(image, shading=(shade, mask), mesh_opacity=0.5)
    np.testing.assert_array_equal(out[3, 3], [152, 152, 152])  # 0.5 · 100 + 0.5 · 0.8 · 255
    np.testing.assert_array_equal(out[7, 7], [100, 100, 100])
