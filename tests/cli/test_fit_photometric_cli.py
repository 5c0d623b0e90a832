"""``morphable fit --photometric``: the extra outputs and params, and the option conflicts."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from morphable.cli import cli
from morphable.fitting.photometric import DEFAULT_SCHEDULE
from morphable.io import read_image, read_obj
from tests.conftest import data_file


def test_photometric_outputs(tmp_path):
    image = data_file("superviseddescent/examples/data/ibug_lfpw_trainset/image_0001.png")
    pts = data_file("superviseddescent/examples/data/ibug_lfpw_trainset/image_0001.pts")
    result = CliRunner().invoke(cli, ["fit", str(image), "--landmarks", str(pts), "--photometric", "-o", str(tmp_path),
                                      "--texture-size", "128"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "image_0001"
    for name in ("mesh.obj", "albedo.png", "texture.png", "comparison.png", "energy.png", "params.json", "overlay.png"):
        assert (out / name).exists(), name
    params = json.loads((out / "params.json").read_text())
    photometric = params["photometric"]
    assert len(photometric["light"]) == 27 and photometric["albedo"]["kind"] == "per_vertex"
    assert photometric["energies"]["photometric"] < photometric["energies"]["initial"]["photometric"]
    # regressions: rms_px is the final (photometric) stage's, the file is small, progress was shown
    assert params["rms_stage"] == "photometric"
    fitted, marks = np.array(params["landmarks_fitted"], float), np.array(params["landmarks"], float)
    ok = np.isfinite(fitted).all(1) & np.isfinite(marks).all(1)
    assert params["rms_px"] == pytest.approx(np.sqrt(((fitted[ok] - marks[ok]) ** 2).sum(1).mean()), rel=1e-6)
    assert (out / "params.json").stat().st_size < 30_000  # was ~1 MB (per-vertex albedo and ids inline)
    stages = len(DEFAULT_SCHEDULE)
    assert f"photometric {stages}/{stages}" in result.stderr and "step" in result.stderr
    assert "map_Kd albedo.png" in (out / "mesh.mtl").read_text()
    photo = read_image(image)
    comparison = read_image(out / "comparison.png")
    assert comparison.shape == (photo.shape[0], 3 * photo.shape[1], 3)
    mesh = read_obj(out / "mesh.obj")
    assert mesh.texture is not None and np.isfinite(mesh.vertices).all()


def test_photometric_with_perspective(tmp_path):
    """--photometric --perspective: the inverse rendering runs from the pinhole fit and writes that camera (the
    benefit is measured in tests/test_reconstruct.py::test_photometric_fit_keeps_a_close_up_pinhole)."""
    image = data_file("superviseddescent/examples/data/ibug_lfpw_trainset/image_0001.png")
    pts = data_file("superviseddescent/examples/data/ibug_lfpw_trainset/image_0001.pts")
    result = CliRunner().invoke(cli, ["fit", str(image), "--landmarks", str(pts), "--photometric", "--perspective",
                                      "--model", "sfm", "--texture-size", "64", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "image_0001" / "params.json").read_text())
    assert params["camera"]["type"] == "perspective" and params["camera"]["focal"] == max(read_image(image).shape[:2])
    energies = params["photometric"]["energies"]
    assert energies["photometric"] < energies["initial"]["photometric"]
