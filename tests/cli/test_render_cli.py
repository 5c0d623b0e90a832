"""``morphable render``: a fit's params.json renders the fit's geometry; --size 0 and JPEG output."""
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


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """An SFM fit of an LFPW photo (SFM is a face-only mesh: the overlay draws all of it)."""
    data_file("eos/share/sfm_shape_3448.bin")
    out = tmp_path_factory.mktemp("fit")
    photo, pts = data_file(f"{LFPW}/image_0002.png"), data_file(f"{LFPW}/image_0002.pts")
    result = CliRunner().invoke(cli, ["fit", str(photo), "--landmarks", str(pts), "-o", str(out), "--model", "sfm",
                                      "--texture-size", "32", "-q", "--no-report"])
    assert result.exit_code == 0, result.output
    return out / "image_0002", read_image(photo)


def test_render_reproduces_the_overlay_geometry(fitted, tmp_path):
    """The rendered silhouette is where the overlay drew the mesh, and the fitted inner-face landmarks lie in it."""
    folder, photo = fitted
    out = tmp_path / "r.png"
    result = CliRunner().invoke(cli, ["render", str(folder / "params.json"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    alpha = np.asarray(Image.open(out))[..., 3] > 127
    assert alpha.shape == photo.shape[:2]
    overlay = read_image(folder / "overlay.png").astype(int)
    drawn = np.abs(overlay - photo).sum(-1) > 30  # the shaded mesh (and the landmark marks on it)
    iou = (drawn & alpha).sum() / (drawn | alpha).sum()
    assert iou > 0.85, iou
    fitted_points = np.array(json.loads((folder / "params.json").read_text())["landmarks_fitted"], float)[17:]
    x, y = np.round(fitted_points[np.isfinite(fitted_points).all(1)]).astype(int).T
    assert alpha[y, x].mean() > 0.95


def test_size_zero_is_an_error_and_jpeg_works(fitted, tmp_path):
    folder, photo = fitted
    result = CliRunner().invoke(cli, ["render", str(folder / "params.json"), "-o", str(tmp_path / "z.png"),
                                      "--size", "0"])
    assert result.exit_code == 1 and result.output.strip() == "Error: --size must be a positive number of pixels, got 0"
    assert not (tmp_path / "z.png").exists()
    result = CliRunner().invoke(cli, ["render", str(folder / "params.json"), "-o", str(tmp_path / "x.jpg"),
                                      "--size", "200"])
    assert result.exit_code == 0, result.output
    jpg = np.asarray(Image.open(tmp_path / "x.jpg"))
    assert jpg.shape == (200, round(200 * photo.shape[1] / photo.shape[0]), 3)
    assert jpg[100, jpg.shape[1] // 2].mean() > 60 and jpg[2, 2].max() < 20  # face lit, background black
