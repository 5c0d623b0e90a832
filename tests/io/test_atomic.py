"""atomic_write: the destination appears only complete, an error leaves the old file and no temp file."""
from __future__ import annotations

import os
import stat

import pytest

from morphable.errors import InputError
from morphable.io.atomic import atomic_write


def test_success_replaces_and_error_keeps_old(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_write(target, "w") as f:
        f.write("first\n")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_text() == "first\n"
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "first\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_permissions_follow_umask(tmp_path):
    with atomic_write(tmp_path / "b.bin") as f:
        f.write(b"\x00")
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "b.bin").st_mode) == 0o666 & ~mask


def test_bad_folder_and_mode(tmp_path):
    with pytest.raises(InputError, match="missing"):
        with atomic_write(tmp_path / "missing" / "x.bin"):
            pass
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "x.bin", "a"):
            pass
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="folder: cannot write"):
        with atomic_write(tmp_path / "folder") as f:
            f.write(b"x")
    assert sorted(os.listdir(tmp_path)) == ["folder"]
