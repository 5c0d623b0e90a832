"""Shape error after similarity alignment (``geometry.align.aligned_error``): zero for similar copies, unchanged
by a similarity of the prediction."""
import math

import torch

from morphable.geometry.align import aligned_distances, aligned_error
from morphable.geometry.rotation import axis_angle_to_matrix


def test_similar_copies_have_zero_error_and_the_error_ignores_pose_and_size():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(2, 50, 3, generator=g, dtype=torch.float64) * 30
    R = axis_angle_to_matrix(torch.tensor([0.3, -1.1, 0.4], dtype=torch.float64))
    copy = 1.7 * truth @ R.T + torch.tensor([5.0, -2.0, 40.0], dtype=torch.float64)
    assert aligned_error(copy, truth).abs().max() < 1e-9
    bent = truth.clone()
    bent[:, :10, 2] += 3.0  # a change no similarity undoes
    e = aligned_error(bent, truth)
    assert (e > 0.1).all() and (e < 3.0).all()
    moved = 0.5 * bent @ R.T - 7.0
    assert torch.allclose(aligned_error(moved, truth), e, atol=1e-9)
    d = aligned_distances(bent[0], truth[0])
    assert d.shape == (50,) and math.isclose(float(d.mean()), float(e[0]), rel_tol=1e-12)
