"""Fuzzed ``.npz`` readers: the native model format (``models/formats/npz.py``) and ICT's packed npz
(``models/formats/ict.py``), byte-level and array-level (wrong dtypes, shapes, ids, headers)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from morphable.models.formats.ict import read_packed
from morphable.models.formats.npz import load_npz, save_npz
from tests.conftest import data_file
from tests.fuzz.harness import FLOATS, INTS, check, fuzz_settings, mutated, write
from tests.models.test_npz import synthetic

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> dict[str, bytes]:
    """Native files: a synthetic model (every optional buffer) and, with the corpus, the SFM converted."""
    folder = tmp_path_factory.mktemp("npz")
    save_npz(synthetic(), folder / "synthetic.npz")
    out = {"synthetic": (folder / "synthetic.npz").read_bytes()}
    return out


def _arrays(raw: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _savez(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_native_byte_mutations(native, tmp_path):
    @fuzz_settings()
    @given(mutated(native["synthetic"]))
    def case(data):
        check("npz (native)", load_npz, write(tmp_path, "case.npz", data))

    case()


def test_load_any_dispatch_mutations(native, tmp_path):
    """``load_any`` (what ``load_model(path)`` calls): the zip sniffing that picks the native or ICT loader."""
    from morphable.models.formats import load_any

    @fuzz_settings(0.5)
    @given(mutated(native["synthetic"]))
    def case(data):
        check("npz (load_any)", load_any, write(tmp_path, "case.npz", data))

    case()


def test_native_sfm_byte_mutations(tmp_path):
    from morphable.models.formats.sfm import load_sfm

    save_npz(load_sfm(data_file("eos/share/sfm_shape_3448.bin")), tmp_path / "sfm.npz")
    raw = (tmp_path / "sfm.npz").read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw))
    def case(data):
        check("npz (native)", load_npz, write(tmp_path, "case.npz", data))

    case()


def _mutate_value(draw, a: np.ndarray) -> np.ndarray:
    kind = draw(st.sampled_from(["dtype", "shape", "special", "empty", "scalar", "string", "ids"]))
    if kind == "dtype":
        with np.errstate(invalid="ignore", over="ignore"):
            return a.astype(draw(st.sampled_from([np.float16, np.float32, np.int8, np.uint64, np.bool_, np.complex64])))
    if kind == "shape":
        return a.reshape(-1) if a.ndim != 1 else np.stack([a, a])
    if kind == "special" and a.size:
        b = a.astype(np.float64).copy().reshape(-1)
        b[draw(st.integers(0, b.size - 1))] = draw(st.sampled_from(FLOATS))
        with np.errstate(invalid="ignore", over="ignore"):
            return b.reshape(a.shape).astype(a.dtype) if a.dtype.kind == "f" else b.reshape(a.shape)
    if kind == "ids" and a.size:
        b = a.astype(np.int64).copy().reshape(-1)
        b[draw(st.integers(0, b.size - 1))] = draw(st.sampled_from(INTS))
        return b.reshape(a.shape)
    if kind == "empty":
        return a[:0]
    if kind == "scalar":
        return np.array(draw(st.sampled_from([0, -1, 3.5, 10**12])))
    return np.array("text")


_HEADER_VALUES = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=5), st.sampled_from(
    ["morphable-npz", "flame", "morphable", "float32", "float16", "pca", "blendshapes"]), st.lists(st.integers(0, 3),
                                                                                                 max_size=3))


@st.composite
def array_mutations(draw, arrays: dict[str, np.ndarray]) -> bytes:
    """1-3 array-level changes: drop an entry, change one's dtype/shape/values, or edit the JSON header."""
    arrays = dict(arrays)
    for _ in range(draw(st.integers(1, 3))):
        if not arrays:
            break
        key = draw(st.sampled_from(sorted(arrays)))
        action = draw(st.sampled_from(["drop", "value", "header", "add"]))
        if action == "drop":
            arrays.pop(key)
        elif action == "add":
            arrays[draw(st.sampled_from(["region_7", "flame_parents", "polygons_ids", "meta_99", "uv"]))] = \
                np.arange(draw(st.integers(0, 5)))
        elif action == "header" and "header" in arrays:
            header = json.loads(str(arrays["header"]))
            field = draw(st.sampled_from(sorted(header) + ["model"]))
            header[field] = draw(_HEADER_VALUES)
            arrays["header"] = np.array(json.dumps(header))
        elif arrays[key].dtype.kind in "biuf":
            arrays[key] = _mutate_value(draw, arrays[key])
    return _savez(arrays)


def test_native_array_mutations(native, tmp_path):
    arrays = _arrays(native["synthetic"])

    @fuzz_settings()
    @given(array_mutations(arrays))
    def case(data):
        check("npz (native)", load_npz, write(tmp_path, "case.npz", data))

    case()


@pytest.fixture(scope="module")
def packed() -> bytes:
    """A small packed ICT npz (names (M,), vertices (M, V, 3) float32), as the corpus's but 5 x 40."""
    rng = np.random.default_rng(5)
    names = np.array(["generic_neutral_mesh", "identity000", "identity001", "jawOpen", "eyeBlink_L"])
    return _savez({"names": names, "vertices": rng.normal(size=(5, 40, 3)).astype(np.float32)})


def test_packed_ict_mutations(packed, tmp_path):
    arrays = _arrays(packed)

    @fuzz_settings()
    @given(st.one_of(mutated(packed), array_mutations(arrays)))
    def case(data):
        check("npz (ICT packed)", read_packed, write(tmp_path, "case.npz", data))

    case()
