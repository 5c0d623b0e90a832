"""The FineNet recipe (train/recipes/fine.py): a tiny run on stand-in photos with known displacements lowers
the displacement error on a fixed set of chips and exports weights that reproduce its validation; the recipe is
registered; bad settings are one-line config errors."""
from __future__ import annotations

import json

import pytest
import torch

from morphable.nets.fine import load_fine
from morphable.train import fine_data as fd
from morphable.train.config import ConfigError, load_config
from morphable.train.recipes import fine as recipe_module
from morphable.train.recipes import get_recipe
from morphable.train.trainer import train
from tests.train.test_fine_data import PHOTOS, stand_in_corpus


def _overrides(cache):
    return [f"data.cache={cache}", "data.variants=6", "data.val_variants=4", "data.val_every_photo=4",
            "data.variant.size=48", "loss.batch=8", "optim.lr=1e-2", "schedule.name=constant",
            "schedule.warmup_steps=5", "train.steps=30", "train.log_every=10", "train.val_every=30",
            "train.checkpoint_every=30", "train.image_every=0"]


def test_tiny_run_lowers_the_error_and_exports(sfm, tmp_path, monkeypatch):
    """The stand-in details are bumps on a 0.8 mm inflation (the part 30 steps can learn: the bumps need
    hundreds of steps to be read from shading)."""
    stand_in_corpus(tmp_path, monkeypatch, sfm, offset=0.8)
    monkeypatch.setattr(recipe_module, "TRAIN_PHOTOS", PHOTOS)
    torch.manual_seed(0)
    run = tmp_path / "run"
    train("fine", run, overrides=_overrides(tmp_path / "cache"), progress=False)
    after = json.loads((run / "summary.json").read_text())["metrics"]
    net = load_fine(run / "fine-sfm.pt")
    assert json.loads(net.meta["metrics"]) == after
    recipe = recipe_module.FineRecipe(load_config(recipe_module.FineConfig, None, _overrides(tmp_path / "cache")),
                                      tmp_path)
    # validation used the fourth photo only; training never saw it
    assert len(recipe.val_chips["images"]) == 4 and len(recipe.train_set["backgrounds"]) == 18
    # a fixed set of training-photo chips, before (the fresh net: the coarse mesh) and after: deterministic,
    # unlike the logged losses of 8-chip batches
    draws = fd.draw_fine(recipe.face_model, recipe.train_set, torch.arange(18), torch.Generator().manual_seed(9),
                         recipe.config.data.variant, recipe.config.data.detail)
    chips = fd.render_fine(recipe.face_model, recipe.renderers, recipe.train_set, draws)
    before = recipe_module.evaluate(recipe.net, chips)
    recipe.net.load_state_dict(net.state_dict())
    assert recipe.validate(30)["fine_err_mm"] == pytest.approx(after["fine_err_mm"], rel=1e-5)
    trained = recipe_module.evaluate(recipe.net, chips)
    torch.testing.assert_close(before["fine_err_mm"], before["base_err_mm"])  # a fresh net predicts no detail
    b, a = float(before["fine_err_mm"].mean()), float(trained["fine_err_mm"].mean())
    print(f"training-photo chips: vertex error {b:.3f} -> {a:.3f} mm, map L1 {float(before['map_l1']):.3f} -> "
          f"{float(trained['map_l1']):.3f} mm")
    assert a < 0.75 * b


def test_registered_and_bad_settings_are_config_errors():
    assert get_recipe("fine") is recipe_module.FineRecipe
    with pytest.raises(ConfigError, match="transfer_probability"):
        load_config(recipe_module.FineConfig, None, ["data.detail.transfer_probability=2"])
    with pytest.raises(ConfigError, match="batch"):
        load_config(recipe_module.FineConfig, None, ["loss.batch=0"])
    with pytest.raises(ConfigError, match="val_every_photo"):
        load_config(recipe_module.FineConfig, None, ["data.val_every_photo=1"])
