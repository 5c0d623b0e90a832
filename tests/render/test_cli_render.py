import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from morphable.cli import cli
from tests.conftest import data_file


def _params(tmp_path, **extra):
    params = {"model": "ict", "image_size": {"width": 120, "height": 150}, "identity": [0.5, -1.0],
              "rotation": [0.05, 0.3, 0.0], "translation": [60.0, 70.0], "scale": 0.4}
    params.update(extra)
    path = tmp_path / "params.json"
    path.write_text(json.dumps(params))
    return path


def test_render_writes_a_face_image(tmp_path):
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    out = tmp_path / "face.png"
    result = CliRunner().invoke(cli, ["render", str(_params(tmp_path)), "-o", str(out)])
    assert result.exit_code == 0, result.output
    img = np.asarray(Image.open(out))
    assert img.shape == (150, 120, 4)
    alpha = img[..., 3]
    assert alpha[70, 60] == 255 and alpha[0, 0] == 0 and alpha[149, 0] == 0
    assert 0.15 < (alpha > 127).mean() < 0.9
    # --size renders the same view at another resolution
    big = tmp_path / "big.png"
    result = CliRunner().invoke(cli, ["render", str(_params(tmp_path)), "-o", str(big), "--size", "300",
                                      "--light", "0,0,1,0.2"])
    assert result.exit_code == 0, result.output
    img2 = np.asarray(Image.open(big))
    assert img2.shape == (300, 240, 4)
    small_mask = np.asarray(Image.fromarray(img2[..., 3]).resize((120, 150), Image.BILINEAR)) > 127
    assert (small_mask == (alpha > 127)).mean() > 0.97


def test_render_perspective_params(tmp_path):
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    path = _params(tmp_path, scale=None, focal=400.0, translation=[0.0, 0.0, -700.0])
    out = tmp_path / "p.png"
    result = CliRunner().invoke(cli, ["render", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    alpha = np.asarray(Image.open(out))[..., 3]
    assert alpha[75, 60] == 255 and alpha[0, 0] == 0


def test_render_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(cli, ["render", str(bad), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert result.output.startswith("Error:") and "bad.json" in result.output
    assert len(result.output.strip().splitlines()) == 1
    no_model = tmp_path / "nomodel.json"
    no_model.write_text(json.dumps({"image_size": [10, 10]}))
    result = CliRunner().invoke(cli, ["render", str(no_model), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "nomodel.json" in result.output and "model" in result.output
    result = CliRunner().invoke(cli, ["render", str(_params(tmp_path)), "-o", str(tmp_path / "x.png"),
                                      "--light", "1,2"])
    assert result.exit_code == 2 and "X,Y,Z" in result.output
