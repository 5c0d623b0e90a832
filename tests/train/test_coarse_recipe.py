"""The CoarseNet recipe (train/recipes/coarse.py): a tiny run on synthetic stand-in fits lowers the loss and
exports weights that reproduce its validation; bad settings are one-line config errors."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import morphable
from morphable.errors import InputError
from morphable.nets.coarse import load_coarse
from morphable.train import inverse_rendered as ir
from morphable.train.config import ConfigError, load_config
from morphable.train.logging import read_log
from morphable.train.recipes import coarse as recipe_module
from morphable.train.trainer import train
from tests.conftest import data_file
from tests.train._coarse_data import synthetic_fit

PHOTOS = ("p0.png", "p1.png", "p2.png", "p3.png")


@pytest.fixture
def stand_in_photos(tmp_path, monkeypatch):
    """Four synthetic "photos" in a corpus folder, whose fits are known (no detector, no optimisation)."""
    data_file("eos/share/sfm_shape_3448.bin")
    model = morphable.load_model("sfm")
    fits = {}
    root = tmp_path / "corpus"
    root.mkdir()
    for i, name in enumerate(PHOTOS):
        fit, photo = synthetic_fit(model, seed=20 + i)
        Image.fromarray(photo).save(root / name)
        fits[name] = fit

    def fake_fit(model, path):
        if path.name not in fits:
            raise InputError(path, "no face found")
        return fits[path.name]

    monkeypatch.setattr(ir, "fit_photo", fake_fit)
    monkeypatch.setattr(ir, "corpus_root", lambda: root)
    monkeypatch.setattr(recipe_module, "TRAIN_PHOTOS", PHOTOS)
    return tmp_path


def _overrides(cache):
    return [f"data.cache={cache}", "data.variants=6", "data.val_variants=4", "data.val_every_photo=4",
            "data.online=false", "loss.batch=8", "loss.photometric_start=10", "loss.photometric_ramp=10",
            "optim.lr=3e-3",
            "schedule.name=constant", "schedule.warmup_steps=5", "train.steps=40", "train.log_every=1",
            "train.val_every=40", "train.checkpoint_every=40", "train.image_every=0"]


def _training_set_loss(recipe) -> float:
    """The training objective's geometry terms (parameter + shape loss, their default weights 1) over all
    training chips, with batch statistics (40 steps are too few for batch norm's running averages)."""
    data = recipe.train_set
    with torch.no_grad():
        terms, _, _ = recipe.terms(data["images"].float() / 255, data["targets"])
    return float(terms["param"] + terms["shape_mm"])


def test_tiny_run_lowers_the_loss_and_exports(stand_in_photos):
    tmp = stand_in_photos
    torch.manual_seed(0)
    run = tmp / "run"
    train("coarse", run, overrides=_overrides(tmp / "cache"), progress=False)
    rows = [r for r in read_log(run / "log.jsonl") if "loss" in r and not r.get("validation")]
    assert len(rows) == 40 and all(r["photometric"] > 0 for r in rows)
    after = json.loads((run / "summary.json").read_text())["metrics"]
    net = load_coarse(run / "coarse-sfm.pt")
    assert json.loads(net.meta["metrics"]) == after
    # the whole training set, before (a fresh net) and after: a deterministic measure, unlike the logged
    # losses of 8-chip batches, whose last steps vary ±10% with the BLAS thread count
    recipe = recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, _overrides(tmp / "cache")), tmp)
    before_loss = _training_set_loss(recipe)
    recipe.net.load_state_dict(net.state_dict())
    # the exported weights reproduce the run's validation (before a training-mode pass moves the running stats)
    assert recipe.validate(40)["vertex_err_mm"] == pytest.approx(after["vertex_err_mm"], rel=1e-5)
    after_loss = _training_set_loss(recipe)
    print(f"training-set loss {before_loss:.3f} -> {after_loss:.3f}")
    assert after_loss < 0.85 * before_loss  # 14.0 -> 10.2-10.9 at 1, 2 and 4 threads
    # validation used the fourth photo only, which training never saw
    assert recipe.val_set["images"].shape[0] == 4 and recipe.train_set["images"].shape[0] == 18


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_tiny_dlib_trunk_run_lowers_the_loss_and_exports(stand_in_photos, precision):
    """``model.trunk=dlib`` (dlib's first 4 blocks on 64 px chips, the last 2 fine-tuned): the head's input is
    standardised over the training chips at the start (mean 0, standard deviation at least the median's), a
    tiny run lowers the training-set loss, and its export reproduces the run's validation; in float32 and with
    ``model.precision=auto`` (mixed precision where the CPU has bfloat16 natively, float32 elsewhere)."""
    tmp = stand_in_photos
    torch.manual_seed(0)
    overrides = _overrides(tmp / "cache") + ["data.variant.size=64", "model.trunk=dlib", "model.blocks=4",
                                             "model.tune=2", "model.hidden=32", f"model.precision={precision}"]
    recipe = recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, overrides), tmp)
    data = recipe.train_set
    assert recipe.net.trunk.precision == precision
    recipe.net.set_precision("float32")  # the statistics are float32's whatever the run's precision
    with torch.no_grad():
        f = recipe.net.trunk(data["images"].float() / 255)
    assert float(f.mean(0).abs().max()) < 1e-3 and float(f.std(0).max()) <= 1 + 1e-3
    recipe.net.set_precision(precision)
    before_loss = _training_set_loss(recipe)
    run = tmp / f"run_{precision}"
    train("coarse", run, overrides=overrides, progress=False)
    net = load_coarse(run / "coarse-sfm.pt")
    assert (net.trunk_name, net.trunk.blocks, net.trunk.tune, net.size) == ("dlib", 4, 2, 64)
    recipe.net.load_state_dict(net.state_dict())
    after = json.loads((run / "summary.json").read_text())["metrics"]
    assert recipe.validate(40)["vertex_err_mm"] == pytest.approx(after["vertex_err_mm"], rel=1e-5)
    after_loss = _training_set_loss(recipe)
    print(f"dlib trunk: training-set loss {before_loss:.3f} -> {after_loss:.3f}")
    assert after_loss < 0.85 * before_loss
    with pytest.raises(ConfigError, match="trunk must be one of"):
        load_config(recipe_module.CoarseConfig, None, ["model.trunk=vgg"])


