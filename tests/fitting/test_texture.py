"""Texture extraction on a synthetic textured model: a symmetric "roof" with a floating occluder flap.

The photo is rendered independently of the extractor: rasterise the posed mesh in the image, interpolate
its UVs per pixel and evaluate a known analytic texture there. Extraction must give that texture back
on visible texels, mask the texels hidden behind the flap or facing away, and fill the far half of the
roof from its mirror image.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from morphable.fitting.texture import (depth_buffer, extract_texture, model_texel_map, textured_faces,
                                       textured_triangles)
from morphable.geometry.camera import Perspective, ScaledOrthographic
from morphable.models.base import MorphableModel
from morphable.render.rasterize import interpolate, rasterize

N, M = 21, 17          # roof grid: N columns in x (odd: a ridge column at x = 0), M rows in y
ROOF_U = 0.7           # the roof occupies u in [0, 0.7], the flap u in [0.75, 1]
SIZE = 128             # texture size


def _truth(uv: np.ndarray) -> np.ndarray:
    """The known texture: smooth, and mirror-symmetric about the roof's ridge (u = 0.35)."""
    u, v = uv[..., 0], uv[..., 1]
    d = np.abs(u - ROOF_U / 2)
    return np.stack([0.5 + 0.35 * np.sin(2 * np.pi * 1.5 * v), 0.5 + 0.35 * np.cos(2 * np.pi * 2 * d),
                     0.25 + 0.5 * v * (u < 0.72) + 0.3 * (u >= 0.72)], -1)


def _model() -> MorphableModel:
    xs, ys = np.linspace(-50, 50, N), np.linspace(-40, 40, M)
    X, Y = np.meshgrid(xs, ys, indexing="ij")                     # (N, M)
    roof = np.stack([X, Y, 30 - 0.6 * np.abs(X)], -1).reshape(-1, 3)
    roof_uv = np.stack([(X + 50) / 100 * ROOF_U, (Y + 40) / 80], -1).reshape(-1, 2)
    flap = np.array([[-15, -12, 60], [15, -12, 60], [15, 12, 60], [-15, 12, 60]], float)
    flap_uv = np.array([[0.75, 0.2], [1.0, 0.2], [1.0, 0.8], [0.75, 0.8]])
    vid = np.arange(N * M).reshape(N, M)
    tris = []
    for i in range(N - 1):
        for j in range(M - 1):  # counter-clockwise seen from +z
            a, b, c, d = vid[i, j], vid[i + 1, j], vid[i + 1, j + 1], vid[i, j + 1]
            tris += [[a, b, c], [a, c, d]]
    f0 = N * M
    tris += [[f0, f0 + 1, f0 + 2], [f0, f0 + 2, f0 + 3]]
    symmetry = np.concatenate([vid[::-1].reshape(-1), [f0 + 1, f0, f0 + 3, f0 + 2]])
    V = len(roof) + 4
    return MorphableModel(name="roof", mean=np.concatenate([roof, flap]), triangles=np.array(tris),
                          identity_basis=np.zeros((V, 3, 1)), uv=np.concatenate([roof_uv, flap_uv]),
                          symmetry=symmetry, dtype=torch.float64)


def _photo(model, camera, size=(300, 360)):
    """Render the analytic texture through the camera (background mid-grey)."""
    screen = camera.project_with_depth(model.mean[None])
    frags = rasterize(screen, model.triangles, size, perspective=isinstance(camera, Perspective))
    uv = interpolate(model.uv[None], frags, model.triangles)[0].numpy()
    image = np.where((frags.triangle_id[0] >= 0).numpy()[..., None], _truth(uv), 0.5)
    return (image * 255).round().astype(np.uint8)


def _texel_uv():
    j, i = np.meshgrid(np.arange(SIZE), np.arange(SIZE))
    return np.stack([(j + 0.5) / SIZE, 1 - (i + 0.5) / SIZE], -1)


def _ortho(yaw_deg):
    return ScaledOrthographic(torch.tensor([2.5], dtype=torch.float64),
                              torch.tensor([[0.0, np.radians(yaw_deg), 0.0]], dtype=torch.float64),
                              torch.tensor([[180.0, 150.0]], dtype=torch.float64))


