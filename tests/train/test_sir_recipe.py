"""The SIR recipe on a tiny configuration: mixed identity / landmark rows, both stages, the loss as the sum of
its weighted terms, held-out identities never loaded, export and the fit from the exported network."""
import json

import pytest
import torch

from morphable.nets.sir import fit_with_sir, load_sir
from morphable.train.recipes.sir import SIRConfig
from morphable.train.trainer import train
from tests.conftest import data_file

pytestmark = pytest.mark.slow

LFPW = "superviseddescent/examples/data/ibug_lfpw_trainset"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from morphable.train.data.prepare import prepare_dataset

    photos = sorted(data_file(LFPW).glob("*.png"))[:3]
    ident = tmp_path_factory.mktemp("ident")
    # two photos of "a" and one of "b" (labels made up for the test); "b" is held out below
    prepare_dataset(photos, ident, identities={photos[0].stem: "a", photos[1].stem: "a", photos[2].stem: "b"},
                    progress=False)
    marks = tmp_path_factory.mktemp("marks")
    prepare_dataset(photos[:2], marks, progress=False)
    return ident, marks


def test_mixed_rows_stages_terms_and_export(tmp_path, datasets):
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    ident, marks = datasets
    run = tmp_path / "run"
    overrides = [f"data.cache={tmp_path / 'cache'}", f"data.identity_real={ident}", "data.train_identities=a",
                 f"data.landmark_real={marks}", "data.synthetic_identities=3", "data.synthetic_images=2",
                 "data.synthetic_val_identities=2", "data.real_identity_share=0.5", "batch.identities=2",
                 "batch.images=2", "batch.landmark=2", "batch.pixel=2", "stages.stage1_steps=2", "train.steps=4",
                 "train.val_every=0", "train.log_every=1", "train.checkpoint_every=4", "net.hidden=32"]
    train("sir", run, overrides=overrides, progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "inter" in r]
    assert [r["stage"] for r in steps] == [1.0, 1.0, 2.0, 2.0]
    assert all("pixel" not in r for r in steps[:2]) and all(r["pixel"] > 0 and 0 < r["face_recognition"] < 1
                                                             for r in steps[2:])
    L = SIRConfig().loss
    for r in steps:
        expected = (L.lambda_landmark * r["landmark"] + L.lambda_param * r["param"]
                    + L.lambda_sir * (L.lambda_inter * r["inter"] + L.lambda_center * r["center"] + L.lambda_kl * r["kl"])
                    + L.lambda_expression * r["expression_prior"] + L.lambda_albedo * r["albedo_prior"]
                    + L.lambda_pixel * r.get("pixel", 0.0) + L.lambda_fr * r.get("face_recognition", 0.0))
        assert r["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # the network starts near the mean face: every cross-identity hinge is open at about the margin
    assert 0.8 < steps[0]["inter"] <= L.margin
    # the untrained network's shapes have a tiny batch variance: the KL term is large
    assert steps[0]["kl"] > 1.0

    net = load_sir(run / "sir-ict.pt")
    assert net.meta["command"].startswith("morphable train sir")
    assert net.prior_precision in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert metrics["mean_face_mm"] > 0 and 0 <= metrics["auc_mesh"] <= 1

    from morphable.detect.formats import read_landmarks
    from morphable.io.image import read_image
    import morphable

    photo = sorted(data_file(LFPW).glob("*.png"))[0]
    lm = torch.as_tensor(read_landmarks(photo.with_suffix(".pts")), dtype=torch.float64)
    image = torch.tensor(read_image(photo)).float() / 255
    model = morphable.load_model("ict")
    mu = net.predict_identity(image[None], lm[None].float())
    assert mu.shape == (1, model.n_identity) and torch.isfinite(mu).all()
    # with a very strong prior the fit's identity is the network's shape
    fit = fit_with_sir(model, net, [image], lm[None], iterations=1, lambda_identity=1e6)
    torch.testing.assert_close(fit.identity.float(), mu, atol=1e-2, rtol=0)


def test_held_out_identities_are_not_loaded(tmp_path, datasets):
    from morphable.train.recipes.sir import SIRRecipe

    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    ident, _ = datasets
    cfg = SIRConfig()
    from dataclasses import replace

    cfg = replace(cfg, data=replace(cfg.data, cache=str(tmp_path / "cache"), identity_real=str(ident),
                                    train_identities="a", synthetic_identities=2, synthetic_images=2,
                                    synthetic_val_identities=2),
                  batch=replace(cfg.batch, identities=2, images=2, landmark=0))
    recipe = SIRRecipe(cfg, tmp_path)
    # 4 synthetic rows, then the two photos of "a"; "b" is absent; labels: 2 synthetic groups + "a"
    assert len(recipe.table["features"]) == 4 + 2
    assert recipe.table["label"].tolist() == [0, 0, 1, 1, 2, 2] and recipe.centers.shape == (3, 100)
    assert len(recipe.landmark_rows) == 0  # identity photos carry no landmark term
    with pytest.raises(ValueError, match="not in"):
        SIRRecipe(replace(cfg, data=replace(cfg.data, train_identities="a,zz")), tmp_path)