def test_tiny_refining_run_from_a_trained_first_stage(stand_in_photos):
    """``model.refine_blocks`` with ``model.init`` and ``model.freeze_first``: a tiny dlib-trunk run's export starts a
    refining run. Its first stage stays exactly the export's, the refiner alone trains, and on the training set
    the refined output's geometry loss ends below the first stage's; the export keeps both stages and reproduces
    the run's validation, which reports both. The export starts a two-stage cascade (its stages kept, the new one
    starting as the identity), which cannot go back into a one-stage run. An init file whose first stage or
    refiner differs is refused in one line."""
    tmp = stand_in_photos
    torch.manual_seed(0)
    dlib = _overrides(tmp / "cache") + ["data.variant.size=64", "model.trunk=dlib", "model.blocks=4", "model.tune=2",
                                         "model.hidden=32"]
    train("coarse", tmp / "first", overrides=dlib, progress=False)
    start = load_coarse(tmp / "first" / "coarse-sfm.pt")
    refine = dlib + [f"model.init={tmp / 'first' / 'coarse-sfm.pt'}", "model.refine_blocks=1",
                     "model.freeze_first=true", "model.refine_hidden=32", "optim.lr=1e-3"]
    recipe = recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, refine), tmp)
    data = recipe.train_set

    def geometry(index: int) -> float:  # a stage's parameter + shape loss over the training set
        with torch.no_grad():
            terms, _, _ = recipe.terms(data["images"].float() / 255, data["targets"])
        return float(terms[("first_", "")[index] + "param"] + terms[("first_", "")[index] + "shape_mm"])

    assert geometry(1) == pytest.approx(geometry(0), rel=1e-6)  # the refiner starts as the identity
    train("coarse", tmp / "refined", overrides=refine, progress=False)
    net = load_coarse(tmp / "refined" / "coarse-sfm.pt")
    assert net.refiner is not None and net.refiner.trunk.blocks == 1
    for name, value in start.state_dict().items():
        if not name.startswith("trunk.net."):
            torch.testing.assert_close(net.state_dict()[name], value, rtol=0, atol=0, msg=name)
    recipe.net.load_state_dict(net.state_dict())
    after = json.loads((tmp / "refined" / "summary.json").read_text())["metrics"]
    assert recipe.validate(40)["vertex_err_mm"] == pytest.approx(after["vertex_err_mm"], rel=1e-5)
    assert after["first_vertex_err_mm"] == pytest.approx(json.loads(start.meta["metrics"])["vertex_err_mm"], rel=1e-5)
    first, refined = geometry(0), geometry(1)
    print(f"training-set geometry loss: first stage {first:.3f}, refined {refined:.3f}")
    assert refined < 0.8 * first  # 5.23 -> 2.44
    small = _overrides(tmp / "cache") + [f"model.init={tmp / 'first' / 'coarse-sfm.pt'}"]
    with pytest.raises(ValueError, match="model.init .*first stage differs"):
        recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, small), tmp)
    # a refiner on another map (after 2 blocks: tensors of the same shapes at 64 px) is not this run's either
    other = dlib + [f"model.init={tmp / 'refined' / 'coarse-sfm.pt'}", "model.refine_blocks=2"]
    with pytest.raises(ValueError, match="model.init .*its refiner differs"):
        recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, other), tmp)
    # the one-stage refiner starts a two-stage cascade: its stages as they were, the new one as the identity; its
    # own validation reports every stage
    cascade = refine + [f"model.init={tmp / 'refined' / 'coarse-sfm.pt'}", "model.refine_stages=2"]
    cascaded = recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, cascade), tmp)
    metrics = cascaded.validate(0)
    assert metrics["stage2_vertex_err_mm"] == pytest.approx(after["vertex_err_mm"], rel=1e-5)
    assert metrics["vertex_err_mm"] == pytest.approx(after["vertex_err_mm"], rel=1e-5)
    assert metrics["first_vertex_err_mm"] == pytest.approx(after["first_vertex_err_mm"], rel=1e-5)
    fewer = dlib + [f"model.init={_saved(cascaded, tmp)}", "model.refine_blocks=1", "model.refine_hidden=32"]
    with pytest.raises(ValueError, match="model.init .*its refiner differs"):  # 2 stages into a 1-stage run
        recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, fewer), tmp)


