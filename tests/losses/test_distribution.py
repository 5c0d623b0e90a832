"""Genova's batch-distribution loss: hand-computed values, its minimum, and gradients."""
import math

import pytest
import torch

from morphable.losses.distribution import batch_distribution_loss


def test_hand_computed_value():
    # coefficient 0: values 1, 3 -> mean 2, std sqrt(2); coefficient 1: values -1, 1 -> mean 0, std sqrt(2)
    x = torch.tensor([[1.0, -1.0], [3.0, 1.0]])
    expected = (4 + 0) / 2 + 2 * (math.sqrt(2) - 1) ** 2 / 2
    assert float(batch_distribution_loss(x)) == pytest.approx(expected, rel=1e-6)


def test_zero_at_standardised_batch_and_small_for_normal_samples():
    x = torch.randn(4000, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (x - x.mean(0)) / x.std(0)
    assert float(batch_distribution_loss(z)) < 1e-20
    assert float(batch_distribution_loss(x)) < 2e-3
    assert float(batch_distribution_loss(2 * x + 1)) > 1.5  # mean 1 and std 2 are penalised


def test_gradcheck_and_errors():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(batch_distribution_loss, (x,))
    with pytest.raises(ValueError, match="B >= 2"):
        batch_distribution_loss(torch.zeros(1, 3))
