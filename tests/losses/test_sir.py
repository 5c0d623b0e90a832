"""SIR loss terms on hand-built inputs with answers worked out by hand."""
import math

import pytest
import torch

from morphable.losses.sir import (
    heteroscedastic_loss,
    inter_class_separation,
    kl_to_standard_normal,
    update_centers,
    weighted_center_loss,
)


def test_inter_class_separation_hinges_on_cross_identity_pairs():
    # a = (0, 0) and b = (1, 0) are person 0, c = (0, 2) person 1: d(a, c) = 4/2 = 2, d(b, c) = 5/2 = 2.5;
    # margin 3 -> hinges 1 and 0.5, each counted for both orders; the same-person pair (a, b) is ignored
    shapes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    assert float(inter_class_separation(shapes, labels, margin=3.0)) == pytest.approx(0.75)
    assert float(inter_class_separation(shapes, labels, margin=2.0)) == pytest.approx(0.0)
    assert float(inter_class_separation(shapes, torch.zeros(3, dtype=torch.long))) == 0.0


def test_inter_class_separation_pushes_apart():
    shapes = torch.tensor([[0.0, 0.0], [0.5, 0.0]], requires_grad=True)
    inter_class_separation(shapes, torch.tensor([0, 1]), margin=1.0).backward()
    # moving the two shapes apart along x lowers the loss: gradient on the first is +x, the second -x
    assert shapes.grad[0, 0] > 0 and shapes.grad[1, 0] < 0


def test_weighted_center_loss_weights_and_no_centre_gradient():
    shapes = torch.tensor([[1.0, 1.0], [3.0, 3.0]], requires_grad=True)
    centers = torch.zeros(2, 2, requires_grad=True)
    loss = weighted_center_loss(shapes, centers, torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))
    # d = 1 and 9, weights 1 and 3: (1 + 27) / 4
    assert loss.item() == pytest.approx(7.0)
    loss.backward()
    assert centers.grad is None
    # d/dα_1 of 3 · ‖α_1‖²/2 / 4 = 3 α_1 / 4
    assert torch.allclose(shapes.grad[1], torch.tensor([2.25, 2.25]))


def test_update_centers_moving_average():
    centers = torch.tensor([[0.0, 0.0], [5.0, 5.0]])
    shapes = torch.tensor([[2.0, 0.0], [4.0, 0.0]])
    update_centers(centers, shapes, torch.tensor([0, 0]), rate=1.0)
    # c -= (Σ (c − α)) / (1 + n) = -(-6, 0) / 3
    assert torch.allclose(centers, torch.tensor([[2.0, 0.0], [5.0, 5.0]]))
    c = torch.zeros(1, 1)
    update_centers(c, torch.tensor([[4.0], [1.0]]), torch.tensor([0, 0]), torch.tensor([3.0, 0.0]), rate=0.5)
    # weight 3 on 4, 0 on 1: c -= 0.5 · 3 (0 − 4) / (1 + 3) = -1.5
    assert float(c) == pytest.approx(1.5)


def test_kl_to_standard_normal_known_values():
    # every coefficient with batch mean 0 and (biased) variance 1: KL = 0
    assert float(kl_to_standard_normal(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))) == pytest.approx(0.0, abs=1e-7)
    # one coefficient, values 2 and 4: μ = 3, σ² = 1 -> ½ (1 + 9 − 1 − 0) = 4.5
    assert float(kl_to_standard_normal(torch.tensor([[2.0], [4.0]]))) == pytest.approx(4.5)
    # values ±0.5: μ = 0, σ² = 0.25 -> ½ (0.25 − 1 − ln 0.25)
    expected = 0.5 * (0.25 - 1 - math.log(0.25))
    assert float(kl_to_standard_normal(torch.tensor([[0.5], [-0.5]]))) == pytest.approx(expected)


def test_heteroscedastic_minimum_at_sigma_equal_residual():
    residual = torch.tensor([2.0, 0.5])
    log_sigma = torch.log(residual).clone().requires_grad_(True)
    loss = heteroscedastic_loss(residual, log_sigma)
    assert loss.item() == pytest.approx(1 + float(torch.log(residual).mean()))
    loss.backward()
    assert torch.allclose(log_sigma.grad, torch.zeros(2), atol=1e-7)
    # a mask leaves out the second element
    w = torch.tensor([1.0, 0.0])
    assert float(heteroscedastic_loss(residual, torch.zeros(2), w)) == pytest.approx(2.0)
