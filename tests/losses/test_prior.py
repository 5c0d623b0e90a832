import pytest
import torch

from morphable.losses.prior import prior_loss


def test_prior_is_mean_squared_norm_and_scales_with_std():
    a = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    assert prior_loss(a).item() == pytest.approx((5 + 9) / 2)
    assert prior_loss(a, torch.tensor([1.0, 2.0])).item() == pytest.approx((2 + 9) / 2)
    with pytest.raises(ValueError):
        prior_loss(torch.zeros(3))
