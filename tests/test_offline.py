"""Offline and without the corpus (issue 16): tests that need an open model skip instead of downloading,
and fail when CI requires the data; the model fetcher's error names the local alternatives."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from morphable.cli import cli
from morphable.errors import ModelFileError
from morphable.models import registry
from tests.conftest import ROOT


def _pytest_offline(tmp_path, require: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "MORPHABLE_TEST_DATA": str(tmp_path / "no-corpus"), "MORPHABLE_MIRROR": "",
           "MORPHABLE_HOME": str(tmp_path / "home"), "MORPHABLE_REQUIRE_DATA": "1" if require else "0",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-rsf",
                           "tests/models/test_region.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_test_needing_the_ict_model_skips_offline_and_fails_when_data_is_required(tmp_path):
    run = _pytest_offline(tmp_path, require=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 skipped" in run.stdout and "tests never download" in run.stdout, run.stdout
    run = _pytest_offline(tmp_path, require=True)
    assert run.returncode == 1 and "1 failed" in run.stdout, run.stdout + run.stderr


@pytest.fixture
def unreachable_sfm(tmp_path, monkeypatch):
    """The SFM's files served from a closed local port, no mirror, an empty home."""
    monkeypatch.setenv("MORPHABLE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MORPHABLE_MIRROR", raising=False)
    sfm = registry.OPEN_MODELS["sfm"]
    files = tuple(dataclasses.replace(f, url="http://127.0.0.1:1/" + f.path) for f in sfm.layouts[0].files)
    monkeypatch.setitem(registry.OPEN_MODELS, "sfm",
                        dataclasses.replace(sfm, layouts=(dataclasses.replace(sfm.layouts[0], files=files),)))
    return tmp_path / "home"


def test_offline_fetch_error_names_the_mirror_and_the_cache(unreachable_sfm):
    with pytest.raises(ModelFileError) as caught:
        registry.fetch("sfm", notify=lambda message: None)
    message = str(caught.value)
    assert "\n" not in message and "download failed" in message
    assert "MORPHABLE_MIRROR" in message and "MORPHABLE_HOME" in message
    assert str(unreachable_sfm / "sources") in message and "eos/share/sfm_shape_3448.bin" in message


def test_offline_cli_prints_one_line_with_the_options(unreachable_sfm):
    result = CliRunner().invoke(cli, ["models", "fetch", "sfm"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "MORPHABLE_MIRROR" in lines[0] and "MORPHABLE_HOME" in lines[0]
