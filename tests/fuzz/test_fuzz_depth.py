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


def _seed_depth() -> np.ndarray:
    rng = np.random.default_rng(0)
    d = (6000 + 500 * rng.random((24, 32))).astype(np.uint16)
    d[rng.random(d.shape) < 0.2] = 0
    return d


def test_png_byte_mutations(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(_seed_depth()).save(buffer, format="PNG")

    @fuzz_settings(0.5)
    @given(mutated(buffer.getvalue()))
    def case(data):
        out = check("depth png", read_depth, write(tmp_path, "case.png", data))
        assert out is None or (out.ndim == 2 and out.dtype == np.float32 and not (out <= 0).any())

    case()


def test_npy_byte_mutations(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, _seed_depth().astype(np.float32) / 10)

    @fuzz_settings(0.5)
    @given(mutated(buffer.getvalue()))
    def case(data):
        out = check("depth npy", read_depth, write(tmp_path, "case.npy", data))
        assert out is None or (out.ndim == 2 and out.dtype == np.float32 and not (out <= 0).any())

    case()
