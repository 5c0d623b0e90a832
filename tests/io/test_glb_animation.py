"""Animated GLB (morphable/io/glb_animation.py): the binary layout per the glTF 2.0 spec (§4.4 GLB), the mesh
as trimesh reads it, and every frame's vertices evaluated from the accessors read back (a reader written
here from the spec) against the input."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import trimesh
from scipy.spatial.transform import Rotation

from morphable.io.glb_animation import animated_glb_bytes, write_animated_glb
from tests.fitting._synthetic import face_model

COMPONENTS = {5126: "<f4", 5123: "<u2", 5125: "<u4"}
WIDTH = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """Check the GLB container (header, two chunks, lengths, padding) and return its JSON and BIN chunk."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    text = data[20:20 + json_length]
    assert text.rstrip(b" ") == text.rstrip()  # padded with spaces only
    bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
    assert bin_type == 0x004E4942 and bin_length % 4 == 0
    assert 28 + json_length + bin_length == len(data)
    return json.loads(text), data[28 + json_length:]


def accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    """An accessor's data as ``(count, width)`` (float64), checking its view's alignment and bounds."""
    a = gltf["accessors"][index]
    view = gltf["bufferViews"][a["bufferView"]]
    assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= len(binary)
    dtype = np.dtype(COMPONENTS[a["componentType"]])
    n = WIDTH[a["type"]]
    assert view["byteLength"] == a["count"] * n * dtype.itemsize
    raw = np.frombuffer(binary, dtype, a["count"] * n, view["byteOffset"] + a.get("byteOffset", 0))
    return raw.reshape(a["count"], n).astype(np.float64)


def clip(frames: int = 6, seed: int = 0):
    """A small animated face: model mean, the expression basis as targets, random weights and head poses (mm)."""
    model = face_model()
    rng = np.random.default_rng(seed)
    base = model.mean.numpy() + 3.0 * rng.normal(size=(model.n_vertices, 3))
    targets = model.expression_basis.numpy().transpose(2, 0, 1)  # (3, V, 3)
    weights = rng.uniform(0, 1, size=(frames, 3))
    rotations = Rotation.from_euler("yxz", rng.uniform(-30, 30, size=(frames, 3)), degrees=True).as_matrix()
    translations = rng.normal(scale=20.0, size=(frames, 3))
    return model, base, targets, weights, rotations, translations


def test_frames_read_back_from_the_accessors_equal_the_input(tmp_path):
    model, base, targets, weights, rotations, translations = clip()
    times = np.arange(len(weights)) / 25.0
    path = tmp_path / "clip.glb"
    write_animated_glb(path, base, model.triangles.numpy(), targets, weights, times, rotations=rotations,
                       translations=translations, target_names=["a", "b", "c"])
    gltf, binary = read_glb(path.read_bytes())
    assert gltf["asset"]["version"] == "2.0" and gltf["buffers"][0]["byteLength"] <= len(binary)
    primitive = gltf["meshes"][0]["primitives"][0]
    positions = accessor(gltf, binary, primitive["attributes"]["POSITION"])
    deltas = [accessor(gltf, binary, t["POSITION"]) for t in primitive["targets"]]
    for i in [primitive["attributes"]["POSITION"]] + [t["POSITION"] for t in primitive["targets"]]:
        data = accessor(gltf, binary, i)  # POSITION accessors must carry exact bounds
        bounds = gltf["accessors"][i]
        assert np.allclose(bounds["min"], data.min(0)) and np.allclose(bounds["max"], data.max(0))
    assert np.array_equal(accessor(gltf, binary, primitive["indices"]).reshape(-1, 3), model.triangles.numpy())
    assert gltf["meshes"][0]["extras"]["targetNames"] == ["a", "b", "c"]
    # the animation: one time accessor, weights frame-major, quaternions x, y, z, w
    animation = gltf["animations"][0]
    by_path = {c["target"]["path"]: animation["samplers"][c["sampler"]] for c in animation["channels"]}
    assert set(by_path) == {"weights", "rotation", "translation"}
    t = accessor(gltf, binary, by_path["weights"]["input"])[:, 0]
    assert np.allclose(t, times, atol=1e-7)
    assert gltf["accessors"][by_path["weights"]["input"]]["max"][0] == pytest.approx(0.2)
    w = accessor(gltf, binary, by_path["weights"]["output"]).reshape(len(times), -1)
    q = accessor(gltf, binary, by_path["rotation"]["output"])
    T = accessor(gltf, binary, by_path["translation"]["output"])
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-6)
    for n in range(len(times)):
        shape = positions + sum(w[n, k] * deltas[k] for k in range(len(deltas)))
        frame = shape @ Rotation.from_quat(q[n]).as_matrix().T + T[n]  # scipy: scalar-last, as glTF
        expected = ((base + np.einsum("k,kvc->vc", weights[n], targets)) @ rotations[n].T + translations[n]) * 1e-3
        assert np.abs(frame - expected).max() < 1e-6  # metres: float32 rounding of ~0.1 m values
    # consecutive quaternions in one hemisphere (interpolation takes the short way)
    assert (np.sum(q[1:] * q[:-1], axis=1) > 0).all()


