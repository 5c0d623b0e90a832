import math

import pytest
import torch

from morphable.losses.landmark import LandmarkLoss, landmark_loss


def test_values_against_loops():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 2, generator=g), torch.randn(3, 5, 2, generator=g)
    target[1, 2] = float("nan")
    w = torch.rand(5, generator=g)
    num = den = num2 = 0.0
    for b in range(3):
        for k in range(5):
            if b == 1 and k == 2:
                continue
            d = math.dist(pred[b, k].tolist(), target[b, k].tolist())
            num, num2, den = num + w[k] * d, num2 + w[k] * d * d, den + w[k]
    assert landmark_loss(pred, target, w).item() == pytest.approx(float(num / den), rel=1e-6)
    assert LandmarkLoss(w, squared=True)(pred, target).item() == pytest.approx(float(num2 / den), rel=1e-6)


def test_gradcheck_and_shape_error():
    pred = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 4, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: landmark_loss(p, target), (pred,))
    with pytest.raises(ValueError, match="must both be"):
        landmark_loss(pred, target[:, :3])
