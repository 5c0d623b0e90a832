import numpy as np
import pytest
import torch

from morphable.geometry.laplacian import SparseOperator, cotangent_laplacian, uniform_laplacian
from morphable.losses.smoothness import laplacian_loss


def test_laplacian_loss_against_dense_and_constant_is_free():
    f = np.array([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    v = np.array([[0, 0, 1.0], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    for L in (uniform_laplacian(f, 5), cotangent_laplacian(v, f)):
        Lt = SparseOperator(L, torch.float64)
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


def test_sparse_operator_gradient_is_the_transpose():
    L = uniform_laplacian(np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1]]), 4)  # not symmetric (row-normalised)
    op = SparseOperator(L, torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(op @ x, op.dense() @ x)
    assert torch.autograd.gradcheck(lambda v: op @ v, (x,))
