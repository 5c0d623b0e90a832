"""``morphable models``: list / fetch / info / add / convert, and one-line errors."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from morphable.cli import cli
from morphable.models.formats.npz import load_npz
from tests.conftest import data_file


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHABLE_HOME", str(tmp_path / "home"))
    data_file("eos/share/sfm_shape_3448.bin")
    return CliRunner()


def test_list_fetch_info(runner):
    result = runner.invoke(cli, ["models", "list"])
    assert result.exit_code == 0
    assert "ict (default)" in result.output and "not fetched" in result.output and "sfm" in result.output
    result = runner.invoke(cli, ["models", "fetch", "sfm"])
    assert result.exit_code == 0, result.output
    assert "NON-COMMERCIAL" in result.stderr and "3448 vertices" in result.stdout
    result = runner.invoke(cli, ["models", "info", "sfm"])
    assert result.exit_code == 0
    assert "3448 vertices, 6736 triangles" in result.output and "63 components" in result.output
    assert "6 (blendshapes)" in result.output


def test_info_ict():
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    result = CliRunner().invoke(cli, ["models", "info", "ict"])  # the session's home: converted once
    assert result.exit_code == 0, result.output
    assert "26719 vertices, 52220 triangles" in result.output and "100 components" in result.output
    assert "53 (blendshapes)" in result.output and "68/68" in result.output


def test_convert_and_add(runner, tmp_path):
    out = tmp_path / "sfm.npz"
    result = runner.invoke(cli, ["models", "convert", str(data_file("eos/share/sfm_shape_3448.bin")), str(out)])
    assert result.exit_code == 0, result.output
    assert load_npz(out).n_identity == 63
    result = runner.invoke(cli, ["models", "add", "mine", str(out)])
    assert result.exit_code == 0 and "added mine" in result.output
    assert "mine" in runner.invoke(cli, ["models", "list"]).output
    result = runner.invoke(cli, ["models", "convert", "sfm", str(tmp_path / "out.obj")])
    assert result.exit_code == 2 and ".npz" in result.output


@pytest.mark.parametrize("args", [["info", "BAD"], ["add", "x", "BAD"], ["convert", "BAD", "OUT.npz"],
                                  ["fetch", "nonexistent"]])
def test_bad_file_is_one_line_and_nonzero(runner, tmp_path, args):
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"\x01\0\0\0" + b"\x10" * 50)  # an eos header followed by garbage
    args = [str(bad) if a == "BAD" else str(tmp_path / a) if a == "OUT.npz" else a for a in args]
    result = runner.invoke(cli, ["models", *args])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
