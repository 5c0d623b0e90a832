"""Per-vertex uncertainty: fast path vs the per-vertex reference, and a Monte-Carlo check."""
import torch

from morphable.fitting.uncertainty import vertex_std, vertex_std_reference

D = torch.float64


def test_fast_matches_reference():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(40, 3, 6, generator=g, dtype=D)
    A = torch.randn(2, 6, 6, generator=g, dtype=D)
    cov = A @ A.transpose(1, 2) + 0.1 * torch.eye(6, dtype=D)
    torch.testing.assert_close(vertex_std(basis, cov), vertex_std_reference(basis, cov))
    # a covariance over fewer components than the basis uses the leading ones
    torch.testing.assert_close(vertex_std(basis, cov[:, :4, :4]), vertex_std_reference(basis[..., :4], cov[:, :4, :4]))


def test_monte_carlo():
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(10, 3, 4, generator=g, dtype=D)
    A = torch.randn(1, 4, 4, generator=g, dtype=D)
    cov = A @ A.transpose(1, 2)
    samples = torch.randn(200000, 4, generator=g, dtype=D) @ torch.linalg.cholesky(cov[0] + 1e-12 * torch.eye(4, dtype=D)).T
    X = torch.einsum("vck,nk->nvc", basis, samples)
    rms = X.square().sum(-1).mean(0).sqrt()
    torch.testing.assert_close(vertex_std(basis, cov + 1e-12 * torch.eye(4, dtype=D))[0], rms, rtol=1e-2, atol=0)
