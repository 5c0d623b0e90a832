"""``morphable fit --photometric --depth``: an RGB-D photo (colour, depth registered with it, the sensor's
focal length) fitted end to end from files, and the bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from morphable.cli import cli
from morphable.detect.formats import write_pts
from morphable.io import write_image
from tests.fitting._synthetic import real_model
from tests.fitting.test_rgbd import rgbd_bench


@pytest.fixture(scope="module")
def rgbd_files(tmp_path_factory):
    """One of ``benchmarks/rgbd_bench.py``'s faces (seed 0) as files: ``photo.png``, ``depth.png`` (16-bit,
    0.1 mm per unit, 0 = hole), ``photo.pts``; and the truth."""
    model, bench = real_model("ict"), rgbd_bench()
    depth, landmarks, cam, truth, seen, image = bench.scene(model, 0, off_model=False)
    folder = tmp_path_factory.mktemp("rgbd")
    write_image(folder / "photo.png", image.numpy())
    units = np.nan_to_num(depth.numpy() * 10, nan=0.0, posinf=0.0).round().astype(np.uint16)  # off the head: inf
    Image.fromarray(units).save(folder / "depth.png")
    write_pts(folder / "photo.pts", landmarks.numpy())
    return folder, model, bench, cam, truth, seen


def test_fit_with_depth_is_metric(rgbd_files, tmp_path):
    folder, model, bench, cam, truth, seen = rgbd_files
    result = CliRunner().invoke(cli, [
        "fit", str(folder / "photo.png"), "--landmarks", str(folder / "photo.pts"), "--photometric",
        "--depth", str(folder / "depth.png"), "--depth-unit", "0.1", "--focal", str(bench.FOCAL), "--model", "ict",
        "--shape-from", "landmarks", "--texture-size", "64", "--no-report", "-q", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    params = json.loads((tmp_path / "photo" / "params.json").read_text())
    camera = params["camera"]
    assert camera["type"] == "perspective" and camera["focal"] == pytest.approx(bench.FOCAL)
    assert camera["principal_point"] == pytest.approx(list(bench.CENTRE))
    assert np.linalg.norm(np.array(camera["translation"]) - cam.translation[0].numpy()) < 2.0
    with torch.no_grad():
        fitted = model(identity=torch.tensor(params["identity"], dtype=model.mean.dtype)[None],
                       expression=torch.tensor(params["expression"], dtype=model.mean.dtype)[None]).vertices[0]
    err = bench.aligned_error(fitted.double(), truth, torch.as_tensor(model.regions["face"]), seen)[0]
    print(f"CLI RGB-D fit: {err:.3f} mm")
    assert err <= 0.5  # the API's fit of the same face: 0.214 mm (tests/fitting/test_rgbd.py)


def test_depth_input_errors(rgbd_files, tmp_path):
    folder = rgbd_files[0]
    base = ["fit", str(folder / "photo.png"), "--landmarks", str(folder / "photo.pts"), "--model", "ict",
            "--shape-from", "landmarks", "--texture-size", "64", "--no-report", "-q", "-o", str(tmp_path)]
    runner = CliRunner()
    # usage: depth without the photometric fit or the focal length, focal without depth, a count mismatch
    for extra in (["--depth", str(folder / "depth.png"), "--focal", "700"],
                  ["--photometric", "--depth", str(folder / "depth.png")],
                  ["--photometric", "--focal", "700"],
                  ["--photometric", "--depth", str(folder / "depth.png"), "--depth", str(folder / "depth.png"),
                   "--focal", "700"]):
        result = runner.invoke(cli, base + extra)
        assert result.exit_code == 2 and ("--depth" in result.output or "--focal" in result.output), extra
    # bad files: one line naming the file, exit 1, no traceback, nothing written for the photo
    small = folder / "small.png"
    Image.fromarray(np.full((40, 50), 6500, np.uint16)).save(small)
    colour = folder / "colour.png"
    write_image(colour, np.zeros((320, 320, 3), np.uint8))
    for bad, message in ((small, "registered with the photo"), (colour, "16- or 32-bit"),
                         (folder / "missing.png", "no such depth file")):
        result = runner.invoke(cli, base + ["--photometric", "--depth", str(bad), "--focal", "700"])
        assert result.exit_code == 1, result.output
        assert f"{bad}: " in result.output and message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "photo").exists()
