"""Fuzzed BFM files (``models/formats/bfm.py``: 2009 ``.mat``, 2017 ``.h5``, Guo's ``Exp_Pca.bin``), dlib's
``.dat`` network (``identity/dlib_serialization.py``) and the ICT FaceKit readers (``models/formats/ict.py``:
the neutral OBJ with its UVs and polygons, the per-shape OBJ files, ``vertex_indices.json``)."""
from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import given
from hypothesis import strategies as st

from morphable.identity.dlib_serialization import default_weights_path, read_dlib_face_resnet
from morphable.models.formats.bfm import load_bfm2009, load_bfm2017, read_exp_pca
from morphable.models.formats.ict import read_neutral_obj, read_obj_vertices, read_vertex_indices
from tests.conftest import data_file
from tests.fuzz.harness import FLOATS, INTS, check, fuzz_settings, mutated, write
from tests.models.test_bfm import _grid_face, _write_bfm2009, _write_bfm2017

pytestmark = pytest.mark.fuzz


# --- BFM 2009 .mat -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bfm_files(tmp_path_factory) -> dict[str, bytes]:
    """A small BFM 2009 ``.mat`` and BFM 2017 ``.h5`` with the real layouts (see tests/models/test_bfm.py)."""
    folder = tmp_path_factory.mktemp("bfm")
    vertices, triangles = _grid_face()
    _write_bfm2009(folder / "m.mat", vertices, triangles)
    _write_bfm2017(folder / "m.h5", vertices, triangles)
    return {"mat": (folder / "m.mat").read_bytes(), "h5": (folder / "m.h5").read_bytes()}


def _discoverless(load):
    return lambda p: load(p, discover=False)


def test_bfm2009_mat_mutations(bfm_files, tmp_path):
    @fuzz_settings()
    @given(mutated(bfm_files["mat"]))
    def case(data):
        check("bfm .mat", _discoverless(load_bfm2009), write(tmp_path, "case.mat", data))

    case()


@pytest.mark.parametrize("seed", ["PRNet/TestImages/AFLW2000/image00050.mat",
                                  "face3d/examples/Data/IBUG_image_008_1_0.mat"])
def test_real_mat_files_mutations(seed, tmp_path):
    """Real MATLAB files from the corpus (not BFM: the loader must say which variables are missing)."""
    raw = data_file(seed).read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw))
    def case(data):
        check("bfm .mat", _discoverless(load_bfm2009), write(tmp_path, "case.mat", data))

    case()


_MAT_VALUES = st.one_of(
    st.sampled_from(FLOATS).map(lambda v: np.full((3, 1), v)),
    st.sampled_from([0, 1, 2, 3, 4, 6, 9]).flatmap(lambda r: st.sampled_from([0, 1, 2, 3]).map(
        lambda c: np.ones((r, c)))),
    st.just(np.array(["text"])), st.just(np.zeros((2, 2, 2))), st.just(np.array([[1 + 2j]])),
    st.just({"a": np.ones(2)}), st.just(np.array([[-1.0, 0.0, 5.0]])), st.just(np.array([[0.5, 1.0, 2.0]])),
    st.just(np.empty((0, 3))))


@st.composite
def bfm_variables(draw, base: dict) -> bytes:
    """The real variables with 1-3 of them replaced by values of other shapes, types or special numbers."""
    raw = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(raw)))
        if draw(st.booleans()):
            raw.pop(key)
        else:
            raw[key] = draw(_MAT_VALUES)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, raw)
    return buffer.getvalue()


def test_bfm2009_variable_mutations(bfm_files, tmp_path):
    base = {k: v for k, v in scipy.io.loadmat(io.BytesIO(bfm_files["mat"])).items() if not k.startswith("__")}

    @fuzz_settings()
    @given(bfm_variables(base))
    def case(data):
        check("bfm .mat", _discoverless(load_bfm2009), write(tmp_path, "case.mat", data))

    case()


# --- BFM 2017 .h5 --------------------------------------------------------------------------------------
def test_bfm2017_h5_mutations(bfm_files, tmp_path):
    @fuzz_settings()
    @given(mutated(bfm_files["h5"]))
    def case(data):
        check("bfm .h5", _discoverless(load_bfm2017), write(tmp_path, "case.h5", data))

    case()


@st.composite
def h5_datasets(draw, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(out)))
        if draw(st.booleans()):
            out.pop(key)
        else:
            out[key] = draw(st.one_of(_MAT_VALUES.filter(lambda v: isinstance(v, np.ndarray) and v.dtype.kind != "U"),
                                      st.just(out[key].T), st.just(np.float64(3.0))))
    return out


