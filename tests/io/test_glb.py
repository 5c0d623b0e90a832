"""GLB export: the file is valid glTF 2.0 (header and JSON chunk read by hand), trimesh reads the same
geometry, UVs and texture back, and seams are split."""
from __future__ import annotations

import json
import struct

import numpy as np
import trimesh

from morphable.io import Mesh
from morphable.io.glb import glb_arrays, write_glb


def _quad_with_seam():
    """Two triangles sharing an edge; the shared vertices 1 and 2 have different UVs in each face."""
    vertices = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 5]], float)  # mm
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    uv = np.array([[0, 0], [0.5, 0], [0, 0.5], [1, 0], [0.5, 1], [1, 1]], float)
    uv_faces = np.array([[0, 1, 2], [3, 5, 4]])
    texture = np.zeros((4, 8, 3), np.uint8)
    texture[:2] = (255, 0, 0)  # top half red
    texture[2:] = (0, 0, 255)
    return Mesh(vertices=vertices, faces=faces, uv=uv, uv_faces=uv_faces, texture=texture)


def test_seams_are_split():
    positions, tris, uv, source = glb_arrays(_quad_with_seam())
    assert len(positions) == 6  # vertices 1 and 2 are used with two UVs each
    mesh = _quad_with_seam()
    for t, (face, uv_face) in enumerate(zip(mesh.faces, mesh.uv_faces)):
        np.testing.assert_array_equal(positions[tris[t]], mesh.vertices[face])
        np.testing.assert_array_equal(uv[tris[t]], mesh.uv[uv_face])
    np.testing.assert_array_equal(positions, mesh.vertices[source])


def test_glb_file_reads_back(tmp_path):
    path = tmp_path / "m.glb"
    write_glb(path, _quad_with_seam())
    data = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and length == len(data)
    chunk_length, chunk_type = struct.unpack("<I4s", data[12:20])
    gltf = json.loads(data[20:20 + chunk_length])
    assert chunk_type == b"JSON" and gltf["asset"]["version"] == "2.0"
    (prim,) = gltf["meshes"][0]["primitives"]
    assert gltf["accessors"][prim["attributes"]["POSITION"]]["count"] == 6
    assert "TEXCOORD_0" in prim["attributes"] and gltf["images"][0]["mimeType"] == "image/png"
    assert np.isclose(max(gltf["accessors"][prim["attributes"]["POSITION"]]["max"]), 0.01)  # 10 mm in metres (float32)
    scene = trimesh.load(path, force="mesh", process=False)
    assert len(scene.vertices) == 6 and len(scene.faces) == 2
    np.testing.assert_allclose(np.sort(scene.vertices, 0), np.sort(glb_arrays(_quad_with_seam())[0] * 1e-3, 0), rtol=1e-6)
    texture = np.asarray(scene.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(texture, _quad_with_seam().texture)
    # trimesh flips glTF's v back: the UV (0.5, 1) corner is the top of the image (red)
    top = np.argmax(scene.visual.uv[:, 1])
    assert scene.visual.uv[top, 1] == 1.0


def test_glb_without_texture_keeps_vertex_colours(tmp_path):
    mesh = Mesh(vertices=np.eye(3), faces=np.array([[0, 1, 2]]), colors=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1.0]]))
    write_glb(tmp_path / "c.glb", mesh, scale=1.0)
    back = trimesh.load(tmp_path / "c.glb", force="mesh", process=False)
    np.testing.assert_allclose(back.vertices, np.eye(3))
    np.testing.assert_array_equal(back.visual.vertex_colors[:, :3], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
