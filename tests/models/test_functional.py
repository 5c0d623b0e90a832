"""The model's blend in its two layouts, and the model's cached component rows."""
import torch

from morphable.models.base import MorphableModel
from morphable.models.functional import blend, blend_rows


def _model(V: int = 40, K: int = 7, seed: int = 0) -> MorphableModel:
    g = torch.Generator().manual_seed(seed)
    return MorphableModel(mean=torch.randn(V, 3, generator=g), triangles=torch.tensor([[0, 1, 2], [1, 3, 2]]),
                          identity_basis=torch.randn(V, 3, K, generator=g),
                          expression_basis=torch.randn(V, 3, 4, generator=g), expression_kind="pca", name="toy")


def test_blend_rows_equals_blend_for_leading_components_with_gradients():
    g = torch.Generator().manual_seed(1)
    basis = torch.randn(30, 3, 9, dtype=torch.float64, generator=g)
    coeffs = torch.randn(2, 5, dtype=torch.float64, generator=g, requires_grad=True)
    a = blend(coeffs, basis[..., :5])
    b = blend_rows(coeffs, basis.permute(2, 0, 1).contiguous())
    assert b.shape == (2, 30, 3) and torch.allclose(a, b, atol=1e-12)
    w = torch.randn(2, 30, 3, dtype=torch.float64, generator=g)
    (ga,) = torch.autograd.grad((a * w).sum(), coeffs)
    (gb,) = torch.autograd.grad((b * w).sum(), coeffs)
    assert torch.allclose(ga, gb, atol=1e-12)


def test_model_rows_follow_the_basis_buffer():
    """The cached rows are remade when the basis is edited in place or cast, and a basis that requires grad is
    used directly (its gradient flows)."""
    model = _model()
    c = torch.randn(3, 5)
    expected = model.mean + blend(c, model.identity_basis[..., :5])
    assert torch.allclose(model(identity=c).vertices, expected, atol=1e-5)
    model.identity_basis[:, :, 0] += 1.0  # in place: version bump
    expected = model.mean + blend(c, model.identity_basis[..., :5])
    assert torch.allclose(model(identity=c).vertices, expected, atol=1e-5)
    model = model.double()
    out = model(identity=c.double(), expression=torch.randn(3, 2, dtype=torch.float64)).vertices
    assert out.dtype == torch.float64
    model.identity_basis.requires_grad_(True)
    model(identity=c.double()).vertices.sum().backward()
    assert model.identity_basis.grad is not None and model.identity_basis.grad.abs().sum() > 0