def _saved(recipe, tmp) -> str:
    """``recipe``'s network written to a file (as the run's export would be)."""
    from morphable.nets.coarse import save_coarse

    save_coarse(recipe.net, tmp / "cascaded.pt")
    return str(tmp / "cascaded.pt")


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="data.*variants"):
        load_config(recipe_module.CoarseConfig, None, ["data.variants=0"])
    with pytest.raises(ConfigError, match="val_every_photo"):
        load_config(recipe_module.CoarseConfig, None, ["data.val_every_photo=1"])
    with pytest.raises(ConfigError, match="max_yaw_deg"):
        load_config(recipe_module.CoarseConfig, None, ["data.variant.max_yaw_deg=100"])
    with pytest.raises(ConfigError, match="refine_blocks needs trunk"):
        load_config(recipe_module.CoarseConfig, None, ["model.refine_blocks=1"])
    with pytest.raises(ConfigError, match="freeze_first"):
        load_config(recipe_module.CoarseConfig, None, ["model.trunk=dlib", "model.freeze_first=true"])
    with pytest.raises(ConfigError, match="precision must be one of"):
        load_config(recipe_module.CoarseConfig, None, ["model.trunk=dlib", "model.precision=half"])
    with pytest.raises(ConfigError, match="precision other than float32 needs trunk 'dlib'"):
        load_config(recipe_module.CoarseConfig, None, ["model.precision=auto"])


@pytest.mark.parametrize("albedo_mix", [0.0, 0.5])
def test_online_chips_match_their_targets(stand_in_photos, albedo_mix):
    """Online chips (fresh faces over cached backgrounds) and their flat targets agree: the targets, decoded,
    render the chip's face again, with the targets' albedo coefficients in the smooth basis where the albedos are
    blends (``data.albedo_mix``: about that share of the chips blend their photo's albedo with another's); two
    steps draw different chips."""
    from morphable.nets.coarse import decode

    tmp = stand_in_photos
    overrides = [o for o in _overrides(tmp / "cache") if o != "data.online=false"] + ["data.occlusion=0",
                                                                                      f"data.albedo_mix={albedo_mix}"]
    recipe = recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, overrides), tmp)
    g = torch.Generator().manual_seed(0)
    batch = recipe.batch(1, g)
    images, targets = recipe.chips(batch)
    assert not torch.equal(images, recipe.chips(recipe.batch(2, g))[0])
    p = decode(recipe.layout, 96, targets)
    torch.testing.assert_close(p.identity, batch["identity"])
    data = recipe.train_set
    photo = data["photo"][batch["index"]]
    albedo = data["albedo"][photo]
    if albedo_mix:
        w, other = batch["albedo_weight"], batch["albedo_other"]
        mixed = (w > 0) & (other != photo)
        assert mixed.any() and not (w > 0).all() and float(w.max()) <= 1
        albedo = (1 - w[:, None, None]) * albedo + w[:, None, None] * data["albedo"][other]
        # the targets' coefficients: the blended albedo's least-squares projection on the basis, not the photo's
        fitted = torch.linalg.lstsq(recipe.basis.expand(len(albedo), -1, -1), albedo).solution
        torch.testing.assert_close(p.albedo_coefficients, fitted.to(p.albedo_coefficients), rtol=1e-4, atol=1e-5)
        assert float((p.albedo_coefficients - data["albedo_coefficients"][photo])[mixed].abs().max()) > 1e-3
    else:
        assert "albedo_weight" not in batch
    verts = recipe.face_model(identity=p.identity, expression=p.expression).vertices[:, recipe.region]
    out = recipe.renderer(verts, p.camera, colors=albedo, sh=p.light)
    inside = out.alpha >= 1
    assert inside.sum() > 8 * 1000
    assert float((out.image - images).abs().max(-1).values[inside].max()) < 2.5 / 255


