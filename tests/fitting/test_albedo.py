"""The standardised low-frequency albedo space."""
import pytest
import torch

from morphable.fitting.albedo import SIGMA_LUMINANCE, SKIN_RGB, LowFrequencyAlbedo
from tests.fitting._synthetic import real_model


@pytest.fixture(scope="module")
def space():
    m = real_model("sfm")
    return m, LowFrequencyAlbedo(m.mean, m.triangles, m.symmetry, modes=4)


def test_zero_is_the_mean_skin_and_luminance_scales(space):
    m, s = space
    z = torch.zeros(2, s.size)
    z[1, 0] = 0.5  # (at +1σ the red channel would clamp at 1)
    rho = s(z)
    torch.testing.assert_close(rho[0], torch.tensor(SKIN_RGB).expand(m.n_vertices, 3))
    ratio = rho[1] / rho[0]
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(torch.exp(torch.tensor(0.5 * SIGMA_LUMINANCE)))))


def test_modes_are_symmetric_smooth_and_unit_rms(space):
    m, s = space
    H = s.harmonics
    mirror = m.symmetry
    # mutual pairs (SFM's list also maps a few vertices onto a vertex that is paired elsewhere)
    paired = (mirror >= 0) & (mirror[mirror.clamp_min(0)] == torch.arange(len(mirror)))
    assert paired.sum() > 0.8 * len(mirror)
    torch.testing.assert_close(H[paired], H[mirror[paired]], atol=1e-5, rtol=0)
    torch.testing.assert_close(H.pow(2).mean(0), torch.ones(4), atol=1e-4, rtol=0)
    assert H.abs().sum(0).min() > 0


def test_wrong_size():
    m = real_model("sfm")
    s = LowFrequencyAlbedo(m.mean, m.triangles, None, modes=1)
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        s(torch.zeros(1, 5))
