"""Fuzzed Surrey Face Model / eos files (``models/formats/sfm.py``): the cereal model and blendshape files
and the text/JSON side files."""
from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from morphable.errors import ModelFileError
from morphable.models.formats.sfm import (load_sfm, read_contours, read_edge_topology, read_eos_blendshapes,
                                          read_ibug_mapping, read_symmetry)
from tests.conftest import data_file
from tests.fuzz.harness import INTS, check, fuzz_settings, mutated, write

pytestmark = pytest.mark.fuzz

SHARE = "eos/share/"


def _seed(name: str) -> bytes:
    return data_file(SHARE + name).read_bytes()


def test_model_corpus_mutations(tmp_path):
    raw = _seed("sfm_shape_3448.bin")

    @fuzz_settings()
    @given(mutated(raw))
    def case(data):
        check("sfm .bin", load_sfm, write(tmp_path, "case.bin", data))   # no side files under this name

    case()


def test_blendshapes_corpus_mutations(tmp_path):
    raw = _seed("expression_blendshapes_3448.bin")

    @fuzz_settings(0.5)
    @given(mutated(raw))
    def case(data):
        check("sfm blendshapes .bin", read_eos_blendshapes, write(tmp_path, "case.bin", data))

    case()


@pytest.fixture(scope="module")
def eos_written(tmp_path_factory):
    """Version-4 files written by eos-py itself: colour, PCA or blendshape expressions, landmarks, UV triangles."""
    eos = pytest.importorskip("eos")
    from tests.models.test_sfm import _synthetic_eos_file

    folder = tmp_path_factory.mktemp("eos")
    return [_synthetic_eos_file(eos, folder, kind)[0].read_bytes() for kind in ("pca", "blendshapes")]


@pytest.mark.parametrize("which", [0, 1])
def test_eos_written_v4_mutations(eos_written, which, tmp_path):
    @fuzz_settings(0.5)
    @given(mutated(eos_written[which]))
    def case(data):
        check("sfm .bin", load_sfm, write(tmp_path, "case.bin", data))

    case()


SIDE = {"ibug_to_sfm.txt": read_ibug_mapping, "sfm_model_contours.json": read_contours,
        "sfm_reference_symmetry.txt": read_symmetry, "sfm_3448_edge_topology.json": read_edge_topology}


@pytest.mark.parametrize("name", sorted(SIDE))
def test_side_file_mutations(name, tmp_path):
    raw = _seed(name)
    share = 0.3 if name.startswith("sfm_3448_edge") else 0.5

    @fuzz_settings(share)
    @given(mutated(raw, text=True))
    def case(data):
        check("sfm side files", SIDE[name], write(tmp_path, name, data))

    case()


def test_side_files_through_the_loader(tmp_path):
    """Mutated side files passed to ``load_sfm``: their ids are checked against the model."""
    model = data_file(SHARE + "sfm_shape_3448.bin")
    names = {"landmarks": "ibug_to_sfm.txt", "contours": "sfm_model_contours.json",
             "symmetry": "sfm_reference_symmetry.txt"}
    seeds = {k: _seed(n) for k, n in names.items()}

    @fuzz_settings(0.5)
    @given(st.sampled_from(sorted(names)), st.data())
    def case(key, data):
        side = write(tmp_path, names[key], data.draw(mutated(seeds[key], text=True)))
        check("sfm side files", lambda p: load_sfm(model, **{key: p}), side)

    case()


def _cereal_matrix(rows: int, cols: int, payload: bytes = b"") -> bytes:
    return struct.pack("<ii", rows, cols) + payload


@st.composite
def cereal_model(draw) -> bytes:
    """A version 1-4 header followed by matrices and vectors whose sizes are drawn from special integers."""
    out = struct.pack("<I", draw(st.integers(0, 5)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["matrix", "vector", "bytes"]))
        if kind == "matrix":
            rows, cols = (draw(st.sampled_from([0, 1, 3, 9, -1, 2**31 - 1, 10**6])) for _ in range(2))
            out += _cereal_matrix(rows, cols, draw(st.binary(max_size=64)))
        elif kind == "vector":
            out += struct.pack("<Q", draw(st.sampled_from(INTS)) % 2**64) + draw(st.binary(max_size=64))
        else:
            out += draw(st.binary(max_size=32))
    return out


def test_generated_cereal(tmp_path):
    @fuzz_settings()
    @given(cereal_model())
    def case(data):
        check("sfm .bin", load_sfm, write(tmp_path, "case.bin", data))

    case()


@pytest.mark.parametrize("header", [
    struct.pack("<Iii", 1, 10**9, 1000),                                   # a 10^12-value mean
    struct.pack("<Iii", 1, 0, 0) * 1 + struct.pack("<ii", 0, 0) * 2 + struct.pack("<Q", 10**12),  # 10^12 triangles
])
def test_huge_sizes_fail_before_allocating(tmp_path, header):
    path = write(tmp_path, "huge.bin", header + b"\0" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="huge.bin"):
            load_sfm(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
