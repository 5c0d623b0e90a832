import pytest
import torch

from morphable.losses.consistency import multiview_texture_loss, ring_loss


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


def test_ring_loss_on_hand_built_rings():
    same_far_other = torch.tensor([[[0.0], [1.0], [3.0]]])  # ‖βj−βk‖² = 1; ‖βj−βR‖² = 9, 4: both hinges closed
    assert ring_loss(same_far_other).item() == 0.0
    close_other = torch.tensor([[[0.0], [1.0], [1.2]]])  # hinges 1 + 0.5 − 1.44 = 0.06 and 1 + 0.5 − 0.04 = 1.46
    assert ring_loss(close_other).item() == pytest.approx((0.06 + 1.46) / 2, rel=1e-5)
    assert ring_loss(close_other, margin=0.0).item() == pytest.approx(0.96 / 2, rel=1e-5)
    # two rings average; identical same-person shapes and a far other person give zero
    both = torch.cat([same_far_other, close_other])
    assert ring_loss(both).item() == pytest.approx(0.38, rel=1e-5)
    assert ring_loss(torch.tensor([[[1.0, 2.0]] * 5 + [[9.0, 9.0]]])).item() == 0.0
    with pytest.raises(ValueError):
        ring_loss(torch.zeros(2, 2, 3))


def test_ring_loss_gradient_against_finite_differences():
    g = torch.Generator().manual_seed(3)
    shapes = (0.3 * torch.randn(2, 6, 4, generator=g, dtype=torch.float64)).requires_grad_()
    assert ring_loss(shapes) > 0  # some hinges open, so the check sees their gradients
    assert torch.autograd.gradcheck(ring_loss, (shapes,))
