"""read_image / write_image: exact PNG round trip, float conversion, mode conversions, corrupt files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from morphable.errors import InputError
from morphable.io import read_image, write_image


def test_png_round_trip_exact(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    back = read_image(tmp_path / "a.png")
    assert back.dtype == np.uint8 and back.shape == (17, 23, 3)
    np.testing.assert_array_equal(back, image)


def test_float_tensor_and_alpha(tmp_path):
    values = torch.tensor([[[0.0, 0.5, 1.0, 1.0], [-0.2, 0.2, 1.7, 0.0]]])  # (1, 2, 4) RGBA, out of range
    write_image(tmp_path / "f.png", values)
    with Image.open(tmp_path / "f.png") as im:
        assert im.mode == "RGBA"
        stored = np.asarray(im)
    np.testing.assert_array_equal(stored, [[[0, 128, 255, 255], [0, 51, 255, 0]]])  # clipped, rounded
    np.testing.assert_array_equal(read_image(tmp_path / "f.png"), stored[..., :3])  # alpha dropped on read


def test_grey_16bit_and_palette(tmp_path):
    grey16 = np.array([[0, 65535, 257 * 100]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[0, :, 0], [0, 255, 100])
    rgb = np.random.default_rng(1).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (4, 5, 3)


def test_corrupt_and_truncated_images(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    write_image(tmp_path / "ok.jpg", image)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.jpg", "junk.png", "text.jpg", "missing.png"):
        with pytest.raises(InputError, match=name):
            read_image(tmp_path / name)


def test_write_errors(tmp_path):
    with pytest.raises(InputError, match="x.unknownext"):
        write_image(tmp_path / "x.unknownext", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InputError, match="a.jpg"):
        write_image(tmp_path / "a.jpg", np.zeros((2, 2, 4), np.uint8))  # JPEG has no alpha
    with pytest.raises(ValueError):
        write_image(tmp_path / "b.png", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        write_image(tmp_path / "c.png", np.full((2, 2, 3), np.nan))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
