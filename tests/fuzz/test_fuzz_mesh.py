"""Fuzzed mesh readers: OBJ (``io/obj.py``, with its MTL and texture; MediaPipe's ``.obj`` model loader)
and PLY (``io/ply.py``, ascii and both binary byte orders)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from morphable.errors import ModelFileError
from morphable.io.meshdata import Mesh
from morphable.io.obj import read_obj, write_obj
from morphable.io.ply import read_ply, read_ply_elements, write_ply
from morphable.models.formats.mediapipe import load_mediapipe
from tests.conftest import data_file
from tests.fuzz.harness import check, fuzz_settings, mutated, numbers, write

pytestmark = pytest.mark.fuzz

OBJ_SEEDS = ("eos/share/sfm_reference.obj", "mediapipe/mediapipe/modules/face_geometry/data/canonical_face_model.obj")
PLY_SEEDS = ("TF_FLAME/data/template.ply",)


def _small_mesh(quads: bool = False) -> Mesh:
    rng = np.random.default_rng(3)
    vertices = rng.normal(size=(6, 3))
    faces = [[0, 1, 2, 3], [2, 3, 4], [3, 4, 5]] if quads else np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]])
    return Mesh(vertices=vertices, faces=faces, uv=rng.uniform(size=(6, 2)), colors=rng.uniform(size=(6, 3)))


@pytest.fixture(scope="module")
def textured_obj(tmp_path_factory) -> bytes:
    """An OBJ written by ``write_obj`` with a texture, its MTL and PNG (kept beside every case)."""
    folder = tmp_path_factory.mktemp("textured")
    mesh = _small_mesh(quads=True)
    mesh.texture = np.zeros((4, 4, 3), np.uint8)
    mesh.face_materials = ["skin", "skin", "eyes"]
    write_obj(folder / "seed.obj", mesh)
    return folder


def _corpus(name: str) -> bytes:
    return data_file(name).read_bytes()


# --- OBJ --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", OBJ_SEEDS)
def test_obj_corpus_mutations(seed, tmp_path):
    raw = _corpus(seed)

    @fuzz_settings(0.5)
    @given(mutated(raw, text=True))
    def case(data):
        check("obj", read_obj, write(tmp_path, "case.obj", data))

    case()


def test_obj_with_material_and_texture_mutations(textured_obj):
    """The OBJ, its MTL and its PNG texture, each mutated or kept."""
    obj, mtl, png = ((textured_obj / f"seed.{ext}").read_bytes() for ext in ("obj", "mtl", "png"))

    @fuzz_settings(0.5)
    @given(mutated(obj, text=True), st.one_of(st.just(mtl), mutated(mtl, text=True)),
           st.one_of(st.just(png), mutated(png)))
    def case(obj_data, mtl_data, png_data):
        write(textured_obj, "seed.mtl", mtl_data)
        write(textured_obj, "seed.png", png_data)
        check("obj", read_obj, write(textured_obj, "case.obj", obj_data))

    case()
    write(textured_obj, "seed.mtl", mtl)
    write(textured_obj, "seed.png", png)


_OBJ_KEYS = ("v", "vt", "vn", "f", "usemtl", "mtllib", "g", "s", "o", "#", "l", "vp")


def _corner() -> st.SearchStrategy[str]:
    index = st.one_of(st.integers(-8, 8).map(str), numbers())
    return st.one_of(index, st.tuples(index, index).map("/".join), st.tuples(index, st.just(""), index).map("/".join),
                     st.tuples(index, index, index).map("/".join))


@st.composite
def obj_text(draw) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 30))):
        key = draw(st.sampled_from(_OBJ_KEYS))
        if key == "f":
            tokens = draw(st.lists(_corner(), max_size=6))
        elif key in ("usemtl", "mtllib"):
            tokens = [draw(st.text(max_size=12))]
        else:
            tokens = draw(st.lists(numbers(), max_size=8))
        lines.append(" ".join([key] + tokens))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def test_obj_generated(tmp_path):
    @fuzz_settings()
    @given(obj_text())
    def case(data):
        check("obj", read_obj, write(tmp_path, "case.obj", data))

    case()


def test_mediapipe_model_loader_mutations(tmp_path):
    raw = _corpus(OBJ_SEEDS[1])
    load = lambda p: load_mediapipe(p)  # noqa: E731

    @fuzz_settings(0.5)
    @given(mutated(raw, text=True))
    def case(data):
        check("mediapipe obj", load, write(tmp_path, "case.obj", data))

    case()


# --- PLY --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ply_seeds(tmp_path_factory) -> dict[str, bytes]:
    """Generated PLY files: ascii, binary little-endian, and big-endian with a MeshLab texcoord list."""
    folder = tmp_path_factory.mktemp("ply")
    out = {}
    for name, binary, quads in (("ascii", False, True), ("binary", True, False)):
        write_ply(folder / f"{name}.ply", _small_mesh(quads), binary=binary)
        out[name] = (folder / f"{name}.ply").read_bytes()
    vertices = np.arange(12, dtype=">f4").reshape(4, 3)
    header = ("ply\nformat binary_big_endian 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
              "property float z\nelement face 2\nproperty list uchar int vertex_indices\n"
              "property list uchar float texcoord\nend_header\n").encode()
    faces = b""
    for f in ((0, 1, 2), (1, 2, 3)):
        faces += bytes([3]) + np.array(f, ">i4").tobytes() + bytes([6]) + np.linspace(0, 1, 6, dtype=">f4").tobytes()
    out["big_endian_texcoord"] = header + vertices.tobytes() + faces
    return out


@pytest.mark.parametrize("seed", PLY_SEEDS)
def test_ply_corpus_mutations(seed, tmp_path):
    raw = _corpus(seed)

    @fuzz_settings(0.5)
    @given(mutated(raw))
    def case(data):
        check("ply", read_ply, write(tmp_path, "case.ply", data))

    case()


@pytest.mark.parametrize("kind", ["ascii", "binary", "big_endian_texcoord"])
def test_ply_generated_seed_mutations(ply_seeds, kind, tmp_path):
    raw = ply_seeds[kind]

    @fuzz_settings(0.5)
    @given(mutated(raw, text=kind == "ascii"))
    def case(data):
        path = write(tmp_path, "case.ply", data)
        check("ply", read_ply, path)
        check("ply (reference reader)", lambda p: read_ply_elements(p, fast=False), path)

    case()


_PLY_TYPES = ("char", "uchar", "short", "ushort", "int", "uint", "float", "double", "int8", "float64", "bogus")


@st.composite
def ply_header(draw) -> bytes:
    """A header with random elements, counts (huge ones included) and properties, then random bytes."""
    lines = ["ply", draw(st.sampled_from(["format ascii 1.0", "format binary_little_endian 1.0",
                                          "format binary_big_endian 1.0", "format foo 1.0", ""]))]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["vertex", "face", "edge"]))
        count = draw(st.one_of(st.integers(0, 5), st.sampled_from([10**12, 2**31, 2**64, -1])))
        lines.append(f"element {name} {count}")
        for _ in range(draw(st.integers(0, 4))):
            if draw(st.booleans()):
                lines.append(f"property list {draw(st.sampled_from(_PLY_TYPES))} {draw(st.sampled_from(_PLY_TYPES))} "
                             f"{draw(st.sampled_from(['vertex_indices', 'vertex_index', 'texcoord']))}")
            else:
                lines.append(f"property {draw(st.sampled_from(_PLY_TYPES))} "
                             f"{draw(st.sampled_from(['x', 'y', 'z', 'red', 's', 't', 'u', 'v']))}")
    lines.append("end_header")
    body = draw(st.one_of(st.binary(max_size=200),
                          st.lists(numbers(), max_size=40).map(lambda t: " ".join(t).encode())))
    return "\n".join(lines).encode() + b"\n" + body


def test_ply_generated_headers(tmp_path):
    @fuzz_settings()
    @given(ply_header())
    def case(data):
        check("ply", read_ply, write(tmp_path, "case.ply", data))

    case()


def test_ply_header_with_a_trillion_vertices_fails_before_allocating(tmp_path):
    """The count is checked against the bytes left before any array is made (tracemalloc sees no big block)."""
    import tracemalloc

    for fmt, body in (("binary_little_endian", b"\0" * 120), ("ascii", b"0 0 0\n" * 10)):
        header = (f"ply\nformat {fmt} 1.0\nelement vertex 1000000000000\nproperty double x\nproperty double y\n"
                  "property double z\nelement face 1000000000000\nproperty list uchar int vertex_indices\n"
                  "end_header\n").encode()
        path = write(tmp_path, "huge.ply", header + body)
        tracemalloc.start()
        try:
            with pytest.raises(ModelFileError, match="huge.ply"):
                read_ply(path, error=ModelFileError)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 10 * 2**20, f"{fmt}: {peak} bytes allocated for a 200-byte file"
