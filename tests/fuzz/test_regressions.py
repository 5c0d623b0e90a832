"""The minimal cases of the bugs the fuzzers found, kept as plain regression tests (issue 16, part 6).

Each one failed before its fix with a foreign exception, a numpy warning or a huge allocation.
"""
from __future__ import annotations

import io
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest

from morphable.errors import InputError, ModelFileError
from morphable.io.params import read_fit_params
from morphable.io.ply import read_ply
from morphable.io.safe_pickle import load_npy
from morphable.models.formats.ict import read_packed
from morphable.models.formats.npz import load_npz
from morphable.train.data.manifest import load_dataset, read_manifest


def _fails_small(call, match: str, limit: int = 10 * 2**20) -> None:
    """``call()`` raises ModelFileError matching ``match`` while allocating less than ``limit`` bytes."""
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match=match):
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, f"{peak} bytes allocated"


# --- PLY: ascii integer properties were cast from float64 without a check ------------------------------
@pytest.mark.parametrize("token", ["nan", "3.7", "1e20", "-1e20"])
def test_ply_ascii_face_id_that_is_not_an_integer(tmp_path, token):
    """Was: a RuntimeWarning ("invalid value encountered in cast") and a silently truncated id."""
    path = tmp_path / "bad.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
                    "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
                    f"0 0 0\n1 0 0\n0 1 0\n1 1 0\n3 0 1 {token}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="bad.ply: element 'face': a value of an integer property"):
            read_ply(path)


def test_ply_ascii_integer_colour_out_of_range(tmp_path):
    path = tmp_path / "bad.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\nproperty float z\n"
                    "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n0 0 0 255 256 0\n")
    with pytest.raises(InputError, match="integer property"):
        read_ply(path)


def test_ply_ascii_valid_file_still_reads(tmp_path):
    path = tmp_path / "ok.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                    "property uchar red\nproperty uchar green\nproperty uchar blue\n"
                    "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
                    "0 0 0 255 0 0\n1 0 0 0 255 0\n0 1 1e300 0 0 255\n3 0 1 2\n")
    with pytest.raises(InputError, match="non-finite"):   # 1e300 does not fit float32: inf, then rejected
        read_ply(path)
    path.write_text(path.read_text().replace("1e300", "0.5"))
    mesh = read_ply(path)
    assert mesh.faces.tolist() == [[0, 1, 2]] and mesh.colors[1].tolist() == [0.0, 1.0, 0.0]


# --- npy / npz: numpy allocated what a header claimed before reading the data --------------------------
def _npy(shape, dtype="<f8", payload=b"") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("load", [load_npz, read_packed])
def test_npz_member_claiming_10_to_the_12_values_fails_before_allocating(tmp_path, load):
    """Was: numpy's ``_ArrayMemoryError: Unable to allocate 21.8 TiB`` (a foreign exception), or gigabytes
    committed before the short read failed."""
    path = tmp_path / "huge.npz"
    path.write_bytes(_zip({"header.npy": _npy((), "<U4", "abcd".encode("utf-32-le")),
                           "names.npy": _npy((10**12,), "<U8"), "vertices.npy": _npy((10**12, 3, 3), "<f8", b"\0" * 72),
                           "mean.npy": _npy((10**12, 3), "<f8", b"\0" * 48)}))
    _fails_small(lambda: load(path), r"huge.npz: .*claims shape \(1000000000000")


def test_npz_member_with_a_lying_uncompressed_size(tmp_path):
    """A stored member whose directory entry claims more bytes than the file has."""
    data = bytearray(_zip({"mean.npy": _npy((2,), "<f8", b"\0" * 16)}))
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (2**31).to_bytes(4, "little")  # uncompressed size in the central directory
    path = tmp_path / "liar.npz"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="liar.npz"):
        load_npz(path)


