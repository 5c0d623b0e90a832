"""Fuzzed FLAME files: the model ``.pkl`` (``models/formats/flame.py`` through the restricted unpickler of
``io/safe_pickle.py``), the landmark embeddings (pickled dicts, ``.pkl`` and object ``.npy``), and
generated pickle opcode streams."""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from morphable.io.safe_pickle import load_npy, load_pickle
from morphable.models.formats.flame import load_dynamic_embedding, load_flame, load_static_embedding
from tests.conftest import data_file
from tests.fuzz.harness import INTS, check, fuzz_settings, mutated, write
from tests.models.test_flame import synthetic_flame
from tests.models.test_safe_pickle import py2_dumps

pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def flame_pkl() -> bytes:
    """A small FLAME model with FLAME's keys and types (chumpy arrays, a scipy sparse regressor), as Python 2
    wrote it."""
    return py2_dumps(synthetic_flame(np.random.default_rng(11), V=12, K=302))


def test_model_pickle_mutations(flame_pkl, tmp_path):
    folder = tmp_path / "model"     # no embeddings beside the case
    folder.mkdir()

    @fuzz_settings()
    @given(mutated(flame_pkl))
    def case(data):
        check("flame pkl", load_flame, write(folder, "case.pkl", data))

    case()


@pytest.mark.parametrize("seed", ["RingNet/flame_model/flame_static_embedding.pkl",
                                  "TF_FLAME/data/flame_static_embedding_68.pkl"])
def test_static_embedding_corpus_mutations(seed, tmp_path):
    raw = data_file(seed).read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw))
    def case(data):
        check("flame embeddings", load_static_embedding, write(tmp_path, "case.pkl", data))

    case()


def test_dynamic_embedding_corpus_mutations(tmp_path):
    raw = data_file("RingNet/flame_model/flame_dynamic_embedding.npy").read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw))
    def case(data):
        check("flame embeddings", load_dynamic_embedding, write(tmp_path, "case.npy", data))

    case()


def test_plain_npy_corpus_mutations(tmp_path):
    """``load_npy`` on plain arrays (the corpus's 3D landmark files)."""
    raw = data_file("flame-fitting/data/scan_lmks.npy").read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw))
    def case(data):
        check("npy", load_npy, write(tmp_path, "case.npy", data))

    case()


def _op(code: bytes, fmt: str = "", *values) -> bytes:
    return code + (struct.pack("<" + fmt, *values) if fmt else b"")


_GLOBALS = [b"numpy.core.multiarray\n_reconstruct\n", b"numpy\nndarray\n", b"numpy\ndtype\n",
            b"chumpy.ch\nCh\n", b"scipy.sparse.csc\ncsc_matrix\n", b"copy_reg\n_reconstructor\n",
            b"__builtin__\nobject\n", b"_codecs\nencode\n", b"collections\nOrderedDict\n", b"os\nsystem\n",
            b"__builtin__\nset\n", b"numpy.core.multiarray\nscalar\n"]


@st.composite
def opcode(draw) -> bytes:
    n = draw(st.sampled_from(INTS))
    small = draw(st.integers(0, 255))
    text = draw(st.binary(max_size=12))
    return draw(st.sampled_from([
        pickle.MARK, pickle.EMPTY_DICT, pickle.EMPTY_LIST, pickle.EMPTY_TUPLE, pickle.TUPLE, pickle.TUPLE1,
        pickle.TUPLE2, pickle.TUPLE3, pickle.SETITEM, pickle.SETITEMS, pickle.APPEND, pickle.APPENDS, pickle.REDUCE,
        pickle.BUILD, pickle.NEWOBJ, pickle.NONE, pickle.NEWTRUE, pickle.POP, pickle.DUP, pickle.STOP,
        _op(pickle.BININT, "i", n % 2**32 - 2**31 if n >= 2**31 else n if n >= -2**31 else 0),
        _op(pickle.BININT1, "B", small), _op(pickle.LONG1, "B", len(text)) + text,
        _op(pickle.BINPUT, "B", small), _op(pickle.BINGET, "B", small),
        _op(pickle.LONG_BINPUT, "I", n % 2**32), _op(pickle.LONG_BINGET, "I", n % 2**32),
        _op(pickle.SHORT_BINSTRING, "B", len(text)) + text, _op(pickle.BINSTRING, "i", n % 2**31) + text,
        _op(pickle.BINUNICODE, "I", n % 2**32) + text, _op(pickle.BINBYTES8, "Q", n % 2**64) + text,
        _op(pickle.FRAME, "Q", n % 2**64), _op(pickle.BINFLOAT[:1]) + struct.pack(">d", float("nan")),
        pickle.GLOBAL + draw(st.sampled_from(_GLOBALS)), b"\x80\x02",
    ]))


def test_generated_pickle_streams(tmp_path):
    @fuzz_settings()
    @given(st.lists(opcode(), max_size=40).map(b"".join))
    def case(data):
        check("pickle (restricted)", load_pickle, write(tmp_path, "case.pkl", b"\x80\x02" + data + pickle.STOP))

    case()


def test_pickled_array_claiming_10_to_the_9_values_fails_before_allocating(tmp_path):
    """A pickled ndarray whose shape says 10^9 doubles but whose data is 24 bytes: refused, nothing allocated."""
    import tracemalloc

    from morphable.errors import ModelFileError

    raw = py2_dumps({"v_template": np.zeros(3)})
    assert raw.count(b"K\x03\x85") == 1                       # the shape tuple (3,)
    path = write(tmp_path, "huge.pkl", raw.replace(b"K\x03\x85", b"J" + (10**9).to_bytes(4, "little") + b"\x85"))
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="huge.pkl: not a readable model pickle"):
            load_pickle(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
