"""``morphable stn-fit``: outputs for a small corpus photo, ``--mean``, and a batch going on past a bad image."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from morphable.cli import cli
from morphable.io import read_image
from tests.conftest import data_file

LFPW = "superviseddescent/examples/data/ibug_lfpw_trainset"
FAST = ["--model", "sfm", "--size", "32", "--iterations", "5", "--shape-components", "4"]


@pytest.fixture
def photo():
    data_file("eos/share/sfm_shape_3448.bin")
    return data_file(f"{LFPW}/image_0002.png"), data_file(f"{LFPW}/image_0002.pts")


def test_stn_fit_writes_outputs_and_mean(photo, tmp_path):
    image, pts = photo
    result = CliRunner().invoke(cli, ["stn-fit", str(image), "--landmarks", str(pts), "-o", str(tmp_path), "--mean",
                                      *FAST])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "image_0002"
    for name in ("flattened.png", "mask.png", "overlay.png", "params.json"):
        assert (folder / name).is_file(), name
    flat, mask = read_image(folder / "flattened.png"), read_image(folder / "mask.png")
    assert flat.shape == (32, 32, 3) and mask.shape == (32, 32, 3)
    seen = mask[..., 0] > 127
    assert 0.3 < seen.mean() < 1.0 and flat[seen].mean() > 20  # the face was sampled, not the background
    params = json.loads((folder / "params.json").read_text())
    assert params["model"] == "sfm" and len(params["identity"]) == 4 and params["version"] == 1
    size = params["image_size"]
    assert params["rms_px"] < 0.05 * max(size["width"], size["height"])
    assert params["stn"]["energy"]["landmark_px"] < 0.05 * max(size["width"], size["height"])
    assert read_image(folder / "overlay.png").shape[:2] == (size["height"], size["width"])
    # the params are a fit's: morphable render draws them, the face where the landmarks are
    out = tmp_path / "render.png"
    result = CliRunner().invoke(cli, ["render", str(folder / "params.json"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    alpha = np.asarray(Image.open(out))[..., 3]
    nose = np.round(np.array(params["landmarks"])[30]).astype(int)
    assert alpha[nose[1], nose[0]] == 255 and alpha[0, 0] == 0
    np.testing.assert_array_equal(read_image(tmp_path / "mean_flattened.png"), flat)  # one photo: mean = it


def test_stn_fit_goes_on_past_bad_images(photo, tmp_path):
    image, _ = photo
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    missing = tmp_path / "missing.jpg"
    result = CliRunner().invoke(cli, ["stn-fit", str(corrupt), str(image), str(missing), "-o", str(tmp_path / "out"),
                                      *FAST])
    assert result.exit_code != 0
    assert (tmp_path / "out" / "image_0002" / "flattened.png").is_file()
    assert not (tmp_path / "out" / "corrupt").exists()
    errors = [line for line in result.output.splitlines() if "corrupt.png" in line or "missing.jpg" in line]
    assert len(errors) == 2 and all("Traceback" not in line for line in errors), result.output


def test_stn_fit_output_is_a_file(photo, tmp_path):
    image, pts = photo
    taken = tmp_path / "taken"
    taken.write_text("x")
    result = CliRunner().invoke(cli, ["stn-fit", str(image), "--landmarks", str(pts), "-o", str(taken), *FAST])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip() == f"Error: {taken}: is a file, not a folder (choose another output folder)"


@pytest.fixture
def random_localiser(tmp_path):
    """An untrained small-trunk localiser for the SFM (random head: a θ away from the nominal one)."""
    import torch

    import morphable
    from morphable.nets.stn_localiser import STNLocaliser, nominal_theta, save_localiser

    data_file("eos/share/sfm_shape_3448.bin")
    torch.manual_seed(0)
    loc = STNLocaliser("sfm", 4, "small", nominal_theta(morphable.load_model("sfm"), 64), 64)
    torch.nn.init.normal_(loc.head.weight, std=0.02)
    path = tmp_path / "loc.pt"
    save_localiser(loc.eval(), path)
    return path


def test_stn_fit_with_a_localiser_is_the_library_call(photo, random_localiser, tmp_path, monkeypatch):
    """``--localiser``: the model comes from the weights, params.json holds the θ of
    :func:`flatten_faces` on the photo as read (uint8) and the landmark box, and flattened.png its texture.
    A ``--precision`` the CPU cannot run is refused in one line."""
    import torch

    import morphable
    from morphable.models.resample import model_uv, uv_grid
    from morphable.nets.stn_localiser import flatten_faces, landmark_box, load_localiser
    from morphable.detect.formats import read_landmarks
    from morphable.render.stn import SpatialTransformer3DMM

    image, pts = photo
    result = CliRunner().invoke(cli, ["stn-fit", str(image), "--landmarks", str(pts), "-o", str(tmp_path / "out"),
                                      "--localiser", str(random_localiser), "--size", "32"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "image_0002"
    params = json.loads((folder / "params.json").read_text())
    assert params["model"] == "sfm" and params["shape_from"] == "stn-localiser" and len(params["identity"]) == 4
    model = morphable.load_model("sfm")
    stn = SpatialTransformer3DMM(model, uv_grid(model_uv(model), model.triangles, (32, 32)))
    photo_t = torch.tensor(read_image(image))  # uint8, as read
    marks = torch.tensor(read_landmarks(pts), dtype=torch.float32)[None]
    theta, out = flatten_faces(load_localiser(random_localiser), stn, [photo_t], landmark_box(marks))
    np.testing.assert_allclose(params["camera"]["translation"], theta.translation[0].numpy(), atol=1e-3)
    np.testing.assert_allclose(params["camera"]["scale"], theta.log_scale.exp().item(), rtol=1e-5)
    np.testing.assert_allclose(params["identity"], theta.alpha[0].numpy(), atol=1e-5)
    flat = read_image(folder / "flattened.png").astype(np.float64) / 255
    assert np.abs(flat - out.texture[0].clamp(0, 1).numpy()).max() < 1 / 255 + 1e-6
    # a localiser of another model is refused, in one line
    result = CliRunner().invoke(cli, ["stn-fit", str(image), "--landmarks", str(pts), "-o", str(tmp_path / "o2"),
                                      "--localiser", str(random_localiser), "--model", "ict"])
    assert result.exit_code == 2 and "trained for model 'sfm', not 'ict'" in result.output
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # a CPU without oneDNN
    result = CliRunner().invoke(cli, ["stn-fit", str(image), "--landmarks", str(pts), "-o", str(tmp_path / "o3"),
                                      "--localiser", str(random_localiser), "--precision", "bfloat16"])
    assert result.exit_code == 2 and "--precision: precision 'bfloat16' needs oneDNN" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o3").exists()
