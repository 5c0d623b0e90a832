"""ShapeWarp: off-model face shapes and the model coefficients that best explain them."""
import numpy as np
import pytest
import torch

from morphable.train.synthetic import ShapeWarp
from tests.fitting._synthetic import real_model


@pytest.fixture(scope="module")
def ict():
    return real_model("ict")


@pytest.fixture(scope="module")
def warp(ict):
    return ShapeWarp(ict)


def test_fields_are_smooth_symmetric_bounded_and_seeded(ict, warp):
    d = warp.displacement(3, torch.Generator().manual_seed(1), 2.0)
    again = warp.displacement(3, torch.Generator().manual_seed(1), 2.0)
    assert d.shape == (3, ict.n_vertices, 3) and torch.equal(d, again)
    assert float(d.norm(dim=-1).max()) <= 5 * 2.0 + 1e-9       # 5 waves of amplitude ≤ 2 mm
    assert float(d.norm(dim=-1).mean()) > 0.3                  # not a vanishing field
    # pairs that mirror each other (a few vertices' mirrors are not mutual: approximately symmetric there)
    sym = ict.symmetry
    paired = ((sym >= 0) & (sym[sym.clamp_min(0)] == torch.arange(len(sym)))).nonzero().squeeze(1)
    assert len(paired) > 0.9 * ict.n_vertices
    mirrored = d[:, ict.symmetry[paired]] * torch.tensor([-1.0, 1.0, 1.0], dtype=d.dtype)
    torch.testing.assert_close(d[:, paired], mirrored, atol=1e-9, rtol=0)
    # smooth: Lipschitz along every mesh edge with the bound of 5 waves of amplitude ≤ 2 mm and
    # wavelength ≥ 40 mm, |Δd| ≤ 5 · 2 · 2π/40 · |edge|
    a, b = ict.triangles[:, 0], ict.triangles[:, 1]
    edge = (ict.mean[a] - ict.mean[b]).norm(dim=-1).double()
    step = (d[:, a] - d[:, b]).norm(dim=-1)
    assert bool((step <= 5 * 2.0 * 2 * np.pi / 40 * edge + 1e-9).all())


def test_a_field_inside_the_span_gives_back_its_coefficients(ict, warp):
    beta = torch.randn(2, ict.n_identity, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        field = (ict(identity=beta.float()).vertices - ict.mean[None]).double()
    torch.testing.assert_close(warp.coefficients(field), beta, atol=2e-3, rtol=0)


def test_coefficients_are_the_least_squares_fit_on_the_face_region(ict, warp):
    d = warp.displacement(1, torch.Generator().manual_seed(3), 3.0)
    ids = ict.regions["face"]
    with torch.no_grad():
        basis = (ict(identity=torch.eye(ict.n_identity)).vertices - ict.mean[None])[:, ids]
    A = basis.reshape(ict.n_identity, -1).double().numpy().T        # (3V_r, K)
    expected, *_ = np.linalg.lstsq(A, d[0, ids].reshape(-1).numpy(), rcond=None)
    got = warp.coefficients(d)[0].numpy()
    # ridge 1e-3 against plain least squares: equal to well within the field's own scale
    assert np.abs(got - expected).max() < 0.02 * max(1.0, np.abs(expected).max())
    residual = np.linalg.norm(A @ got - d[0, ids].reshape(-1).numpy())
    assert residual < np.linalg.norm(d[0, ids].reshape(-1).numpy())  # it explains part of the field
