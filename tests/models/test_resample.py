"""Resampling a model on a UV grid: interpolated bases reproduce interpolated instances exactly."""
import numpy as np
import torch

from morphable.models.base import MorphableModel
from morphable.models.resample import model_uv, resample_model, uv_grid


def bumpy_model():
    n = 9
    xs, ys = np.meshgrid(np.linspace(-40, 40, n), np.linspace(-50, 50, n))
    v = np.stack([xs.ravel(), ys.ravel(), 20 * np.cos(xs.ravel() / 40) * np.cos(ys.ravel() / 50)], 1)
    f = []
    for r in range(n - 1):
        for c in range(n - 1):
            a, b, d, e = r * n + c, r * n + c + 1, (r + 1) * n + c, (r + 1) * n + c + 1
            f += [[a, b, e], [a, e, d]] if c < (n - 1) // 2 else [[a, b, d], [b, e, d]]
    basis = np.random.default_rng(0).normal(size=(n * n, 3, 4))
    return MorphableModel(name="bumpy", mean=v, triangles=np.array(f), identity_basis=basis, dtype=torch.float64)


def test_resampled_model_equals_grid_points_of_instances():
    model = bumpy_model()
    grid = uv_grid(model_uv(model), model.triangles, (16, 12))
    assert grid.valid.all()  # the flattening covers the whole square
    resampled = resample_model(model, grid)
    alpha = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(resampled(identity=alpha).vertices, grid.points(model(identity=alpha).vertices))
    assert resampled.n_vertices == 16 * 12 and resampled.triangles.shape == (2 * 15 * 11, 3)


def test_grid_rows_run_from_top_of_face_to_bottom_and_columns_along_x():
    model = bumpy_model()
    grid = uv_grid(model_uv(model), model.triangles, (10, 10))
    pts = grid.points(model.mean[None])[0].reshape(10, 10, 3)
    assert (pts[:-1, :, 1] > pts[1:, :, 1]).all()  # y decreases down the rows
    assert (pts[:, :-1, 0] < pts[:, 1:, 0]).all()  # x increases along the columns
    # symmetric flattening: column j and column W-1-j are mirror images (x -> -x)
    torch.testing.assert_close(pts[:, :, 0], -pts.flip(1)[:, :, 0], atol=1e-9, rtol=0)


def test_sfm_flattening_with_its_shipped_symmetry_list():
    """``model_uv`` on the SFM uses ``sfm_reference_symmetry.txt`` (which maps a few vertices two-to-one: only
    mutual pairs are kept): those pairs mirror exactly, no triangle flips, and a 64² grid covers the square."""
    import morphable
    from morphable.geometry.uv import count_flips, symmetry_pairs
    from tests.conftest import data_file

    data_file("eos/share/sfm_shape_3448.bin")
    model = morphable.load_model("sfm")
    uv = model_uv(model).numpy()
    pairs = symmetry_pairs(model.symmetry, model.triangles).numpy()
    assert len(pairs) > 0.95 * model.n_vertices and np.isfinite(uv).all()
    assert np.abs(uv[pairs[:, 0], 0] + uv[pairs[:, 1], 0] - 1).max() < 1e-6
    assert np.abs(uv[pairs[:, 0], 1] - uv[pairs[:, 1], 1]).max() < 1e-6
    assert count_flips(uv, model.triangles) == 0 and uv.min() >= 0 and uv.max() <= 1
    assert uv_grid(torch.as_tensor(uv), model.triangles, (64, 64)).valid.float().mean() > 0.99
