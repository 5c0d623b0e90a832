"""``morphable demo``: the README's main command reconstructs the bundled photo with the default model."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from skimage import data

from morphable.cli import cli
from morphable.io import read_image, read_obj
from tests.conftest import data_file


def test_demo_reconstructs_the_astronaut(tmp_path):
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "model ict: 26719 vertices" in result.output
    for name in ("input.png", "overlay.png", "mesh.obj", "texture.png", "mesh.glb", "params.json", "report.html"):
        assert str(tmp_path / name) in result.output
        assert (tmp_path / name).is_file()
    p = json.loads((tmp_path / "params.json").read_text())
    assert p["model"] == "ict" and p["image_size"] == {"width": 512, "height": 512}
    detected, fitted = np.array(p["landmarks"]), np.array(p["landmarks_fitted"])
    eyes = np.linalg.norm(detected[36] - detected[45])
    assert 60 < eyes < 120  # Eileen Collins' face in the 512 x 512 photo
    assert np.linalg.norm(fitted - detected, axis=1).mean() / eyes < 0.08
    np.testing.assert_array_equal(read_image(tmp_path / "input.png"), data.astronaut())
    mesh = read_obj(tmp_path / "mesh.obj")
    assert len(mesh.vertices) == 26719 and mesh.texture.shape == (512, 512, 3)
    assert p["texture_coverage"]["visible"] > 0.4


def test_demo_output_is_a_file_fails_before_fitting(tmp_path):
    """An existing file as the output folder: one line naming it, exit 1, nothing fitted or written."""
    target = tmp_path / "taken"
    target.write_text("keep me")
    result = CliRunner().invoke(cli, ["demo", "-o", str(target / "sub"), "--model", str(tmp_path / "absent.npz")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == f"Error: {target}: is a file, not a folder (choose another output folder)"
    assert target.read_text() == "keep me"
