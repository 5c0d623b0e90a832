"""The RingNet recipe on a tiny configuration: synthetic identity groups + real singletons, the paper's loss
terms, learning, export and prediction on a photo."""
import json

import pytest
import torch

from morphable.nets.ringnet import load_ringnet
from morphable.train.trainer import train
from tests.conftest import data_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory):
    from morphable.train.data.prepare import prepare_dataset

    folder = data_file("superviseddescent/examples/data/ibug_lfpw_trainset")
    out = tmp_path_factory.mktemp("real")
    prepare_dataset(sorted(folder.glob("*.png"))[:2], out, progress=False)
    return out


def _overrides(cache, real="", steps=4):
    return [f"data.cache={cache}", f"data.real={real}", "data.synthetic_identities=3", "data.synthetic_images=5",
            "data.synthetic_val_identities=2", "data.crops=3", "ring.identities=2", f"train.steps={steps}",
            "train.val_every=0", "train.log_every=1", f"train.checkpoint_every={steps}", "net.hidden=32"]


def test_terms_export_and_prediction(tmp_path, real_dataset):
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    run = tmp_path / "run"
    train("ringnet", run, overrides=_overrides(tmp_path / "cache", real_dataset), progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "ring" in r]
    assert len(steps) == 4
    # the regressor starts near zero shapes: every ring hinge is open at about the margin η = 0.5
    assert steps[0]["ring"] == pytest.approx(0.5, abs=0.05)
    for r in steps:
        assert r["loss"] == pytest.approx(r["ring"] + 60 * r["projection"] + 1e-4 * (r["shape_prior"]
                                          + r["expression_prior"]), rel=1e-4)
    summary = json.loads((run / "summary.json").read_text())["metrics"]
    assert 0 <= summary["ring_satisfied"] <= 1 and summary["mean_face_mm"] > 0
    net = load_ringnet(run / "ringnet-ict.pt")
    assert net.meta["command"].startswith("morphable train ringnet")
    from morphable.detect.formats import read_landmarks
    from morphable.io.image import read_image

    photo = sorted(data_file("superviseddescent/examples/data/ibug_lfpw_trainset").glob("*.png"))[0]
    lm = torch.as_tensor(read_landmarks(photo.with_suffix(".pts")), dtype=torch.float32)
    pred = net.predict(torch.tensor(read_image(photo)).float() / 255, lm)
    assert pred.params["shape"].shape == (1, 100)
    # the untrained-ish network sits near the mean face, centred in the crop: its photo camera puts the
    # model origin near the landmarks' centre
    centre = pred.photo_camera().translation[0]
    box_centre = (lm.amin(0) + lm.amax(0)) / 2
    assert float((centre - box_centre).norm()) < 0.5 * float((lm.amax(0) - lm.amin(0)).max())


def test_projection_loss_falls_when_training(tmp_path):
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    run = tmp_path / "run"
    train("ringnet", run, overrides=_overrides(tmp_path / "cache", steps=60) + [
        "optim.lr=1e-3", "net.dropout=0.0", "train.log_every=10"], progress=False)
    proj = [json.loads(line)["projection"] for line in (run / "log.jsonl").read_text().splitlines()
            if '"projection"' in line]
    assert proj[-1] < 0.6 * proj[0]


@pytest.mark.parametrize("override, message", [
    ("ring.identities=1", "ring.identities: each ring needs another person"),
    ("ring.size=2", "ring.size: R − 1 ≥ 2"),
    ("ring.identities=50", "ring.identities: 50 identities per batch, but the data has only"),
])
def test_unusable_ring_settings_are_one_line_config_errors(tmp_path, override, message):
    from morphable.train.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        train("ringnet", tmp_path / "run", overrides=_overrides(tmp_path / "cache") + [override], progress=False)


def test_small_trunk_trains_from_cached_crops_and_exports(tmp_path):
    """``net.trunk=small``: the cache holds 64 px uint8 crops (not dlib passes), the whole CNN trains, the
    projection loss falls, and the exported network reads 64 px crops."""
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    run = tmp_path / "run"
    train("ringnet", run, overrides=_overrides(tmp_path / "cache", steps=60) + [
        "net.trunk=small", "optim.lr=1e-3", "net.dropout=0.0", "train.log_every=10"], progress=False)
    proj = [json.loads(line)["projection"] for line in (run / "log.jsonl").read_text().splitlines()
            if '"projection"' in line]
    assert proj[-1] < 0.6 * proj[0]
    caches = list((tmp_path / "cache").glob("ringnet-synthetic-*.pt"))
    assert caches
    rows = torch.load(caches[0], weights_only=True)
    assert rows["crops"].dtype == torch.uint8 and rows["crops"].shape[1:] == (64, 64, 3) and "boundary" not in rows
    net = load_ringnet(run / "ringnet-ict.pt")
    assert net.trunk_name == "small" and net.input_size == 64
    fresh = torch.load(run / "ringnet-ict.pt", weights_only=True)
    assert any(k.startswith("trunk.body") for k in fresh["state"])  # the trunk's weights travel with the file


def test_small_trunk_rejects_dlib_only_settings(tmp_path):
    from morphable.train.config import ConfigError

    with pytest.raises(ConfigError, match="net.finetune_blocks: applies to the dlib trunk only"):
        train("ringnet", tmp_path / "run", overrides=_overrides(tmp_path / "cache") + [
            "net.trunk=small", "net.finetune_blocks=1"], progress=False)
    with pytest.raises(ConfigError, match="net.trunk: must be one of dlib, small"):
        train("ringnet", tmp_path / "run2", overrides=_overrides(tmp_path / "cache") + ["net.trunk=vgg"],
              progress=False)
