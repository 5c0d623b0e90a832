"""Shared test fixtures: the real corpus (``MORPHABLE_TEST_DATA``) and a per-test model cache."""
from __future__ import annotations

import os
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MORPHABLE_TEST_DATA", ROOT.parent / "shared" / "data"))
REQUIRE_DATA = os.environ.get("MORPHABLE_REQUIRE_DATA") == "1"


@contextmanager
def torch_threads(n: int):
    """torch at ``n`` intra-op threads inside the block, its previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def data_file(relative: str) -> Path:
    """Path of a corpus file; skips the test when it is absent (fails instead when CI requires data)."""
    path = DATA / relative
    if not path.exists():
        _skip_or_fail(f"test data {relative} not found under {DATA} (set MORPHABLE_TEST_DATA)")
    return path


@pytest.fixture
def data():
    """The :func:`data_file` lookup as a fixture: ``data("eos/share/sfm_shape_3448.bin")``."""
    return data_file


@pytest.fixture(scope="module")
def sfm():
    """The Surrey Face Model (``morphable.load_model("sfm")``, converted from the corpus); one per test module,
    skipped without the corpus."""
    import morphable

    data_file("eos/share/sfm_shape_3448.bin")
    return morphable.load_model("sfm")


def _skip_or_fail(message: str) -> None:
    if REQUIRE_DATA:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True, scope="session")
def _no_downloads():
    """Tests never download: a model fetch that would reach the network (no corpus to serve as
    ``MORPHABLE_MIRROR``, no converted model in ``MORPHABLE_HOME``) skips the test instead, or fails it
    when CI requires the data. Downloads from a local test server (``127.0.0.1``) go through."""
    from morphable.models import registry

    original = registry.download

    def guarded(url: str, dest: Path, sha256: str | None, **kwargs):
        if urllib.parse.urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            _skip_or_fail(f"the test needs a model file that is not available locally ({url}); tests never "
                          f"download: set MORPHABLE_TEST_DATA to the corpus (used as MORPHABLE_MIRROR)")
        return original(url, dest, sha256, **kwargs)

    registry.download = guarded
    yield
    registry.download = original


def pytest_configure(config):
    """Before any fixture or test module runs: converted models go to a temporary MORPHABLE_HOME (never the
    user's cache, unless one is set, as CI does), and open models come from the corpus as a mirror."""
    if "MORPHABLE_HOME" not in os.environ:
        import tempfile

        os.environ["MORPHABLE_HOME"] = tempfile.mkdtemp(prefix="morphable-home-")
    if "MORPHABLE_MIRROR" not in os.environ and DATA.exists():
        os.environ["MORPHABLE_MIRROR"] = str(DATA)
