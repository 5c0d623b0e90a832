"""Restricted unpickling of model files written by other tools (FLAME ``.pkl``, pickled ``.npy`` dicts).

A pickle is a program: plain :func:`pickle.load` imports and calls whatever the file names, so a model
file could run ``os.system``. :class:`RestrictedUnpickler` resolves only an allow-list of globals and
raises :class:`~morphable.errors.ModelFileError` (naming the file and the class) for anything else.

What is allowed, and why:

* **numpy reconstruction**: ``numpy.core.multiarray._reconstruct`` / ``scalar``, ``numpy.ndarray``,
  ``numpy.dtype``, ``numpy.core.numeric._frombuffer`` (and their ``numpy._core`` names from numpy 2).
  These rebuild arrays from their bytes; nothing else is reachable through them.
* **chumpy arrays** (FLAME/SMPL files were written with chumpy, which no longer installs): every class
  in a ``chumpy.*`` module resolves to an *inert recorder* that only stores its pickled state. After
  loading, a recorder whose state holds the array under ``'x'`` (``chumpy.ch.Ch`` stores its value there,
  see ``Ch.compute_r``/``__getstate__`` in mattloper/chumpy ``chumpy/ch.py``) becomes that plain
  ``np.ndarray``; a chumpy *expression* without a stored value is refused.
* **scipy sparse** ``csc_matrix``/``csr_matrix`` (``scipy.sparse.csc``, ``scipy.sparse._csc``, ...) and
  the ``csc_array``/``csr_array`` forms (returned as ``csc_matrix``/``csr_matrix``):
  also recorded inertly; the matrix is then built with the public constructor from the state's
  ``data``/``indices``/``indptr``/``_shape`` arrays, so no scipy ``__setstate__`` runs.
* **containers**: ``set``, ``frozenset``, ``object`` (for ``copy_reg._reconstructor``, replaced here by
  a version that only instantiates recorders), ``collections.OrderedDict``, and ``_codecs.encode``
  restricted to latin-1 (how Python 3 writes ``bytes`` at protocol ≤ 2).

Python-2 pickles store arrays' bytes as ``str``; they are read with ``encoding="latin1"``, which numpy
turns back into the original bytes.
"""
from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from morphable.errors import ModelFileError
from morphable.io.safe_npz import READ_ERRORS, read_header, read_npy

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")
_SPARSE_NAMES = ("csc_matrix", "csr_matrix", "csc_array", "csr_array")
_SPARSE_MODULES = ("scipy.sparse", "scipy.sparse.csc", "scipy.sparse.csr",  # Python 2 era and public names
                   "scipy.sparse._csc", "scipy.sparse._csr", "scipy.sparse._arrays")  # scipy >= 1.8


class _Recorded:
    """An inert stand-in for a foreign class: it only keeps the state the pickle gives it."""

    source = "?"  # the pickled class, ``module.name`` (set per subclass)

    def __setstate__(self, state: Any) -> None:
        self.state = state


_recorders: dict[str, type[_Recorded]] = {}


def _recorder(module: str, name: str) -> type[_Recorded]:
    key = f"{module}.{name}"
    if key not in _recorders:
        _recorders[key] = type(f"Recorded_{name}", (_Recorded,), {"source": key})
    return _recorders[key]


def _reconstructor(cls: Any, base: Any, state: Any) -> _Recorded:
    """``copy_reg._reconstructor`` (protocol 0/1 new-style objects), limited to recorders."""
    if not (isinstance(cls, type) and issubclass(cls, _Recorded)) or base is not object or state is not None:
        raise pickle.UnpicklingError(f"copy_reg._reconstructor called on {cls!r}")
    return cls.__new__(cls)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 uses it for ``bytes`` at protocol <= 2 (latin-1 only)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype`` as pickles call it, always returning a copy: the pickle's BUILD then sets the state
    of that copy, never of numpy's shared built-in descriptors. (Python 2 files pass 0/1 as flags.)"""
    return np.dtype(spec, bool(align), True)