def _interior(mask, margin=2):
    """Texels at least ``margin`` texels away from the mask's boundary (no silhouette blending)."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, iterations=margin)


def test_visible_texels_reproduce_the_texture_and_the_flap_hides_what_is_behind_it():
    model = _model()
    camera = _ortho(15.0)
    photo = _photo(model, camera)
    texel_map = model_texel_map(model, SIZE)
    out = extract_texture(model, model.mean, camera, photo, texel_map=texel_map, fill=False)
    truth = _truth(_texel_uv())
    uv = _texel_uv()

    assert out.texture.shape == (SIZE, SIZE, 3) and out.texture.dtype == np.uint8
    np.testing.assert_array_equal(out.covered, (texel_map.triangle_id >= 0).numpy())
    # covered = the roof rectangle and the flap rectangle in UV space (up to the boundary texels)
    inside_roof = (uv[..., 0] < ROOF_U - 1 / SIZE) & (uv[..., 1] > 1 / SIZE) & (uv[..., 1] < 1 - 1 / SIZE)
    assert out.covered[inside_roof].all()

    # the flap is in front of everything and faces the camera: fully visible
    flap = (uv[..., 0] > 0.76) & (uv[..., 0] < 0.99) & (uv[..., 1] > 0.21) & (uv[..., 1] < 0.79)
    assert out.visible[flap].all()

    # roof points whose projection falls inside the flap's projection are occluded, others are visible
    xs = uv[..., 0] / ROOF_U * 100 - 50
    ys = uv[..., 1] * 80 - 40
    pts = torch.tensor(np.stack([xs, ys, 30 - 0.6 * np.abs(xs)], -1).reshape(1, -1, 3))
    proj = camera.project(pts)[0].numpy().reshape(SIZE, SIZE, 2)
    corners = camera.project(model.mean[None, -4:])[0].numpy()
    lo, hi = corners.min(0), corners.max(0)  # the flap projects to an axis-aligned box (yaw only)
    margin = 2.5
    under = ((proj > lo + margin) & (proj < hi - margin)).all(-1) & inside_roof
    clear = (((proj < lo - margin) | (proj > hi + margin)).any(-1)) & _interior(inside_roof)
    assert under.sum() > 100 and clear.sum() > 3000
    assert not out.visible[under].any()
    assert out.visible[clear].all()

    # visible texels hold the known texture (away from silhouettes: bilinear mixes in the background)
    good = _interior(out.visible)
    error = np.abs(out.texture[good] / 255.0 - truth[good])
    assert error.mean() < 0.01 and np.quantile(error, 0.99) < 0.04

    # a z-buffer 5x coarser (with its slope-aware slack) decides the same
    coarse = extract_texture(model, model.mean, camera, photo, texel_map=texel_map, fill=False, zbuffer_size=50)
    assert (coarse.visible != out.visible)[out.covered].mean() < 0.03
    assert not coarse.visible[under].any() and coarse.visible[clear].mean() > 0.97


def test_far_side_is_masked_and_mirror_filled():
    model = _model()
    camera = _ortho(70.0)  # turns the right half (x > 0, normal 31° to +x) to 101°: facing away
    photo = _photo(model, camera)
    uv = _texel_uv()
    truth = _truth(uv)
    out = extract_texture(model, model.mean, camera, photo, size=SIZE, fill=False)
    roof = _interior(out.covered & (uv[..., 0] < ROOF_U))
    right = roof & (uv[..., 0] > ROOF_U / 2 + 2 / SIZE)
    left = roof & (uv[..., 0] < ROOF_U / 2 - 2 / SIZE)
    assert not out.visible[right].any()
    assert out.visible[left].mean() > 0.95
    assert out.mirrored[right].mean() > 0.95 and not out.mirrored[out.visible].any()
    good = _interior(out.mirrored) & right
    error = np.abs(out.texture[good] / 255.0 - truth[good])
    assert error.mean() < 0.015

    no_mirror = extract_texture(model, model.mean, camera, photo, size=SIZE, mirror=False, fill=False)
    assert not no_mirror.mirrored.any() and (no_mirror.texture[right] == 0).all()
    filled = extract_texture(model, model.mean, camera, photo, size=SIZE, mirror=False, fill=True)
    assert (filled.texture[right] > 0).any(-1).all()  # nearest-fill leaves no black texel


def test_perspective_camera():
    model = _model()
    camera = Perspective(torch.tensor([900.0], dtype=torch.float64),
                         torch.tensor([[180.0, 150.0]], dtype=torch.float64),
                         torch.tensor([[0.0, np.radians(20), 0.0]], dtype=torch.float64),
                         torch.tensor([[0.0, 0.0, -400.0]], dtype=torch.float64))
    photo = _photo(model, camera)
    out = extract_texture(model, model.mean, camera, photo, size=SIZE, fill=False)
    truth = _truth(_texel_uv())
    good = _interior(out.visible)
    assert good.sum() > 0.5 * out.covered.sum()
    error = np.abs(out.texture[good] / 255.0 - truth[good])
    assert error.mean() < 0.01


def test_bad_inputs():
    model = _model()
    with pytest.raises(ValueError, match="uint8"):
        extract_texture(model, model.mean, _ortho(0), np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match="one mesh"):
        extract_texture(model, model.mean.expand(2, -1, -1), _ortho(0), np.zeros((10, 10, 3), np.uint8))


def test_textured_faces_keep_the_unit_tile_and_the_face_region():
    mean = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [2, 0, 0]], float)
    uv = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9], [1.5, 0.5]])
    tris = np.array([[0, 1, 2], [1, 3, 2], [1, 4, 3]])
    model = MorphableModel(name="t", mean=mean, triangles=tris, identity_basis=np.zeros((5, 3, 1)), uv=uv)
    assert textured_triangles(model).tolist() == [True, True, False]  # UV outside the unit tile
    model.set_region("face", [0, 1, 2, 4])
    assert textured_triangles(model).tolist() == [True, False, False]  # vertex 3 is not in the face
    # polygons (a quad and a triangle), UV ids given separately
    assert textured_faces(model, [[0, 1, 3, 2], [0, 1, 2]], [[0, 1, 3, 2], [0, 1, 2]]).tolist() == [False, True]
    texel_map = model_texel_map(model, 16)
    assert set(texel_map.triangle_id.unique().tolist()) == {-1, 0}


def test_downscaled_depth_buffer_agrees_with_full_resolution():
    model = _model()
    camera = _ortho(25.0)
    screen = camera.project_with_depth(model.mean[None])[0]
    full = depth_buffer(screen, model.triangles, (300, 360))
    small = depth_buffer(screen, model.triangles, (300, 360), max_side=60)
    assert full.factor == 1.0 and small.factor < 0.3
    assert full.depth.shape[1] > 200 and max(small.depth.shape) <= 61
    # interior roof vertices not under the flap: the full buffer holds their depth; so does the coarse one
    # up to its cell size (60 cells for ~250 px: 4 px = 2 mm, times the roof's depth slope)
    roof = screen[: N * M].reshape(N, M, 3)[1:-1, 1:-1].reshape(-1, 3)
    a, b = full.lookup(roof[:, :2]), small.lookup(roof[:, :2])
    seen = (a - roof[:, 2]).abs() < 1.0  # nearest pixel centre: up to 0.7 px away on a sloped roof
    assert seen.float().mean() > 0.8
    assert ((b - roof[:, 2]).abs()[seen] < 5).float().mean() > 0.95
    assert full.unoccluded(roof, (300, 360))[seen].all()
    hidden = full.unoccluded(screen + screen.new_tensor([0, 0, 50.0]), (300, 360))  # pushed behind
    assert not hidden.any()


def test_grazing_texels_prefer_a_square_mirror_view():
    model = _model()
    camera = _ortho(40.0)  # right half at 71° (cosine 0.33: grazing), left half at 9°
    photo = _photo(model, camera)
    uv = _texel_uv()
    roof = _interior(model_texel_map(model, SIZE).triangle_id.numpy() >= 0) & (uv[..., 0] < ROOF_U)
    right = roof & (uv[..., 0] > ROOF_U / 2 + 2 / SIZE)
    out = extract_texture(model, model.mean, camera, photo, size=SIZE, fill=False)
    assert out.mirrored[right].mean() > 0.95 and not out.visible[right].any()
    kept = extract_texture(model, model.mean, camera, photo, size=SIZE, fill=False, good_cosine=0.0)
    # without the preference the grazing half is sampled directly (except where the flap hides it)
    assert kept.visible[right].mean() > 0.7 and (kept.visible | kept.mirrored)[right].mean() > 0.95
    truth = _truth(uv)
    for result, mask in ((out, out.mirrored), (kept, kept.visible)):
        good = _interior(mask) & right
        assert np.abs(result.texture[good] / 255.0 - truth[good]).mean() < 0.02