def test_trimesh_reads_the_mesh(tmp_path):
    model, base, targets, weights, rotations, translations = clip()
    path = tmp_path / "clip.glb"
    write_animated_glb(path, base, model.triangles.numpy(), targets, weights, np.arange(len(weights)) / 25.0,
                       rotations=rotations, translations=translations)
    scene = trimesh.load(path, force="scene", process=False)
    (mesh,) = scene.geometry.values()
    assert np.allclose(mesh.vertices, base * 1e-3, atol=1e-7)
    assert np.array_equal(mesh.faces, model.triangles.numpy())
    # the stored normals face outwards like the model's (the mean is an ellipsoidal cap, +z out of the face)
    front = model.mean.numpy()[:, 2] > 0
    assert (np.asarray(mesh.vertex_normals)[front, 2] > 0).mean() > 0.9
    assert np.allclose(np.linalg.norm(mesh.vertex_normals, axis=1), 1.0, atol=1e-6)  # unit, as glTF requires


def test_large_meshes_use_32_bit_indices_and_bad_input_is_refused():
    V = 70000
    base = np.random.default_rng(0).normal(size=(V, 3))
    tris = np.array([[0, 1, 2], [V - 3, V - 2, V - 1]])
    gltf, binary = read_glb(animated_glb_bytes(base, tris, np.zeros((0, V, 3)), np.zeros((2, 0)), np.array([0.0, 1.0]),
                                               translations=np.zeros((2, 3))))
    primitive = gltf["meshes"][0]["primitives"][0]
    assert gltf["accessors"][primitive["indices"]]["componentType"] == 5125 and "targets" not in primitive
    assert np.array_equal(accessor(gltf, binary, primitive["indices"]).reshape(-1, 3), tris)
    good = dict(base=base[:3], triangles=tris[:1], targets=np.ones((1, 3, 3)), weights=np.ones((2, 1)),
                times=np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="increase"):
        animated_glb_bytes(**{**good, "times": np.array([1.0, 1.0])})
    with pytest.raises(ValueError, match="weights"):
        animated_glb_bytes(**{**good, "weights": np.ones((3, 1))})
    with pytest.raises(ValueError, match="rotations"):
        animated_glb_bytes(**good, rotations=np.ones((2, 3)))
    with pytest.raises(ValueError, match="outside"):
        animated_glb_bytes(**{**good, "triangles": np.array([[0, 1, 3]])})
    with pytest.raises(ValueError, match="nothing to animate"):
        animated_glb_bytes(**{**good, "targets": np.zeros((0, 3, 3)), "weights": np.zeros((2, 0))})
