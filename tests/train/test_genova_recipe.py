"""The Genova recipe end to end on a tiny configuration (both stages, export), and its identity path."""
import json

import pytest
import torch

from morphable.nets.genova import load_regressor
from morphable.train.trainer import train
from tests.conftest import data_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory):
    from morphable.train.data.prepare import prepare_dataset

    folder = data_file("superviseddescent/examples/data/ibug_lfpw_trainset")
    photos = sorted(folder.glob("*.png"))[:3]
    out = tmp_path_factory.mktemp("real")
    prepare_dataset(photos, out, progress=False)
    return out


def _overrides(real, cache, steps=5):
    return [f"data.real={real}", f"data.cache={cache}", "data.synthetic=24", "data.synthetic_val=8",
            "data.real_val_fraction=0.0", "stages.stage1_steps=3", f"train.steps={steps}", "stages.batch_real=2",
            "stages.batch_synthetic=8", "loss.views=2", "train.val_every=5", "train.log_every=1",
            "train.checkpoint_every=5", "net.hidden=64", "model.albedo_modes=2"]


def test_two_stages_and_export(tmp_path, real_dataset):
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    run = tmp_path / "run"
    train("genova", run, overrides=_overrides(real_dataset, tmp_path / "cache"), progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "stage" in r and not r.get("validation")]
    assert [r["stage"] for r in steps] == [1, 1, 1, 2, 2]
    for r in steps[3:]:  # stage 2 has every term, finite; the identity loss is a 1 - cos in [0, 2]
        assert all(k in r for k in ("identity", "batch_distribution", "loopback", "param"))
        assert 0 < r["identity"] < 2
    val = [r for r in rows if r.get("validation")]
    assert val and val[-1]["vertex_mm"] > 0 and val[-1]["mean_face_mm"] > 0
    summary = json.loads((run / "summary.json").read_text())
    reg = load_regressor(run / "genova-ict.pt")
    assert reg.prior_precision == summary["prior_precision"]["prior_precision"]
    assert reg.meta["command"].startswith("morphable train genova")
    assert json.loads(reg.meta["config"])["data"]["real"] == str(real_dataset)
    ds_chips = torch.rand(1, 150, 150, 3)
    assert reg(reg.encoder(ds_chips).pooled)["identity"].shape == (1, 100)
    # a new run can start from these weights (stage-2 variants of one stage-1 run)
    from morphable.train.config import load_config
    from morphable.train.recipes.genova import GenovaConfig, GenovaRecipe

    cfg = load_config(GenovaConfig, None, _overrides(real_dataset, tmp_path / "cache") + [f"net.init={run / 'genova-ict.pt'}"])
    again = GenovaRecipe(cfg, tmp_path).model().eval()
    feats = torch.randn(3, 256)
    torch.testing.assert_close(again(feats)["identity"], reg(feats)["identity"])


def test_identity_loss_trains_the_decoder_through_renderer_and_encoder(tmp_path, real_dataset):
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    from morphable.train.config import load_config
    from morphable.train.recipes.genova import GenovaConfig, GenovaRecipe

    cfg = load_config(GenovaConfig, None, _overrides(real_dataset, tmp_path / "cache")
                      + ["stages.stage1_steps=0", "net.dropout=0.0"])
    recipe = GenovaRecipe(cfg, tmp_path)
    batch = recipe.batch(1, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(recipe.model().parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss = recipe.loss(batch, 1)["identity"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(recipe.loss(batch, 1)["identity"].detach()) < first - 0.01
