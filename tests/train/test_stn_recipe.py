"""The 3DMM-STN recipe: its synthetic identity groups agree with their own θ (the unsupervised losses are
lowest there), and a tiny run of ``morphable train stn`` lowers the held-out landmark error and exports
weights that reproduce its validation."""
from __future__ import annotations

import json

import pytest
import torch

from morphable.models.resample import model_uv, uv_grid
from morphable.nets.stn_localiser import load_localiser
from morphable.render.stn import SpatialTransformer3DMM, Theta
from morphable.train.recipes.stn import STNConfig, STNRecipe, synthetic_groups
from morphable.train.trainer import train


def test_losses_are_lowest_at_the_true_theta(sfm):
    """Symmetry of each view and agreement between the views of one face, measured at the θ the groups
    were rendered with and at θ moved by 4 px or 8° of yaw: the true θ must win clearly (images, landmarks
    and θ describe the same faces, and the losses can tell a misplaced grid)."""
    data = synthetic_groups(sfm, identities=2, views=2, seed=3, crop=96, max_yaw_deg=30.0)
    assert data["images"].shape == (4, 96, 96, 3) and data["group"].tolist() == [0, 0, 1, 1]
    stn = SpatialTransformer3DMM(sfm, uv_grid(model_uv(sfm), sfm.triangles, (32, 32)), 96)
    images = data["images"].float() / 255
    from morphable.losses.consistency import multiview_texture_loss
    from morphable.losses.symmetry import symmetry_loss

    def losses(theta: Theta) -> tuple[float, float]:
        out = stn(images, theta)
        pairs = [multiview_texture_loss(out.texture[i:i + 2], out.mask[i:i + 2]) for i in (0, 2)]
        return float(symmetry_loss(out.texture, out.mask)), float(sum(pairs) / 2)

    alpha = data["identity"]  # all components: the faces were drawn with all
    true = Theta(data["rotation"], data["translation"], data["log_scale"], alpha)
    sym, siam = losses(true)
    shifted = losses(Theta(true.rotation, true.translation + torch.tensor([4.0, -3.0]), true.log_scale, alpha))
    yaw = losses(Theta(true.rotation + torch.tensor([0.0, 0.14, 0.0]), true.translation, true.log_scale, alpha))
    print(f"true θ: symmetry {sym:.4f}, siamese {siam:.4f}; shifted {shifted}; yawed {yaw}")
    # (the views are lit differently, so their textures never agree exactly: the margins are smaller)
    assert shifted[0] > 1.5 * sym and shifted[1] > 1.2 * siam
    assert yaw[1] > 1.1 * siam
    # the stored landmarks are the transformer's at the true θ (crop pixels)
    out = stn(images, true)
    seen = sfm.landmark_mask
    torch.testing.assert_close(out.landmarks[:, seen], data["landmarks"][:, seen], atol=1e-3, rtol=0)


def test_expression_groups_agree_with_their_theta(sfm):
    """``expression=True``: every view wears its own expression; the stored landmarks are the transformer's
    at the true θ *with* that expression, and leaving it out misplaces them (the mouth, the brows)."""
    data = synthetic_groups(sfm, identities=2, views=2, seed=5, crop=96, max_yaw_deg=30.0, expression=True)
    assert data["expression"].shape == (4, sfm.n_expression)
    assert (data["expression"] > 0).sum(-1).tolist() == [3, 3, 3, 3] and float(data["expression"].max()) <= 0.4
    assert not torch.equal(data["expression"][0], data["expression"][1])  # per view
    stn = SpatialTransformer3DMM(sfm, uv_grid(model_uv(sfm), sfm.triangles, (16, 16)), 64)
    images = data["images"].float() / 255
    true = Theta(data["rotation"], data["translation"], data["log_scale"], data["identity"], data["expression"])
    seen = sfm.landmark_mask
    with torch.no_grad():
        with_e = stn(images, true).landmarks
        without = stn(images, Theta(true.rotation, true.translation, true.log_scale, true.alpha)).landmarks
    torch.testing.assert_close(with_e[:, seen], data["landmarks"][:, seen], atol=1e-3, rtol=0)
    assert float((without[:, seen] - data["landmarks"][:, seen]).norm(dim=-1).amax()) > 0.5


