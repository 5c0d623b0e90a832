import pytest
import torch

from morphable.losses.consistency import multiview_texture_loss


def test_multiview_loss_against_loops_and_identical_views():
    g = torch.Generator().manual_seed(1)
    t, m = torch.rand(3, 2, 2, 3, generator=g), torch.rand(3, 2, 2, generator=g)
    num = den = 0.0
    for i in range(3):
        for j in range(i + 1, 3):
            w = m[i] * m[j]
            num += (w * ((t[i] - t[j]) ** 2).sum(-1)).sum()
            den += w.sum() * 3
    assert multiview_texture_loss(t, m).item() == pytest.approx(float(num / den), rel=1e-6)
    assert multiview_texture_loss(t[[0, 0]], m[[0, 1]]).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        multiview_texture_loss(t[:1], m[:1])