_ALLOWED: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _multiarray._reconstruct for m in _NUMPY_MODULES},
    **{(m, "scalar"): _multiarray.scalar for m in _NUMPY_MODULES},
    **{(m, "_frombuffer"): _numeric._frombuffer for m in _NUMERIC_MODULES},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    **{(m, "set"): set for m in ("__builtin__", "builtins")},
    **{(m, "frozenset"): frozenset for m in ("__builtin__", "builtins")},
    **{(m, "object"): object for m in ("__builtin__", "builtins")},
    **{(m, "_reconstructor"): _reconstructor for m in ("copy_reg", "copyreg")},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only the allow-list above (see the module docstring).

    It extends the pure-Python unpickler, whose memo is a dict: the C one grows its memo *array* to any
    index the file names, so one corrupted ``LONG_BINPUT`` can allocate gigabytes. Model pickles hold a
    few hundred opcodes (arrays are single byte strings), so the pure-Python speed costs nothing.

    Args:
        file: a binary file object positioned at the pickle.
        path: the file's name, for error messages.
    """

    def __init__(self, file: Any, path: str | os.PathLike):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module == "chumpy" or module.startswith("chumpy.")) and name.isidentifier():
            return _recorder(module, name)
        if module in _SPARSE_MODULES and name in _SPARSE_NAMES:
            return _recorder(module, name)
        raise ModelFileError(self.path, f"refusing to load {module}.{name}: a model file may only contain "
                                        "numpy arrays, scipy sparse matrices and chumpy arrays")

    def persistent_load(self, pid: Any) -> Any:
        raise ModelFileError(self.path, "refusing to load a persistent id (not a plain model pickle)")

    def _load_build(self) -> None:
        """BUILD (set an object's state) only on recorders, arrays and dtypes: never on the allowed
        functions or classes themselves, whose attributes a crafted state could otherwise rewrite."""
        target = self.stack[-2]
        if isinstance(target, type) or not isinstance(target, (_Recorded, np.ndarray, np.dtype)):
            raise pickle.UnpicklingError(f"BUILD on {type(target).__name__}")
        pickle._Unpickler.load_build(self)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build


def _state_dict(obj: _Recorded) -> dict:
    state = getattr(obj, "state", None)
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):  # (dict, slots)
        state = state[0]
    return state if isinstance(state, dict) else {}


def _resolve(obj: Any, path: str | os.PathLike, depth: int = 0) -> Any:
    """Replace recorders (chumpy arrays, sparse matrices) by numpy/scipy objects, recursively."""
    if depth > 50:
        raise ModelFileError(path, "pickle nests containers too deeply")
    if isinstance(obj, _Recorded):
        state = _state_dict(obj)
        if obj.source.startswith("chumpy"):
            if "x" not in state:
                raise ModelFileError(path, f"{obj.source} is a chumpy expression without a stored value; "
                                           "re-save the model with plain arrays")
            return np.asarray(_resolve(state["x"], path, depth + 1))
        name = obj.source.rsplit(".", 1)[1]
        try:
            parts = [np.asarray(state[k]) for k in ("data", "indices", "indptr")]
            shape = tuple(int(s) for s in state.get("_shape", state.get("shape")))
            make = scipy.sparse.csc_matrix if name.startswith("csc") else scipy.sparse.csr_matrix
            return make(tuple(parts), shape=shape)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(path, f"{obj.source} with an unreadable state ({e})") from None
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, path, depth + 1)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v, path, depth + 1) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        out = np.empty(obj.shape, dtype=object)
        for i, v in np.ndenumerate(obj):
            out[i] = _resolve(v, path, depth + 1)
        return out
    return obj


def loads(data: bytes, path: str | os.PathLike = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`, then turn chumpy/sparse records into arrays.

    Raises:
        ModelFileError: naming ``path`` for a refused class, a truncated or corrupted stream.
    """
    try:
        with warnings.catch_warnings():  # Python 2 STRING opcodes with stray backslashes: not worth a warning
            warnings.filterwarnings("ignore", message="invalid escape sequence", category=DeprecationWarning)
            obj = RestrictedUnpickler(io.BytesIO(data), path).load()
    except ModelFileError:
        raise
    except Exception as e:  # truncated/corrupted streams raise anything from EOFError to ValueError
        raise ModelFileError(path, f"not a readable model pickle ({type(e).__name__}: {e})") from None
    return _resolve(obj, path)


def load_pickle(path: str | os.PathLike) -> Any:
    """Read a pickle file (Python 2 or 3) through :func:`loads`."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ModelFileError(path, f"cannot read ({e.strerror or e})") from None
    return loads(data, path)


def load_npy(path: str | os.PathLike) -> Any:
    """Read a ``.npy`` file; object arrays (pickled dicts) go through the restricted unpickler.

    Plain arrays are read with :func:`morphable.io.safe_npz.read_npy` (no pickles; the header's size is
    checked against the file's before anything is allocated). An object array's payload is a pickle
    of the array; it is unpickled by :func:`loads`. A 0-d object array (how ``np.save`` stores a dict)
    is returned as its item.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            _, _, dtype = read_header(f, size, objects=True)
            if not dtype.hasobject:
                return read_npy(path)  # its size checked against the file's before it is allocated
            payload = f.read()
    except OSError as e:
        raise ModelFileError(path, f"cannot read ({e.strerror or e})") from None
    except READ_ERRORS as e:
        problem = " ".join(str(e).split())
        raise ModelFileError(path, f"not a readable .npy file ({type(e).__name__}: {problem})") from None
    array = loads(payload, path)
    if not isinstance(array, np.ndarray):
        raise ModelFileError(path, f"object .npy holds a {type(array).__name__}, not an array")
    return array.item() if array.shape == () else array