def _overrides(cache) -> list[str]:
    return [f"data.cache={cache}", "net.hidden=0", "data.photoreal=0", "data.identities=32", "data.val_identities=4",
            "data.views=2", "model.n_shape=4", "model.texture_size=16", "model.visibility_resolution=64",
            "loss.batch=8", "optim.lr=1e-4", "train.steps=80", "train.val_every=80", "train.log_every=10",
            "train.checkpoint_every=80", "train.image_every=0", "schedule.warmup_steps=5"]


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_tiny_run_learns_and_exports(sfm, tmp_path, precision):
    """Also with ``net.precision=auto``: the tuned dlib blocks train in mixed precision where the CPU has bfloat16
    natively (float32 elsewhere), and validation runs in the same precision."""
    from morphable.train.config import ConfigError, load_config

    torch.manual_seed(0)
    overrides = _overrides(tmp_path / "cache") + [f"net.precision={precision}"]
    start = STNRecipe(load_config(STNConfig, None, overrides), tmp_path)
    assert start.localiser.trunk.precision == precision
    before = start.validate(0)
    run = tmp_path / "run"
    train("stn", run, overrides=overrides, progress=False)
    after = json.loads((run / "summary.json").read_text())["metrics"]
    print(f"held-out before/after: nme {before['nme']:.4f} -> {after['nme']:.4f}, "
          f"rotation {before['rotation_deg']:.1f} -> {after['rotation_deg']:.1f} deg")
    assert after["nme"] < 0.7 * before["nme"]
    assert after["rotation_deg"] < before["rotation_deg"]
    loc = load_localiser(run / "stn-sfm-dlib.pt")
    assert loc.meta["command"].startswith("morphable train stn") and json.loads(loc.meta["metrics"]) == after
    # the exported weights reproduce the run's validation
    recipe = STNRecipe(load_config(STNConfig, None, overrides), tmp_path)
    recipe.localiser.load_state_dict(loc.state_dict())
    assert recipe.validate(80)["nme"] == pytest.approx(after["nme"], rel=1e-5)
    for bad, message in ((["net.precision=half"], "precision must be one of"),
                         (["net.trunk=small", "net.precision=bfloat16"], "needs trunk 'dlib'")):
        with pytest.raises(ConfigError, match=message):
            load_config(STNConfig, None, overrides + bad)


def test_real_crops_put_the_landmarks_where_the_photo_shows_them(tmp_path):
    """A photo with a bright 3 × 3 dot at nine far-apart landmark positions of eos's LFPW example: in every
    jittered crop the dot's intensity centroid around each returned crop landmark lies within 0.35 crop px of
    it, and within 0.05 px on average (the crop, its resampling and the landmark mapping agree)."""
    from types import SimpleNamespace

    import numpy as np

    from morphable.detect.formats import read_landmarks
    from morphable.io.image import write_image
    from morphable.train.recipes.stn import real_crops
    from tests.conftest import data_file

    lm = np.asarray(read_landmarks(data_file("eos/examples/data/image_0010.pts")), dtype=np.float64)
    points = [0, 8, 16, 19, 24, 30, 36, 45, 57]  # far apart: their dots stay apart after the crop's resampling
    lm = lm[points]
    photo = np.zeros((int(lm[:, 1].max()) + 80, int(lm[:, 0].max()) + 80, 3), np.uint8)
    for x, y in np.round(lm).astype(int):
        photo[y - 1:y + 2, x - 1:x + 2] = 255
    lm = np.round(lm)  # the dots' centres
    write_image(tmp_path / "dots.png", photo)
    full = np.full((68, 2), np.nan)
    full[points] = lm
    data = real_crops([SimpleNamespace(path=tmp_path / "dots.png", landmarks=full)], crop=150, crops=4, seed=1)
    assert data["images"].shape == (4, 150, 150, 3) and data["landmarks"].shape == (4, 68, 2)
    assert not torch.equal(data["landmarks"][0], data["landmarks"][1])  # jittered
    assert int(data["images"].max()) > 100  # the photo's 8-bit levels kept (a dot spreads over ~2 crop px)
    grey = data["images"].float().mean(-1)
    errors = []
    for c in range(4):
        for x, y in data["landmarks"][c, points].tolist():
            x0, y0 = round(x) - 3, round(y) - 3
            w = grey[c, y0:y0 + 7, x0:x0 + 7]
            ys, xs = torch.meshgrid(torch.arange(7.0) + y0, torch.arange(7.0) + x0, indexing="ij")
            errors.append(torch.stack([(w * xs).sum(), (w * ys).sum()]) / w.sum() - torch.tensor([x, y]))
    errors = torch.stack(errors)
    assert errors.norm(dim=-1).max() < 0.35 and errors.mean(0).abs().max() < 0.05


