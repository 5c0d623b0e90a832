import numpy as np
import pytest
import torch

from morphable.geometry.laplacian import cotangent_laplacian, to_torch_sparse, uniform_laplacian
from morphable.losses.smoothness import laplacian_loss


def test_laplacian_loss_against_dense_and_constant_is_free():
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    v = np.array([[0, 0, 1.0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    for L in (uniform_laplacian(f, 5), cotangent_laplacian(v, f)):
        Lt = to_torch_sparse(L, torch.float64)
        x = torch.randn(2, 5, 3, dtype=torch.float64)
        dense = torch.as_tensor(L.toarray())
        ref2 = sum(((dense @ x[b]) ** 2).sum() for b in range(2)) / 2
        ref1 = sum((dense @ x[b]).abs().sum() for b in range(2)) / 2
        assert laplacian_loss(x, Lt).item() == pytest.approx(ref2.item())
        assert laplacian_loss(x[..., 0], Lt, p=1).item() == pytest.approx((sum((dense @ x[b, :, 0]).abs().sum() for b in range(2)) / 2).item())
        assert laplacian_loss(x, Lt, p=1).item() == pytest.approx(ref1.item())
        assert laplacian_loss(torch.ones(1, 5, 3, dtype=torch.float64), Lt).item() == pytest.approx(0, abs=1e-20)
    with pytest.raises(ValueError):
        laplacian_loss(x, Lt, p=3)
