"""OBJ / PLY: exact write -> read round trips, real corpus files cross-checked against trimesh (an
independent reader), and bad files that only ever raise our own error naming the file."""
from __future__ import annotations

import os

import numpy as np
import pytest
import trimesh

from morphable.errors import InputError, ModelFileError
from morphable.io import Mesh, read_mesh, read_obj, read_ply, write_mesh, write_obj, write_ply
from morphable.io.ply import read_ply_elements


def _mesh(rng, quads=True, colors=True, uv="separate", texture=True, materials=False) -> Mesh:
    """A small mesh with random float64 positions, a quad and triangles, UVs on their own topology."""
    vertices = rng.normal(size=(6, 3)) * 100.0
    faces = [[0, 1, 2, 3], [0, 3, 4], [4, 3, 5]] if quads else np.array([[0, 1, 2], [0, 2, 3], [3, 4, 5]])
    uv_faces = None
    uv_array = None
    if uv == "separate":
        uv_array = rng.uniform(size=(8, 2))
        uv_faces = [[7, 6, 5, 4], [0, 1, 2], [2, 1, 3]] if quads else np.array([[0, 1, 2], [2, 1, 3], [5, 6, 7]])
    elif uv == "vertex":
        uv_array = rng.uniform(size=(6, 2))
    return Mesh(
        vertices=vertices, faces=faces, uv=uv_array, uv_faces=uv_faces,
        colors=rng.integers(0, 256, size=(6, 3)) / 255.0 if colors else None,
        texture=rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8) if texture else None,
        face_materials=["skin", "skin", "eyes"] if materials else None,
    )


def _assert_same(a: Mesh, b: Mesh) -> None:
    np.testing.assert_array_equal(a.vertices, b.vertices)  # exact, not close
    assert a.polygons() == b.polygons()
    assert type(a.faces) is type(b.faces)
    for key in ("uv", "colors", "texture"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None), key
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert (a.uv_faces is None) == (b.uv_faces is None)
    if a.uv_faces is not None:
        assert [list(f) for f in a.uv_faces] == [list(f) for f in b.uv_faces]
    assert a.face_materials == b.face_materials


@pytest.mark.parametrize("quads", [True, False])
@pytest.mark.parametrize("uv", ["separate", "vertex", None])
@pytest.mark.parametrize("materials", [False, True])
def test_obj_round_trip_exact(tmp_path, quads, uv, materials):
    mesh = _mesh(np.random.default_rng(1), quads=quads, uv=uv, texture=uv is not None, materials=materials)
    write_obj(tmp_path / "face.obj", mesh)
    back = read_obj(tmp_path / "face.obj")
    _assert_same(mesh, back)
    if mesh.texture is not None:
        assert (tmp_path / "face.mtl").is_file() and (tmp_path / "face.png").is_file()
        assert "map_Kd face.png" in (tmp_path / "face.mtl").read_text()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("quads", [True, False])
def test_ply_round_trip_exact(tmp_path, binary, quads):
    mesh = _mesh(np.random.default_rng(2), quads=quads, uv="vertex", texture=False)
    write_ply(tmp_path / "face.ply", mesh, binary=binary)
    _assert_same(mesh, read_ply(tmp_path / "face.ply"))


def test_ply_colours_are_8_bit(tmp_path):
    """Colours are stored as uchar: a value between two 8-bit levels comes back rounded to the nearer."""
    mesh = Mesh(vertices=np.eye(3), faces=np.array([[0, 1, 2]]), colors=np.full((3, 3), 0.5))
    write_ply(tmp_path / "c.ply", mesh)
    np.testing.assert_array_equal(read_ply(tmp_path / "c.ply").colors, np.full((3, 3), 128 / 255))


def test_read_write_mesh_by_suffix(tmp_path):
    mesh = _mesh(np.random.default_rng(3), uv=None, texture=False)
    for name in ("m.obj", "m.ply"):
        write_mesh(tmp_path / name, mesh)
        np.testing.assert_array_equal(read_mesh(tmp_path / name).vertices, mesh.vertices)
    with pytest.raises(InputError, match="m.stl"):
        write_mesh(tmp_path / "m.stl", mesh)


def test_triangles_fan_split_quads():
    mesh = Mesh(vertices=np.zeros((5, 3)), faces=[[0, 1, 2, 3], [1, 2, 4]])
    np.testing.assert_array_equal(mesh.triangles(), [[0, 1, 2], [0, 2, 3], [1, 2, 4]])


