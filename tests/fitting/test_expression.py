"""Bounded least squares (box QP) against scipy.optimize.lsq_linear."""
import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

from morphable.fitting.expression import box_qp, projected_newton

D = torch.float64


def problems(B, P, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, 3 * P, P, generator=g, dtype=D)
    A[:, :, 0] *= 5  # some conditioning spread
    b = torch.randn(B, 3 * P, generator=g, dtype=D) * 2
    return A, b


@pytest.mark.parametrize("P,lo,hi", [(6, 0.0, 1.0), (6, 0.0, np.inf), (20, 0.0, 1.0), (53, 0.0, 1.0),
                                     (8, -0.5, 0.5)])
def test_matches_lsq_linear(P, lo, hi):
    A, b = problems(6, P, seed=P)
    H, c = A.transpose(1, 2) @ A, (A.transpose(1, 2) @ b[..., None])[..., 0]
    x = box_qp(H, c, torch.full((P,), lo, dtype=D), torch.full((P,), hi, dtype=D))
    assert ((x >= lo - 1e-12) & (x <= hi + 1e-12)).all()
    for k in range(6):
        ref = lsq_linear(A[k].numpy(), b[k].numpy(), bounds=(lo, hi), tol=1e-12, method="bvls")
        f = lambda z: 0.5 * np.sum((A[k].numpy() @ z - b[k].numpy()) ** 2)  # noqa: E731
        assert f(x[k].numpy()) <= f(ref.x) + 1e-9 * max(1.0, f(ref.x))
        np.testing.assert_allclose(x[k].numpy(), ref.x, atol=1e-6)
    assert ((x == lo) | (x == hi)).any()  # the bounds were active somewhere: the test exercises them


def test_unbounded_is_the_linear_solution():
    A, b = problems(3, 5, seed=1)
    H, c = A.transpose(1, 2) @ A, (A.transpose(1, 2) @ b[..., None])[..., 0]
    inf = torch.full((5,), float("inf"), dtype=D)
    torch.testing.assert_close(box_qp(H, c, -inf, inf), torch.linalg.solve(H, c))


def test_mixed_bounds_per_batch():
    A, b = problems(4, 7, seed=2)
    H, c = A.transpose(1, 2) @ A, (A.transpose(1, 2) @ b[..., None])[..., 0]
    lo = torch.tensor([-np.inf] * 3 + [0.0] * 4, dtype=D).expand(4, 7).clone()
    lo[1, 3:] = -0.1
    hi = torch.tensor([np.inf] * 3 + [1.0] * 4, dtype=D).expand(4, 7)
    x = box_qp(H, c, lo, hi)
    for k in range(4):
        ref = lsq_linear(A[k].numpy(), b[k].numpy(), bounds=(lo[k].numpy(), hi[k].numpy()), tol=1e-12, method="bvls")
        np.testing.assert_allclose(x[k].numpy(), ref.x, atol=1e-6)


def bounded_problems(B=8, P=53, seed=11):
    A, b = problems(B, P, seed)
    H, c = A.transpose(1, 2) @ A, (A.transpose(1, 2) @ b[..., None])[..., 0]
    return A, b, H, c, torch.zeros(P, dtype=D), torch.ones(P, dtype=D)


def reference(A, b, lo, hi):
    return np.stack([lsq_linear(A[k].numpy(), b[k].numpy(), bounds=(lo.numpy(), hi.numpy()), tol=1e-12,
                                method="bvls").x for k in range(A.shape[0])])


def test_warm_start_and_fallback_reach_the_same_minimiser():
    """Warm-started, and with the active-set phase cut short (projected Newton finishes), the same KKT point."""
    A, b, H, c, lo, hi = bounded_problems()
    ref = reference(A, b, lo, hi)
    np.testing.assert_allclose(box_qp(H, c, lo, hi).numpy(), ref, atol=1e-6)
    near = torch.as_tensor(ref).clamp(0, 1) + 0.05 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0), dtype=D)
    np.testing.assert_allclose(box_qp(H, c, lo, hi, x0=near.clamp(0, 1)).numpy(), ref, atol=1e-6)
    np.testing.assert_allclose(box_qp(H, c, lo, hi, max_iter=1).numpy(), ref, atol=1e-6)


def test_projected_newton_matches_lsq_linear():
    A, b, H, c, lo, hi = bounded_problems(B=4, P=20, seed=12)
    x = projected_newton(H, c, lo, hi, torch.zeros_like(c))
    np.testing.assert_allclose(x.numpy(), reference(A, b, lo, hi), atol=1e-6)
