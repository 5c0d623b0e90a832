import numpy as np

from morphable.viz.comparison import energy_curve, side_by_side


def test_side_by_side_panels():
    photo = np.full((4, 5, 3), 0.5)
    render = photo.copy()
    render[1, 2] = 0.75
    alpha = np.zeros((4, 5))
    alpha[1, 2] = 1
    out = side_by_side(photo, render, alpha, gain=2.0)
    assert out.shape == (4, 15, 3) and out.dtype == np.uint8
    assert (out[:, :5] == 128).all()                      # the photo
    assert out[1, 7].tolist() == [191, 191, 191]          # the render
    assert out[1, 12].tolist() == [128, 128, 128] and out[0, 10:].max() == 0  # 2 × |0.25| where rendered


def test_energy_curve_draws_a_falling_line():
    img = energy_curve([1.0, 0.5, 0.25, 0.125], size=(200, 100))
    red = (img[..., 0] > 150) & (img[..., 1] < 100)
    rows = np.nonzero(red)[0]
    cols = np.nonzero(red)[1]
    assert red.any()
    assert rows[cols.argmin()] < rows[cols.argmax()]  # starts high (top), ends low (bottom)
