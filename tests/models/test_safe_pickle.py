"""The restricted unpickler: chumpy and scipy sparse become arrays, nothing else may be loaded or run."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import scipy.sparse

from morphable.errors import ModelFileError
from morphable.io.safe_pickle import load_npy, load_pickle, loads


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's pickler wrote: ``str``/``bytes`` as BINSTRING, Python-2 module names.

    Classes are written by the name in ``RENAME`` (so a test class can pose as ``chumpy.ch.Ch`` without
    any module of that name existing).
    """

    RENAME = {"numpy._core.multiarray": "numpy.core.multiarray", "numpy._core.numeric": "numpy.core.numeric",
              "scipy.sparse._csc": "scipy.sparse.csc", "scipy.sparse._csr": "scipy.sparse.csr",
              "copyreg": "copy_reg", "builtins": "__builtin__"}

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None)
        name = name or obj.__qualname__
        self.write(pickle.GLOBAL + f"{self.RENAME.get(module, module)}\n{name}\n".encode("ascii"))
        self.memoize(obj)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str
    dispatch[type] = save_global


def py2_dumps(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


class FakeCh:
    """Pickles like a ``chumpy.ch.Ch``: its ``__dict__`` holds the value under ``'x'``."""

    def __init__(self, x):
        self.x = np.asarray(x)
        self._dirty_vars = set()
        self._itr = None
        self._depends_on_deps = {}
        self._make_dense = False
        self._make_sparse = False


FakeCh.__module__, FakeCh.__qualname__ = "chumpy.ch", "Ch"


class FakeTranspose:
    """A chumpy expression (no stored value): must be refused."""

    def __init__(self, a):
        self.a = a


FakeTranspose.__module__, FakeTranspose.__qualname__ = "chumpy.reordering", "transpose"


def test_python2_pickle_of_chumpy_and_sparse_loads_as_arrays(tmp_path):
    rng = np.random.default_rng(0)
    value = rng.normal(size=(4, 3, 2))
    sparse = scipy.sparse.random(5, 7, density=0.4, format="csc", random_state=1)
    payload = {"shapedirs": FakeCh(value), "J_regressor": sparse, "csr": scipy.sparse.csr_array(sparse), "f": np.arange(6, dtype=np.uint32).reshape(2, 3),
               "bs_style": "lbs", "nested": [FakeCh(np.float64(2.5))]}
    data = py2_dumps(payload)
    assert b"cchumpy.ch\nCh\n" in data and b"cscipy.sparse.csc\ncsc_matrix\n" in data
    assert b"_codecs" not in data  # bytes written as Python-2 str, read back through encoding="latin1"
    path = tmp_path / "model.pkl"
    path.write_bytes(data)
    out = load_pickle(path)
    assert type(out["shapedirs"]) is np.ndarray and np.array_equal(out["shapedirs"], value)
    assert scipy.sparse.issparse(out["J_regressor"]) and out["J_regressor"].format == "csc"
    assert np.array_equal(out["J_regressor"].toarray(), sparse.toarray())
    assert out["csr"].format == "csr" and np.array_equal(out["csr"].toarray(), sparse.toarray())
    assert out["f"].dtype == np.uint32 and out["f"][1, 2] == 5
    assert out["bs_style"] == "lbs" and float(out["nested"][0]) == 2.5


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_python3_pickles_of_fake_chumpy_load(protocol, monkeypatch):
    import sys
    import types
    module = types.ModuleType("chumpy.ch")
    module.Ch = FakeCh
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", module)
    value = np.arange(12.0).reshape(4, 3)
    data = pickle.dumps({"v": FakeCh(value)}, protocol=protocol)
    monkeypatch.delitem(sys.modules, "chumpy.ch")  # loading must not need the module
    assert np.array_equal(loads(data)["v"], value)


def _payload(module: str, name: str, arg: str) -> bytes:
    """A protocol-0 pickle that calls ``module.name(arg)`` when loaded."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("subprocess", "call"),
                                         ("builtins", "eval"), ("__builtin__", "eval"), ("builtins", "exec")])
def test_code_execution_is_refused_and_runs_nothing(tmp_path, module, name):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if name in ("system", "call") else f"open({str(marker)!r}, 'w')"
    data = _payload(module, name, command)
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(ModelFileError) as e:
        load_pickle(path)
    assert str(path) in str(e.value) and f"{module}.{name}" in str(e.value)
    assert not marker.exists()


def test_plain_pickle_would_have_run_the_payload(tmp_path):
    """The payload above is live: plain pickle runs it (checked with a harmless builtin)."""
    assert pickle.loads(_payload("builtins", "len", "abc")) == 3
    with pytest.raises(ModelFileError, match="builtins.len"):
        loads(_payload("builtins", "len", "abc"))


def test_reduce_on_allowed_names_cannot_escape():
    # copy_reg._reconstructor may only build inert recorders, never arbitrary classes
    evil = b"ccopy_reg\n_reconstructor\n(c__builtin__\nobject\nc__builtin__\nobject\nNtR."
    with pytest.raises(ModelFileError, match="not a readable"):
        loads(evil)
    with pytest.raises(ModelFileError, match="not a readable"):
        loads(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")  # only latin-1 encoding is allowed
    with pytest.raises(ModelFileError, match="persistent id"):
        loads(b"P1\n.")
    # a crafted state may not rewrite the allowed functions/classes (here: a recorder's 'source')
    recorder = b"cchumpy.ch\nCh\n"
    with pytest.raises(ModelFileError, match="BUILD on type"):
        loads(recorder + b"(N}Vsource\nVscipy.sparse.csc.csc_matrix\nstb.")
    with pytest.raises(ModelFileError, match="BUILD on function"):
        loads(b"ccopy_reg\n_reconstructor\n(N}V__defaults__\n(I1\nttb.")
    assert loads(py2_dumps({"x": FakeCh(np.ones(2))}))["x"].shape == (2,)
    # dtype(..., copy=0) would hand back numpy's shared float64 descriptor; its state must stay untouched
    shared = b"cnumpy\ndtype\n(Vf8\nI0\nI0\ntR(I3\nV>\nNNNI-1\nI-1\nI0\ntb."
    assert loads(shared).byteorder == ">" and np.dtype("f8").isnative and np.dtype("f8").byteorder == "="


def test_chumpy_expression_without_value_is_refused():
    data = py2_dumps({"posedirs": FakeTranspose(FakeCh(np.ones(3)))})
    with pytest.raises(ModelFileError, match="chumpy.reordering.transpose"):
        loads(data, "m.pkl")


def test_truncated_and_flipped_pickles_raise_only_model_file_error():
    data = py2_dumps({"x": FakeCh(np.arange(20.0)), "J": scipy.sparse.eye(4, format="csc")})
    rng = np.random.default_rng(3)
    for cut in range(0, len(data), 7):
        with pytest.raises(ModelFileError):
            loads(data[:cut], "t.pkl")
    for _ in range(300):
        bad = bytearray(data)
        bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
        try:
            loads(bytes(bad), "f.pkl")
        except ModelFileError:
            pass  # a flip inside array bytes may still load; anything but ModelFileError fails the test


def test_load_npy_plain_and_object(tmp_path):
    plain = tmp_path / "plain.npy"
    np.save(plain, np.arange(6).reshape(2, 3))
    assert load_npy(plain).shape == (2, 3)
    obj = tmp_path / "dict.npy"
    np.save(obj, {"lmk_face_idx": np.arange(4, dtype=np.uint32), "b": [np.ones(2)]}, allow_pickle=True)
    d = load_npy(obj)
    assert np.array_equal(d["lmk_face_idx"], np.arange(4)) and np.array_equal(d["b"][0], np.ones(2))
    evil = tmp_path / "evil.npy"
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    header += b" " * (63 - len(header)) + b"\n"
    evil.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
                     + _payload("os", "system", f"touch {tmp_path / 'pwned'}"))
    with pytest.raises(ModelFileError, match="os.system"):
        load_npy(evil)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ModelFileError, match="not a readable .npy"):
        (tmp_path / "bad.npy").write_bytes(b"nonsense")
        load_npy(tmp_path / "bad.npy")
    with pytest.raises(ModelFileError, match="cannot read"):
        load_pickle(tmp_path / "missing.pkl")
