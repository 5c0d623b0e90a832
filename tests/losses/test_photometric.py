import pytest
import torch

from morphable.losses.photometric import photometric_loss, skin_mask


def test_photometric_kinds_against_loops():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(1, 4, 5, 3, generator=g), torch.rand(1, 4, 5, 3, generator=g)
    m = (torch.rand(1, 4, 5, generator=g) > 0.4).float()
    r = ((a - b) ** 2).sum(-1).sqrt()
    n = m.sum()
    assert photometric_loss(a, b, m, kind="l2").item() == pytest.approx(float((m * r**2).sum() / n), rel=1e-5)
    assert photometric_loss(a, b, m, kind="l21").item() == pytest.approx(float((m * r).sum() / n), rel=1e-4)
    hub = torch.where(r <= 0.3, 0.5 * r**2, 0.3 * (r - 0.15))
    assert photometric_loss(a, b, m, kind="huber", delta=0.3).item() == pytest.approx(float((m * hub).sum() / n), rel=1e-4)
    with pytest.raises(ValueError, match="unknown kind"):
        photometric_loss(a, b, m, kind="l3")


def test_skin_mask_separates_skin_from_other_colours_despite_shading():
    skin = torch.tensor([0.8, 0.55, 0.45])
    img = skin.expand(1, 20, 20, 3).clone()
    img[0, :, :10] *= 0.5  # a shadow: same chroma direction scaled
    img[0, 15:, :] = torch.tensor([0.1, 0.3, 0.9])  # a blue scarf
    noise = torch.rand(1, 20, 20, 3, generator=torch.Generator().manual_seed(1)) * 0.02
    w = skin_mask(img + noise, torch.ones(1, 20, 20, dtype=torch.bool))
    assert w[0, :10, 10:].mean() > 0.3 and w[0, :10, :10].mean() > 0.05  # lit and shadowed skin kept
    assert w[0, 15:].max() == 0  # the scarf is out