def _canonical_triangles(corners: np.ndarray) -> np.ndarray:
    """``(F, 3, C)`` triangle corner attributes -> sorted ``(F, 3C)`` rows, each triangle rotated (winding
    kept) to start at its lexicographically smallest corner, so two readers' triangle lists compare
    whatever order and vertex numbering they use."""
    F, _, C = corners.shape
    _, rank = np.unique(corners.reshape(-1, C), axis=0, return_inverse=True)
    start = rank.reshape(F, 3).argmin(axis=1)
    rolled = corners[np.arange(F)[:, None], (start[:, None] + np.arange(3)) % 3].reshape(F, 3 * C)
    return rolled[np.lexsort(rolled.T[::-1])]


def test_real_ict_obj_matches_trimesh(data):
    """ICT FaceKit neutral OBJ: counts from the MANIFEST, and every triangle (positions and UVs) equal
    to trimesh's reading of the same file (trimesh splits vertices per UV, so compare triangles; it packs multi-material UVs into one atlas
    unless told to skip materials)."""
    path = data("ICT-FaceKit/FaceXModel/generic_neutral_mesh.obj")
    mesh = read_obj(path)
    assert mesh.vertices.shape == (26719, 3) and mesh.uv.shape == (28911, 2)
    sizes = np.bincount([len(f) for f in mesh.faces])
    assert sizes[3] == 548 and sizes[4] == 25836 and len(mesh.faces) == 26384
    assert len(set(mesh.face_materials)) == 12 and "M_Face" in mesh.face_materials
    ref = trimesh.load(path, process=False, force="mesh", skip_materials=True)  # else UVs are re-packed
    ours = np.concatenate([mesh.vertices[mesh.triangles()], mesh.uv[mesh.uv_triangles()]], axis=2)
    theirs = np.concatenate([ref.vertices[ref.faces], ref.visual.uv[ref.faces]], axis=2)
    assert ours.shape == theirs.shape == (52220, 3, 5)
    np.testing.assert_array_equal(_canonical_triangles(ours), _canonical_triangles(theirs))


def test_real_flame_ply_matches_trimesh(data):
    path = data("TF_FLAME/data/template.ply")
    mesh = read_ply(path)
    ref = trimesh.load(path, process=False)
    assert mesh.vertices.shape == (5023, 3) and mesh.faces.shape == (9976, 3)
    np.testing.assert_array_equal(mesh.vertices, np.asarray(ref.vertices))
    np.testing.assert_array_equal(mesh.faces, np.asarray(ref.faces))


def test_ply_fast_reader_equals_reference(tmp_path, data):
    """The vectorised binary reader agrees with the record-by-record reference, on the real FLAME
    template (uniform triangles: fast path) and on a mixed quad/triangle file (falls back)."""
    mixed = tmp_path / "mixed.ply"
    write_ply(mixed, _mesh(np.random.default_rng(4), uv="vertex", texture=False))
    for path in (data("TF_FLAME/data/template.ply"), mixed):
        fast, slow = read_ply_elements(path), read_ply_elements(path, fast=False)
        assert fast.keys() == slow.keys()
        for element in fast:
            for prop, values in fast[element].items():
                if isinstance(values, list):
                    assert len(values) == len(slow[element][prop])
                    for a, b in zip(values, slow[element][prop]):
                        np.testing.assert_array_equal(a, b)
                else:
                    np.testing.assert_array_equal(values, slow[element][prop])


def test_ply_big_endian_and_meshlab_texcoord(tmp_path):
    """A hand-written big-endian file with float colours and a per-face texcoord list."""
    header = (b"ply\nformat binary_big_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
              b"property float z\nproperty float red\nproperty float green\nproperty float blue\n"
              b"element face 1\nproperty list uchar int vertex_indices\nproperty list uchar float texcoord\n"
              b"end_header\n")
    verts = np.array([[0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1]], ">f4")
    face = np.array([3], ">u1").tobytes() + np.array([0, 1, 2], ">i4").tobytes()
    face += np.array([6], ">u1").tobytes() + np.array([0, 0, 1, 0, 0, 1], ">f4").tobytes()
    (tmp_path / "be.ply").write_bytes(header + verts.tobytes() + face)
    mesh = read_ply(tmp_path / "be.ply")
    np.testing.assert_array_equal(mesh.vertices, verts[:, :3])
    np.testing.assert_array_equal(mesh.colors, verts[:, 3:])
    np.testing.assert_array_equal(mesh.uv, [[0, 0], [1, 0], [0, 1]])
    np.testing.assert_array_equal(mesh.uv_faces, [[0, 1, 2]])


