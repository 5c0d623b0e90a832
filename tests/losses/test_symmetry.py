import pytest
import torch

from morphable.losses.symmetry import symmetry_loss, vertex_symmetry_loss


def test_symmetric_texture_has_zero_loss_and_loss_matches_loops():
    g = torch.Generator().manual_seed(0)
    half = torch.rand(2, 4, 3, 3, generator=g)
    sym = torch.cat([half, half.flip(2)], 2)  # (2, 4, 6, 3), mirror-symmetric in u
    assert symmetry_loss(sym).item() == pytest.approx(0.0, abs=1e-12)
    tex, mask = torch.rand(1, 3, 4, 2, generator=g), (torch.rand(1, 3, 4, generator=g) > 0.3).float()
    num = den = 0.0
    for r in range(3):
        for c in range(4):
            w = mask[0, r, c] * mask[0, r, 3 - c]
            num += w * ((tex[0, r, c] - tex[0, r, 3 - c]) ** 2).sum()
            den += w * 2
    assert symmetry_loss(tex, mask).item() == pytest.approx(float(num / den), rel=1e-6)


def test_vertex_symmetry():
    values = torch.tensor([[[1.0], [3.0], [5.0]]])
    mirror = torch.tensor([1, 0, -1])
    assert vertex_symmetry_loss(values, mirror).item() == pytest.approx(4.0)
    x = torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: vertex_symmetry_loss(v, mirror), (x,))


def test_vertex_symmetry_batched_and_weighted_matches_loops():
    g = torch.Generator().manual_seed(1)
    B, V, C = 3, 7, 2
    values = torch.randn(B, V, C, generator=g, dtype=torch.float64, requires_grad=True)
    mirror = torch.tensor([4, -1, 3, 2, 0, 5, -1])  # a pair, a self-mirrored vertex, two unpaired
    weights = torch.rand(B, V, generator=g, dtype=torch.float64)
    num = den = 0.0
    for b in range(B):
        for i in range(V):
            if mirror[i] >= 0:
                num += weights[b, i] * ((values[b, i] - values[b, mirror[i]]) ** 2).sum()
                den += weights[b, i] * C
    with torch.no_grad():
        assert vertex_symmetry_loss(values, mirror, weights).item() == pytest.approx(float(num / den), rel=1e-12)
        plain = sum(((values[b, i] - values[b, mirror[i]]) ** 2).sum() for b in range(B) for i in range(V) if mirror[i] >= 0)
        assert vertex_symmetry_loss(values, mirror).item() == pytest.approx(float(plain / (B * 5 * C)), rel=1e-12)
    assert torch.autograd.gradcheck(lambda v: vertex_symmetry_loss(v, mirror, weights), (values,))
