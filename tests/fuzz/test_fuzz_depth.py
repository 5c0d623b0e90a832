"""Fuzzed depth images (``io/depth.py``): byte-level mutations of a 16-bit PNG and of a ``.npy`` depth map."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from PIL import Image

from morphable.io.depth import read_depth
from tests.fuzz.harness import check, fuzz_settings, mutated, write

pytestmark = pytest.mark.fuzz


def _seed(suffix: str) -> bytes:
    """A 24 × 32 depth map (20 % holes) stored as ``suffix``."""
    rng = np.random.default_rng(0)
    d = (6000 + 500 * rng.random((24, 32))).astype(np.uint16)
    d[rng.random(d.shape) < 0.2] = 0
    buffer = io.BytesIO()
    if suffix == ".png":
        Image.fromarray(d).save(buffer, format="PNG")
    else:
        np.save(buffer, d.astype(np.float32) / 10)
    return buffer.getvalue()


@pytest.mark.parametrize("suffix", [".png", ".npy"])
def test_byte_mutations(suffix, tmp_path):
    @fuzz_settings(0.5)
    @given(mutated(_seed(suffix)))
    def case(data):
        out = check(f"depth {suffix[1:]}", read_depth, write(tmp_path, f"case{suffix}", data))
        assert out is None or (out.ndim == 2 and out.dtype == np.float32 and not (out <= 0).any())

    case()