# --- bad files ------------------------------------------------------------------------------------------
def test_obj_bad_files_name_the_file(tmp_path):
    cases = {
        "missing.obj": None,
        "empty.obj": "# nothing\n",
        "badnum.obj": "v 1 2 x\n",
        "short.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2\n",
        "range.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n",
        "zero.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n",
        "mixed.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3\n",
        "nan.obj": "v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
        "binary.obj": bytes(range(256)) * 4,
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(InputError, match=name):
            read_obj(tmp_path / name)
    with pytest.raises(ModelFileError, match="range.obj"):
        read_obj(tmp_path / "range.obj", error=ModelFileError)


def test_obj_relative_ids(tmp_path):
    (tmp_path / "rel.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\n")
    np.testing.assert_array_equal(read_obj(tmp_path / "rel.obj").faces, [[0, 1, 2]])


def test_truncated_files_raise_only_our_error(tmp_path):
    """A binary PLY cut anywhere raises InputError naming it; an OBJ cut anywhere either reads (a shorter
    OBJ can be valid) or raises InputError naming it, and raises when the cut leaves no vertex."""
    mesh = _mesh(np.random.default_rng(5), uv="vertex", texture=False)
    write_obj(tmp_path / "full.obj", mesh)
    write_ply(tmp_path / "full.ply", mesh)
    obj = (tmp_path / "full.obj").read_bytes()
    for cut in range(0, len(obj) - 1, 5):
        path = tmp_path / f"cut_{cut}.obj"
        path.write_bytes(obj[:cut])
        if cut < obj.find(b"\nv ") + 7:
            with pytest.raises(InputError, match=path.name):
                read_obj(path)
        else:
            try:
                read_obj(path)
            except InputError as e:
                assert path.name in str(e)
    ply = (tmp_path / "full.ply").read_bytes()
    for cut in range(0, len(ply) - 1, 3):
        path = tmp_path / f"cut_{cut}.ply"
        path.write_bytes(ply[:cut])
        with pytest.raises(InputError, match=path.name):
            read_ply(path)


def test_ply_corruptions(tmp_path):
    mesh = _mesh(np.random.default_rng(6), uv=None, texture=False, colors=False)
    write_ply(tmp_path / "good.ply", mesh)
    good = (tmp_path / "good.ply").read_bytes()
    body = good.find(b"end_header\n") + len(b"end_header\n")
    bad = {
        "magic.ply": b"plx" + good[3:],
        "format.ply": good.replace(b"binary_little_endian", b"binary_middle_endian"),
        "noend.ply": good[: body - 5],
        "type.ply": good.replace(b"property double x", b"property quad x"),
        "index.ply": good[:-4] + np.array([99], "<i4").tobytes(),
        "count.ply": good.replace(b"element face 3", b"element face 4"),
        "ascii.ply": b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                     b"property float z\nend_header\n0 zero 0\n",
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=name):
            read_ply(tmp_path / name)


def test_flipped_bytes_raise_only_our_error(tmp_path):
    """Random byte flips in an OBJ or a PLY: the reader returns a mesh or raises InputError, nothing else."""
    rng = np.random.default_rng(7)
    mesh = _mesh(rng, uv="vertex", texture=False)
    write_obj(tmp_path / "m.obj", mesh)
    write_ply(tmp_path / "m.ply", mesh)
    for name, reader in (("m.obj", read_obj), ("m.ply", read_ply)):
        data = np.frombuffer((tmp_path / name).read_bytes(), np.uint8)
        for trial in range(60):
            flipped = data.copy()
            at = rng.integers(0, len(data), size=3)
            flipped[at] ^= rng.integers(1, 256, size=3).astype(np.uint8)
            path = tmp_path / f"flip{trial}_{name}"
            path.write_bytes(flipped.tobytes())
            try:
                reader(path)
            except InputError as e:
                assert path.name in str(e)


def test_failed_write_keeps_old_file_and_leaves_no_partial(tmp_path, monkeypatch):
    """A PLY write that fails half-way (header written, a simulated full disk while packing faces)
    leaves the previous file as it was and no temporary file behind."""
    import morphable.io.ply as ply

    mesh = _mesh(np.random.default_rng(8), uv=None, texture=False)
    write_ply(tmp_path / "m.ply", mesh)
    before = (tmp_path / "m.ply").read_bytes()

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ply.struct, "pack", full_disk)
    with pytest.raises(InputError, match="m.ply: cannot write: No space left on device"):
        write_ply(tmp_path / "m.ply", Mesh(vertices=np.zeros((3, 3)), faces=np.array([[0, 1, 2]])))
    assert (tmp_path / "m.ply").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.ply"]


def test_write_into_missing_folder_names_the_file(tmp_path):
    mesh = Mesh(vertices=np.zeros((3, 3)), faces=np.array([[0, 1, 2]]))
    with pytest.raises(InputError, match="nowhere"):
        write_obj(tmp_path / "nowhere" / "m.obj", mesh)
