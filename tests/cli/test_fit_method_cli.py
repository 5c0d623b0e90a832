"""``morphable fit --method regress|regress+fit``: RingNet through the fit command (an untrained network
stands in for the shipped one), and the option's conflicts."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from morphable.cli import cli
from tests.conftest import data_file

pytestmark = pytest.mark.slow
PHOTO = "eos/examples/data/image_0010.png"


@pytest.fixture
def fake_shipped(monkeypatch):
    data_file("eos/share/sfm_shape_3448.bin")
    import morphable
    from morphable.nets import ringnet

    torch.manual_seed(0)
    net = ringnet.new_ringnet(morphable.load_model("sfm"), "sfm").eval()
    monkeypatch.setattr(ringnet, "shipped_ringnet", lambda name: net if name == "sfm" else None)
    return net


def test_regress_and_regress_then_fit(tmp_path, fake_shipped):
    photo = data_file(PHOTO)
    rms = {}
    for method in ("regress", "regress+fit"):
        out = tmp_path / method
        result = CliRunner().invoke(cli, ["fit", str(photo), "--landmarks", str(photo.with_suffix(".pts")), "-o",
                                          str(out), "--model", "sfm", "--method", method, "--texture-size", "64",
                                          "--no-report", "-q"])
        assert result.exit_code == 0, result.output
        params = json.loads((out / "image_0010" / "params.json").read_text())
        assert params["shape_from"] == "ringnet"
        rms[method] = params["rms_px"]
    # the landmark fit from the (untrained) network's shape fits the landmarks far better than the network
    assert rms["regress+fit"] < 0.5 * rms["regress"]


def test_method_conflicts(tmp_path):
    photo = data_file(PHOTO)
    result = CliRunner().invoke(cli, ["fit", str(photo), str(photo), "--multi-view", "--method", "regress",
                                      "-o", str(tmp_path)])
    assert result.exit_code != 0 and "--method regress" in result.output