def test_npy_claiming_10_to_the_12_values_fails_before_allocating(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(_npy((10**12,), "<f8", b"\0" * 8))
    _fails_small(lambda: load_npy(path), r"huge.npy: .*only 8 bytes follow")
    path.write_bytes(_npy((1,), "<f8", b"\0" * 8))
    assert load_npy(path).tolist() == [0.0]


@pytest.mark.parametrize("header", [
    b"\x93NUMPY\x00\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",    # version 0.1
    b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{'descr': '<f8'",                                  # 2 GB header length
    b"\x93NUMPY\x01\x00v\x00'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",     # unbalanced braces
])
def test_npy_with_a_broken_header(tmp_path, header):
    """Was: ``MemoryError`` (numpy read the 2 GB header length it was given) and ``tokenize.TokenError``."""
    path = tmp_path / "broken.npy"
    path.write_bytes(header.ljust(128, b" ") + b"\n" + b"\0" * 8)
    _fails_small(lambda: load_npy(path), "broken.npy: not a readable .npy file")


def test_flame_values_that_overflow_in_millimetres(tmp_path):
    """Was: ``RuntimeWarning: overflow encountered in multiply`` converting 1e306 m to mm, then an inf model."""
    from morphable.models.formats.flame import load_flame
    from tests.models.test_flame import synthetic_flame
    from tests.models.test_safe_pickle import FakeCh, py2_dumps

    d = synthetic_flame(np.random.default_rng(1), V=12, K=302)
    template = d["v_template"].x.copy()
    template[3, 1] = 1e306
    d["v_template"] = FakeCh(template)
    path = tmp_path / "big.pkl"
    path.write_bytes(py2_dumps(d))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelFileError, match="big.pkl: 'v_template' has values beyond"):
            load_flame(path)


# --- PLY binary: a signalling NaN warned when cast; float face ids could be NaN -------------------------
def _binary_ply(vertex_bytes: bytes, face_type: str = "int", face_bytes: bytes = b"") -> bytes:
    return ("ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
            f"property float z\nelement face {1 if face_bytes else 0}\nproperty list uchar {face_type} vertex_indices\n"
            "end_header\n").encode() + vertex_bytes + face_bytes


def test_ply_signalling_nan_coordinate(tmp_path):
    """Was: ``RuntimeWarning: invalid value encountered in cast`` (float32 sNaN to float64)."""
    vertices = bytearray(np.zeros(9, "<f4").tobytes())
    vertices[4:8] = bytes.fromhex("0100a07f")                     # a signalling NaN, little-endian
    path = tmp_path / "snan.ply"
    path.write_bytes(_binary_ply(bytes(vertices)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="snan.ply: non-finite vertex coordinates"):
            read_ply(path)


def test_ply_float_face_ids(tmp_path):
    """Was: ``ValueError: cannot convert float NaN to integer`` for ``property list uchar float vertex_indices``."""
    path = tmp_path / "float_ids.ply"
    vertices = np.zeros(9, "<f4").tobytes()
    path.write_bytes(_binary_ply(vertices, "float", bytes([3]) + np.array([0, 1, np.nan], "<f4").tobytes()))
    with pytest.raises(InputError, match="float_ids.ply: face vertex ids are not integers"):
        read_ply(path)
    path.write_bytes(_binary_ply(vertices, "float", bytes([3]) + np.array([0, 1, 2], "<f4").tobytes()))
    assert read_ply(path).faces.tolist() == [[0, 1, 2]]


# --- BFM ---------------------------------------------------------------------------------------------
def test_bfm2009_complex_variable(tmp_path):
    """Was: ``ComplexWarning`` (the imaginary part silently dropped)."""
    from morphable.models.formats.bfm import load_bfm2009
    from tests.models.test_bfm import _grid_face, _write_bfm2009

    vertices, triangles = _grid_face()
    path = tmp_path / "complex.mat"
    _write_bfm2009(path, vertices, triangles, extra={"shapeEV": np.array([[1 + 2j], [1.0], [1.0], [1.0]])})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelFileError, match="complex.mat: shapeEV: not a real numeric array"):
            load_bfm2009(path, discover=False)


def test_bfm2017_empty_noise_variance(tmp_path):
    """Was: ``IndexError: index 0 is out of bounds`` reading ``/color/model/noiseVariance`` of size 0."""
    import h5py

    from morphable.models.formats.bfm import load_bfm2017
    from tests.models.test_bfm import _grid_face, _write_bfm2017

    vertices, triangles = _grid_face()
    path = tmp_path / "noise.h5"
    _write_bfm2017(path, vertices, triangles)
    with h5py.File(path, "a") as f:
        del f["color/model/noiseVariance"]
        f.create_dataset("color/model/noiseVariance", data=np.zeros(0, np.float32))
    with pytest.raises(ModelFileError, match="noise.h5: /color/model/noiseVariance: expected shape 1, got 0"):
        load_bfm2017(path, discover=False)


# --- SFM: a huge basis times a huge eigenvalue overflowed float32 silently (with a warning) -------------
def _eos_v1(basis_value: float, eigenvalue: float) -> bytes:
    import struct

    def matrix(rows, cols, values):
        return struct.pack("<ii", rows, cols) + np.asarray(values, "<f4").tobytes()

    no_triangles = struct.pack("<Q", 0)
    shape = matrix(3, 1, [0, 0, 0]) + matrix(3, 1, [basis_value, 0, 0]) + matrix(1, 1, [eigenvalue]) + no_triangles
    colour = matrix(0, 0, []) * 3 + no_triangles
    return struct.pack("<I", 1) + shape + colour + struct.pack("<Q", 0)      # no texture coordinates


def test_sfm_basis_times_eigenvalue_overflowing_float32(tmp_path):
    """Was: ``RuntimeWarning: overflow encountered in multiply`` and an inf identity basis."""
    from morphable.models.formats.sfm import load_sfm

    path = tmp_path / "overflow.bin"
    path.write_bytes(_eos_v1(3e38, 1e30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelFileError, match="overflow.bin: shape model: basis × √eigenvalue overflows"):
            load_sfm(path)
    path.write_bytes(_eos_v1(0.5, 4.0))
    assert load_sfm(path).identity_basis.flatten().tolist() == [1.0, 0.0, 0.0]     # 0.5 · √4


# --- native npz: an array of the wrong size reached torch's reshape (RuntimeError) ----------------------
def test_npz_identity_std_of_the_wrong_size(tmp_path):
    """Was: ``RuntimeError: shape '[4]' is invalid for input of size 8`` from the model's constructor."""
    from morphable.models.formats.npz import save_npz
    from tests.models.test_npz import synthetic

    save_npz(synthetic(), tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["identity_std"] = np.concatenate([arrays["identity_std"]] * 2)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelFileError, match=r"bad.npz: inconsistent arrays \(shape"):
        load_npz(tmp_path / "bad.npz")


def test_bfm2009_signalling_nan_is_refused_without_a_warning(tmp_path):
    """Was: ``RuntimeWarning: invalid value encountered in cast`` (a float32 sNaN cast to float64)."""
    from morphable.models.formats.bfm import load_bfm2009
    from tests.models.test_bfm import _grid_face, _write_bfm2009

    vertices, triangles = _grid_face()
    snan = np.frombuffer(bytes.fromhex("0100a07f"), "<f4")[0]
    ev = np.array([[4000.0], [snan], [1.0], [1.0]], np.float32)
    path = tmp_path / "snan.mat"
    _write_bfm2009(path, vertices, triangles, extra={"shapeEV": ev})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelFileError, match="snan.mat: shapeEV: contains non-finite values"):
            load_bfm2009(path, discover=False)


# --- dlib: tensor sizes multiplied in int64 wrapped around ---------------------------------------------
def _dlib_int(value: int) -> bytes:
    magnitude = abs(value).to_bytes(max(1, (abs(value).bit_length() + 7) // 8), "little")
    return bytes([len(magnitude) | (0x80 if value < 0 else 0)]) + magnitude


def test_dlib_tensor_dims_whose_product_overflows_int64(tmp_path):
    """Was: ``ValueError: cannot reshape array of size 0`` (np.prod wrapped 2^40 · 2^40 to 0)."""
    from morphable.identity.dlib_serialization import _Reader

    data = _dlib_int(2) + b"".join(_dlib_int(d) for d in (2**40, 2**40, 1, 1)) + b"\0" * 16
    with pytest.raises(ModelFileError, match=r"x.dat: truncated: wanted 4835703278458516698824704 more bytes"):
        _Reader(data, "x.dat").tensor()
    ok = _dlib_int(2) + b"".join(_dlib_int(d) for d in (1, 2, 1, 1)) + np.array([1.5, -2], "<f4").tobytes()
    assert _Reader(ok, "x.dat").tensor().ravel().tolist() == [1.5, -2.0]


# --- BFM 2017: a 3 kB HDF5 file can declare a dataset of gigabytes (never written: fill values) ---------
def test_bfm2017_dataset_larger_than_its_file_fails_before_allocating(tmp_path):
    """Was: h5py materialised the declared 8 GB of fill values."""
    import h5py

    from morphable.models.formats.bfm import load_bfm2017

    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("shape/model/mean", shape=(10**9,), dtype="f8", chunks=(1000,))
    _fails_small(lambda: load_bfm2017(path, discover=False), r"huge.h5: /shape/model/mean: declares 8000000000 bytes")


# --- landmark JSON: an integer beyond float range, and Infinity literals -------------------------------
@pytest.mark.parametrize("value", ["1" + "0" * 400, "1e999", "Infinity", "NaN"])
def test_landmark_json_coordinate_that_is_not_a_finite_float(tmp_path, value):
    """Was: ``OverflowError: int too large to convert to float`` (10^400), or an accepted inf landmark."""
    from morphable.detect.formats import read_landmarks

    path = tmp_path / "points.json"
    path.write_text("[" + ",".join(["[1, 2]"] * 67) + f", [{value}, 3]]")
    with pytest.raises(InputError, match="points.json: landmark 67 has non-finite coordinates"):
        read_landmarks(path)
    path.write_text("[" + ",".join(["[1, 2]"] * 67) + ", null]")               # the way to say "missing"
    assert np.isnan(read_landmarks(path)[67]).all()


def test_python2_string_with_a_stray_backslash_loads_without_a_warning():
    """Was: ``DeprecationWarning: invalid escape sequence '\\D'`` from pickle's STRING opcode."""
    from morphable.io.safe_pickle import loads

    data = b"(dp0\nS'key'\np1\nS'a\\\\D'\np2\ns."                 # protocol 0: STRING 'a\\D' (escaped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loads(data, "x.pkl") == {"key": "a\\D"}
    stray = b"(dp0\nS'key'\np1\nS'a\\D'\np2\ns."                    # an unescaped backslash, as the fuzzer made
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loads(stray, "x.pkl") == {"key": "a\\D"}


# --- params.json: values from_params / render read were not checked --------------------------------------
def _fit_params(**changes) -> dict:
    """A minimal valid version-1 params dict with ``changes`` applied."""
    params = {"schema": "morphable.params", "version": 1, "model": "sfm", "image_size": {"width": 40, "height": 30},
              "camera": {"type": "scaled_orthographic", "scale": 1.0, "rotation": [0, 0, 0], "translation": [20, 15]},
              "identity": [0.5, -0.2], "landmarks": [[1.0, 2.0], None, [float("nan"), float("nan")]],
              "rms_px": 1.5, "working_scale": 1.0, "photometric": None}
    params.update(changes)
    return params


def _write_json(path, value) -> object:
    import json

    path.write_text(json.dumps(value, allow_nan=True))
    return path


def test_params_valid_minimal_file_reads(tmp_path):
    params = read_fit_params(_write_json(tmp_path / "params.json", _fit_params()))
    assert params["camera"]["scale"] == 1.0 and params["landmarks"][1] is None


@pytest.mark.parametrize("changes, match", [
    ({"landmarks": [1]}, "landmarks must be a list of"),               # was TypeError in from_params
    ({"rms_px": "x"}, "rms_px must be a number"),                      # was ValueError in from_params
    ({"working_scale": "\x8f"}, "working_scale must be a positive"),
    ({"rms_px": None}, "rms_px must be a number"),
    ({"face": "x"}, "face must be an integer"),
    ({"timings": [1]}, "timings must be an object"),
    ({"arrays": 1}, "arrays must be null or a file name"),             # was: Reconstruction.load read "<folder>/1"
    ({"arrays": "../arrays.npz"}, "arrays must be null or a file name"),
    ({"photometric": {"light": [0.5] * 3}}, "photometric light must be a list of 27"),
    ({"photometric": [1]}, "photometric must be an object"),
    ({"identity": [float("nan")]}, "identity must be a list of numbers, all finite"),
    ({"identity": [10**400]}, "identity must be a list of numbers, all finite"),
    ({"image_size": {"width": float("inf"), "height": 30}}, "image_size must be"),  # was OverflowError
    ({"camera": {"type": "scaled_orthographic", "scale": 1.0, "rotation": [0, 0], "translation": [1, 2]}},
     r"cannot build the camera \(rotation must be a list of 3"),
    ({"camera": {"type": "perspective", "focal": 1e400, "principal_point": [1, 2], "rotation": [0, 0, 0],
                 "translation": [0, 0, -9]}}, r"cannot build the camera \(focal must be a positive number"),
])
def test_params_bad_values_are_named(tmp_path, changes, match):
    path = _write_json(tmp_path / "params.json", _fit_params(**changes))
    with pytest.raises(InputError, match=f"params.json: {match}"):
        read_fit_params(path)


def test_params_integer_of_5000_digits(tmp_path):
    """Was: ValueError ("Exceeds the limit (4300 digits) for integer string conversion") from json.loads."""
    path = tmp_path / "params.json"
    path.write_text('{"model": "sfm", "rms_px": ' + "1" * 5000 + "}")
    with pytest.raises(InputError, match="params.json: invalid JSON"):
        read_fit_params(path)


# --- manifests --------------------------------------------------------------------------------------------
_ITEM = ('{"key":"k","path":"/p.jpg","face":0,"identity":null,"landmarks":LANDMARKS,"box":[0,0,9,9],'
         '"source":"s","chip":"chips/k.png","landmarks_from":"file"}')


def test_manifest_integer_beyond_float64(tmp_path):
    """Was: OverflowError from math.isfinite(10**400)."""
    points = [[1, 2]] * 67 + [[10**400, 2]]
    path = tmp_path / "manifest.jsonl"
    path.write_text(_ITEM.replace("LANDMARKS", str(points)) + "\n")
    with pytest.raises(InputError, match=r"manifest.jsonl:1: 'landmarks' must hold finite numbers"):
        read_manifest(path)
    path.write_text(_ITEM.replace("LANDMARKS", str([[1, 2]] * 68)) + "\n")
    assert read_manifest(path)[0].landmarks.shape == (68, 2)


@pytest.mark.parametrize("line, match", [("[" * 100000 + "]" * 100000, "nested too deeply"),
                                         ("1" * 5000, "invalid JSON")])
def test_manifest_line_json_cannot_hold(tmp_path, line, match):
    """Was: RecursionError / ValueError (integer of over 4300 digits) from json.loads."""
    path = tmp_path / "manifest.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InputError, match=f"manifest.jsonl:1: .*{match}"):
        read_manifest(path)


@pytest.mark.parametrize("data", [b"", b"\x93NUMPY\x01\x00\x12\x00{'descr': ('<f4',\n"])
def test_dataset_broken_feature_array(tmp_path, data):
    """Was: EOFError ("No data left in file") for an empty file, tokenize.TokenError ("EOF in multi-line
    statement") for a header cut inside a tuple, from np.load."""
    (tmp_path / "manifest.jsonl").write_text("")
    (tmp_path / "descriptors.npy").write_bytes(data)
    with pytest.raises(InputError, match="descriptors.npy: cannot read array"):
        load_dataset(tmp_path)


def test_reconstruction_load_checks_the_arrays_name_first(tmp_path):
    """Was: ``Reconstruction.load`` opened ``<folder>/1`` for ``"arrays": 1`` (any name, ``../x`` too) before
    the params were checked, so the error named a file that does not exist instead of params.json."""
    from morphable.reconstruct import Reconstruction

    _write_json(tmp_path / "params.json", _fit_params(arrays=1))
    with pytest.raises(InputError, match="params.json: arrays must be null or a file name"):
        Reconstruction.load(tmp_path)
