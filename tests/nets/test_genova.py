"""The Genova regressor: prediction path, weights files (round trip, checksum, corruption)."""
import pytest
import torch

from morphable.errors import ModelFileError
from morphable.nets import weights as weights_mod
from morphable.nets.genova import GenovaRegressor, has_regressor, load_regressor, save_regressor
from morphable.models.registry import sha256_file


def _regressor():
    torch.manual_seed(0)
    reg = GenovaRegressor("toy", 5, 3, hidden=16, prior_precision=3.0)
    reg.decoder.set_feature_statistics(torch.randn(50, 256) * 2 + 1)
    return reg


def test_decoder_standardises_its_input():
    reg = _regressor()
    feats = torch.randn(7, 256) * 2 + 1
    out = reg(feats)
    assert out["identity"].shape == (7, 5) and out["albedo"].shape == (7, 3)
    x = (feats - reg.decoder.feature_mean) / reg.decoder.feature_std
    torch.testing.assert_close(reg.decoder.layout.join(out), reg.decoder.mlp(x))


def test_save_load_round_trip(tmp_path):
    reg = _regressor()
    path = tmp_path / "r.pt"
    save_regressor(reg, path, {"command": "test"})
    back = load_regressor(path)
    assert back.model_name == "toy" and back.prior_precision == 3.0 and back.meta["command"] == "test"
    feats = torch.randn(4, 256)
    a, b = reg(feats), back(feats)
    torch.testing.assert_close(a["identity"], b["identity"], atol=2e-2, rtol=2e-2)  # float16 storage


def test_checksum_and_corruption(tmp_path, monkeypatch):
    reg = _regressor()
    path = tmp_path / "genova-toy.pt"
    save_regressor(reg, path)
    monkeypatch.setattr(weights_mod, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setitem(weights_mod.SHIPPED, "genova-toy", ("genova-toy.pt", sha256_file(path)))
    assert has_regressor("toy") and not has_regressor("nothing")
    assert load_regressor("toy").model_name == "toy"
    monkeypatch.setitem(weights_mod.SHIPPED, "genova-toy", ("genova-toy.pt", "0" * 64))
    with pytest.raises(ModelFileError, match="sha256"):
        load_regressor("toy")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="bad.pt"):
        load_regressor(bad)
    with pytest.raises(ModelFileError, match="no shipped Genova regressor"):
        load_regressor("bfm")


def test_predict_from_photos_matches_features_of_the_chips():
    from morphable.nets.encoders import DlibEncoder

    reg = _regressor()
    g = torch.Generator().manual_seed(0)
    photos = torch.rand(2, 200, 220, 3, generator=g)
    from morphable.identity.alignment import chip_template

    ids, tmpl = chip_template(68)
    lm = torch.zeros(2, 68, 2)
    lm[:] = 40 + torch.rand(68, 2, generator=g) * 100
    lm[:, ids] = tmpl.float() * 0.9 + 20  # a plausible face layout
    got = reg.predict_identity(photos, lm)
    enc = DlibEncoder()
    want = reg(enc(DlibEncoder.chips(photos, lm)).pooled)["identity"]
    torch.testing.assert_close(got, want)
    # predict runs in inference mode, but hands back ordinary tensors, and the encoder it built on first use
    # keeps ordinary buffers: gradients still flow through it afterwards
    assert not got.is_inference() and not reg.encoder.net.conv0_weight.is_inference()
    chips = DlibEncoder.chips(photos, lm).requires_grad_(True)
    reg(reg.encoder(chips).pooled)["identity"].sum().backward()
    assert chips.grad is not None and chips.grad.abs().sum() > 0
    # and a uint8 photo (as ``morphable fit`` passes it) gives the float photo's prediction
    photos8 = (photos * 255).round().to(torch.uint8)
    torch.testing.assert_close(reg.predict_identity(photos8, lm), reg.predict_identity(photos8.float() / 255, lm),
                               atol=1e-5, rtol=1e-5)


def test_shipped_ict_regressor_separates_people(data):
    """The shipped weights load by name (sha256 checked) and give the same person closer identities than two
    different people: the deepface photos img1/img2 (one person) and img8 (another; held out from training)."""
    import numpy as np

    from morphable.detect.choice import detect_faces
    from morphable.io.image import read_image

    reg = load_regressor("ict")
    assert reg.model_name == "ict" and reg.prior_precision > 0 and "genova" in reg.meta["command"]
    folder = data("deepface/tests/unit/dataset/img1.jpg").parent
    mu = []
    for name in ("img1.jpg", "img2.jpg", "img8.jpg"):
        image = read_image(folder / name)
        (_, det), *_ = detect_faces(image)[0]
        lm = torch.as_tensor(np.asarray(det.landmarks), dtype=torch.float32)[None]
        mu.append(reg.predict_identity(torch.tensor(image, dtype=torch.float32)[None] / 255, lm)[0])
    same, different = (mu[0] - mu[1]).norm(), min((mu[0] - mu[2]).norm(), (mu[1] - mu[2]).norm())
    assert same < 0.8 * different
    assert 1.0 < mu[0].norm() < 20.0  # a real face, neither the mean nor wildly off the prior