def test_landmark_term_measures_chip_pixels(stand_in_photos):
    """``loss.landmarks``' term is the mean distance (chip px) of the model's landmarks projected by the
    prediction and by the truth: 0 for a prediction equal to the truth, 5 px for one moved by (3, 4) px; the
    shape term ignores the move."""
    tmp = stand_in_photos
    recipe = recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, _overrides(tmp / "cache")), tmp)
    net = recipe.net.eval()
    targets = recipe.val_set["targets"][:1].float()
    chip = recipe.val_set["images"][:1].float() / 255
    torch.nn.init.zeros_(net.head[-1].weight)
    torch.nn.init.zeros_(net.head[-1].bias)
    net.mean.copy_(targets[0])
    net.std.fill_(1.0)
    moved = targets.clone()
    moved[:, recipe.layout.slice("translation")] -= torch.tensor([3.0, 4.0]) / 96
    with torch.no_grad():
        same, _, _ = recipe.terms(chip, targets)
        off, _, _ = recipe.terms(chip, moved)
    assert float(same["landmarks_px"]) < 1e-4 and float(same["shape_mm"]) < 1e-4
    assert float(off["landmarks_px"]) == pytest.approx(5.0, abs=1e-3)
    assert float(off["shape_mm"]) < 1e-4


@pytest.mark.parametrize("identity_from", ["photo", "any"])
def test_online_identity_source(stand_in_photos, identity_from):
    """``data.identity_from``: without jitter, an online face's identity is its own photo's fitted identity
    (``photo``) or some training photo's, not always its own (``any``)."""
    tmp = stand_in_photos
    overrides = [o for o in _overrides(tmp / "cache") if o != "data.online=false"]
    overrides += ["data.variant.identity_jitter=0", f"data.identity_from={identity_from}", "loss.batch=32"]
    recipe = recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, overrides), tmp)
    data = recipe.train_set
    batch = recipe.batch(1, torch.Generator().manual_seed(0))
    fits = data["fit_identity"]
    # which fitted identity each face has (distinct stand-in fits are far apart)
    source = torch.cdist(batch["identity"].double(), fits.double()).argmin(1)
    torch.testing.assert_close(batch["identity"], fits[source])
    own = data["photo"][batch["index"]]
    if identity_from == "photo":
        assert torch.equal(source, own)
    else:
        assert 0 < int((source != own).sum()) < len(own)
    with pytest.raises(ConfigError, match="identity_from"):
        load_config(recipe_module.CoarseConfig, None, ["data.identity_from=other"])


def test_occlusion_hides_part_of_the_online_chips(stand_in_photos):
    """``data.occlusion=1``: every online chip differs from the same draw without occluders exactly inside its
    box, where it shows the next chip's background; the targets are the same."""
    tmp = stand_in_photos
    overrides = [o for o in _overrides(tmp / "cache") if o != "data.online=false"] + ["data.occlusion=1"]
    recipe = recipe_module.CoarseRecipe(load_config(recipe_module.CoarseConfig, None, overrides), tmp)
    batch = recipe.batch(1, torch.Generator().manual_seed(0))
    images, targets = recipe.chips(batch)
    clean = {k: v for k, v in batch.items() if not k.startswith("occluder_")}
    clean_images, clean_targets = recipe.chips(clean)
    torch.testing.assert_close(targets, clean_targets)
    fill = recipe.train_set["backgrounds"][batch["index"].roll(1)].float() / 255
    for i in range(len(images)):
        x0, y0, x1, y1 = batch["occluder_box"][i].tolist()
        torch.testing.assert_close(images[i, y0:y1, x0:x1], fill[i, y0:y1, x0:x1])
        outside = torch.ones(images.shape[1:3], dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        torch.testing.assert_close(images[i][outside], clean_images[i][outside])
    with pytest.raises(ConfigError, match="occlusion"):
        load_config(recipe_module.CoarseConfig, None, ["data.occlusion=1.5"])