def test_bfm2017_dataset_mutations(bfm_files, tmp_path):
    with h5py.File(io.BytesIO(bfm_files["h5"]), "r") as f:
        base = {}
        f.visititems(lambda name, item: base.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)

    @fuzz_settings()
    @given(h5_datasets(base))
    def case(datasets):
        path = tmp_path / "case.h5"
        with h5py.File(path, "w") as f:
            for name, value in datasets.items():
                f.create_dataset(name, data=value)
        check("bfm .h5", _discoverless(load_bfm2017), path)

    case()


def test_exp_pca_mutations(tmp_path):
    rng = np.random.default_rng(6)
    K, M = 3, 20
    raw = np.int32(K).tobytes() + rng.normal(size=3 * M * (K + 1)).astype("<f4").tobytes()
    std = write(tmp_path, "std_exp.txt", b"1.0\n2.0\n0.5\n")

    @fuzz_settings(0.5)
    @given(st.one_of(mutated(raw), st.sampled_from(INTS).map(lambda k: (k % 2**32).to_bytes(4, "little") + raw[4:])))
    def case(data):
        check("bfm Exp_Pca.bin", lambda p: read_exp_pca(p, std), write(tmp_path, "Exp_Pca.bin", data))

    case()


# --- dlib .dat --------------------------------------------------------------------------------------------
def test_dlib_resnet_mutations(tmp_path):
    path = default_weights_path()
    if not path.is_file():
        pytest.skip(f"dlib's network file not installed ({path})")
    raw = path.read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw))
    def case(data):
        check("dlib .dat", read_dlib_face_resnet, write(tmp_path, "case.dat", data))

    case()


@st.composite
def dlib_stream(draw, head: bytes) -> bytes:
    """The real file's first bytes (versions, names), then dlib integers with special values."""
    out = head[:draw(st.integers(0, len(head)))]
    for _ in range(draw(st.integers(0, 12))):
        value = draw(st.sampled_from(INTS))
        size = draw(st.integers(0, 15))
        control = size | (0x80 if value < 0 else 0) | draw(st.sampled_from([0, 0, 0, 0x10]))
        out += bytes([control]) + abs(value).to_bytes(16, "little")[:size]
    return out


def test_dlib_generated_streams(tmp_path):
    path = default_weights_path()
    if not path.is_file():
        pytest.skip(f"dlib's network file not installed ({path})")
    with open(path, "rb") as f:
        head = f.read(600)

    @fuzz_settings()
    @given(dlib_stream(head))
    def case(data):
        check("dlib .dat", read_dlib_face_resnet, write(tmp_path, "case.dat", data))

    case()


# --- ICT FaceKit ------------------------------------------------------------------------------------------
ICT = "ICT-FaceKit/FaceXModel/"


def test_ict_neutral_obj_mutations(tmp_path):
    raw = data_file(ICT + "generic_neutral_mesh.obj").read_bytes()

    @fuzz_settings(0.25, deadline_s=20)
    @given(mutated(raw, text=True))
    def case(data):
        check("ict obj", read_neutral_obj, write(tmp_path, "generic_neutral_mesh.obj", data))

    case()


def test_ict_shape_obj_mutations(tmp_path):
    raw = data_file("ICT-FaceKit/FaceXModel_subset/identity000.obj").read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw, text=True))
    def case(data):
        check("ict obj", read_obj_vertices, write(tmp_path, "identity000.obj", data))

    case()


def test_ict_vertex_indices_mutations(tmp_path):
    raw = data_file(ICT + "vertex_indices.json").read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw, text=True))
    def case(data):
        check("ict vertex_indices.json", read_vertex_indices, write(tmp_path, "vertex_indices.json", data))

    case()


def test_mat_variable_claiming_10_to_the_12_values_fails_before_allocating(tmp_path):
    """A MATLAB matrix header saying 10^6 x 10^6 over 4 stored doubles: refused without allocating."""
    import tracemalloc

    from morphable.errors import ModelFileError

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"shapeMU": np.zeros((4, 1))})
    raw = buffer.getvalue()
    dims = (4).to_bytes(4, "little") + (1).to_bytes(4, "little")
    assert raw.count(dims) == 1
    path = write(tmp_path, "huge.mat", raw.replace(dims, (10**6).to_bytes(4, "little") * 2))
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="huge.mat: not a readable MATLAB .mat file"):
            load_bfm2009(path, discover=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