def test_a_tiny_run_with_real_photos_lowers_their_landmark_error(sfm, tmp_path):
    """``data.real``: a prepared folder of annotated photos joins training; its held-out faces' error
    (``real_nme``, reported in validation) falls."""
    import shutil

    from morphable.train.config import load_config
    from morphable.train.data.prepare import prepare_dataset
    from tests.conftest import data_file

    photos = tmp_path / "photos"
    photos.mkdir()
    lfpw = "superviseddescent/examples/data/ibug_lfpw_trainset"
    for name in [f"{lfpw}/image_000{i}" for i in range(1, 6)] + ["eos/examples/data/image_0010"]:
        for ext in (".png", ".pts"):
            shutil.copy(data_file(name + ext), photos / (name.replace("/", "_") + ext))
    prepare_dataset([photos], tmp_path / "real", progress=False)
    overrides = _overrides(tmp_path / "cache") + [f"data.real={tmp_path / 'real'}", "data.crops=3",
                                                 "loss.real_batch=6", "train.steps=60", "train.val_every=60",
                                                 "train.checkpoint_every=60"]
    torch.manual_seed(0)
    recipe = STNRecipe(load_config(STNConfig, None, overrides), tmp_path)
    assert len(recipe.real_train["images"]) == 5 * 3 and len(recipe.real_val["images"]) == 1  # face 0 held out
    before = recipe.validate(0)
    terms = recipe.loss(recipe.batch(0, torch.Generator().manual_seed(0)), 0)
    assert {"real_landmark", "real_symmetry"} <= set(terms)
    run = tmp_path / "run"
    train("stn", run, overrides=overrides, progress=False)
    after = json.loads((run / "summary.json").read_text())["metrics"]
    print(f"held-out real face: nme {before['real_nme']:.4f} -> {after['real_nme']:.4f}")
    assert after["real_nme"] < 0.8 * before["real_nme"]


def test_a_tiny_run_with_photoreal_crops_lowers_their_landmark_error(sfm, tmp_path, monkeypatch):
    """``data.photoreal``: inverse-rendered detector crops of the photos' fits join training with the landmark
    and symmetry terms; the held-out photo's crops (every 8th photo: photo 0) score validation
    (``photoreal_nme``, ``photoreal_rotation_deg``), and their error falls. The fits are stand-ins
    (:func:`tests.train._coarse_data.synthetic_fit`: known faces rendered into photos), so no detector runs."""
    from PIL import Image

    from morphable.train import inverse_rendered as ir
    from morphable.train.config import load_config
    from morphable.train.recipes import stn as stn_recipe
    from tests.train._coarse_data import synthetic_fit

    fits = {}
    for i in range(3):
        fit, photo = synthetic_fit(sfm, seed=20 + i)
        Image.fromarray(photo).save(tmp_path / f"p{i}.png")
        fits[f"p{i}.png"] = fit
    monkeypatch.setattr(ir, "fit_photo", lambda model, path: fits[path.name])
    monkeypatch.setattr(stn_recipe, "STN_PHOTOS", tuple(fits))
    monkeypatch.setenv("MORPHABLE_MIRROR", str(tmp_path))
    overrides = _overrides(tmp_path / "cache") + ["data.photoreal=6", "loss.photoreal_batch=8", "data.max_yaw_deg=45",
                                                 "train.steps=60", "train.val_every=60", "train.checkpoint_every=60"]
    torch.manual_seed(0)
    recipe = STNRecipe(load_config(STNConfig, None, overrides), tmp_path)
    assert len(recipe.photoreal_train["images"]) == 2 * 6 and len(recipe.photoreal_val["images"]) == 6
    assert recipe.photoreal_val["photo"].eq(0).all()
    assert recipe.photoreal_train["features"].shape == (12, 64 * 17 * 17)  # the 7 frozen blocks' activations
    before = recipe.validate(0)
    terms = recipe.loss(recipe.batch(0, torch.Generator().manual_seed(0)), 0)
    assert {"photoreal_landmark", "photoreal_symmetry"} <= set(terms) and "real_landmark" not in terms
    run = tmp_path / "run"
    train("stn", run, overrides=overrides, progress=False)
    after = json.loads((run / "summary.json").read_text())["metrics"]
    print(f"held-out photo's crops: nme {before['photoreal_nme']:.4f} -> {after['photoreal_nme']:.4f}, rotation "
          f"{before['photoreal_rotation_deg']:.1f} -> {after['photoreal_rotation_deg']:.1f} deg")
    assert after["photoreal_nme"] < 0.8 * before["photoreal_nme"]
    assert after["photoreal_rotation_deg"] < before["photoreal_rotation_deg"]
