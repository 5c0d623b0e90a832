"""Animated binary glTF 2.0 (``.glb``): one mesh with morph targets, animated by a morph-weights channel and
the node's rotation and translation — written with numpy, json and struct (no glTF library).

Layout (glTF 2.0 specification, Khronos, §3.7.2.2 morph targets, §3.11 animations, §4.4 GLB):

* one buffer in the GLB's ``BIN`` chunk; one buffer view per array, each starting on a 4-byte boundary;
* the mesh: ``POSITION`` (float32 VEC3, metres), ``NORMAL`` of the base shape, ``indices`` (uint16, or uint32
  above 65 535 vertices), and one morph target per column of ``targets`` (a float32 VEC3 ``POSITION``
  displacement each; every ``POSITION`` accessor carries its ``min``/``max``, as the spec requires);
* one node holding the mesh and one animation whose samplers share one time accessor (seconds, LINEAR):
  ``weights`` (``frames × targets`` scalars, frame-major as the spec orders them), ``rotation`` (unit
  quaternions ``x, y, z, w``) and ``translation`` (metres).

A viewer then shows, at frame ``n``'s time, ``T(n) R(n) (base + Σ_k w[n, k] target_k)``. glTF's frame is +y
up, +z towards the viewer, metres — our model frame in mm, scaled by ``scale``. Morph targets carry no
normal displacements, so viewers shade every frame with the base shape's normals (smooth, slightly off
where an expression bends the surface).

Why morph targets and not one node mesh per frame: a face model's expression basis *is* a set of morph
targets (ICT's are ARKit's 53 blendshapes), so the file holds the clip identity's mesh once plus one
displacement per expression, whatever the clip's length, and the animation is the per-frame expression
weights and head pose — editable in Blender, playable in three.js. Per-frame meshes would grow with the
clip (26 k vertices × 12 bytes per frame for ICT) and need visibility tricks (scale-to-zero keys) to play.
"""
from __future__ import annotations

import json
import struct
from os import PathLike

import numpy as np
import torch

from morphable.geometry.mesh import vertex_normals
from morphable.geometry.rotation import matrix_to_quaternion
from morphable.io.atomic import atomic_write

GLB_MAGIC, GLB_VERSION = 0x46546C67, 2  # "glTF"
CHUNK_JSON, CHUNK_BIN = 0x4E4F534A, 0x004E4942  # "JSON", "BIN\0"
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125


class _Buffer:
    """The BIN chunk being built: arrays appended at 4-byte-aligned offsets, one buffer view and accessor each."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.length = 0
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, array: np.ndarray, kind: str, component: int, target: int | None = None,
            bounds: bool = False) -> int:
        """Append ``array`` (``(count,)`` or ``(count, n)``) as accessor ``kind`` (SCALAR, VEC3, …); its index."""
        data = np.ascontiguousarray(array, {FLOAT: "<f4", UNSIGNED_SHORT: "<u2", UNSIGNED_INT: "<u4"}[component])
        pad = (-self.length) % 4
        self.parts.append(b"\0" * pad)
        self.length += pad
        view = {"buffer": 0, "byteOffset": self.length, "byteLength": data.nbytes}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        self.parts.append(data.tobytes())
        self.length += data.nbytes
        accessor = {"bufferView": len(self.views) - 1, "componentType": component, "count": int(data.shape[0]),
                    "type": kind}
        if bounds:
            flat = data.reshape(data.shape[0], -1)
            accessor["min"] = flat.min(0).astype(float).tolist()
            accessor["max"] = flat.max(0).astype(float).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def bytes(self) -> bytes:
        return b"".join(self.parts) + b"\0" * ((-self.length) % 4)


def _normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``(V, 3)`` (:func:`~morphable.geometry.mesh.vertex_normals`); +z for
    vertices in no triangle (glTF requires unit normals)."""
    n = vertex_normals(torch.from_numpy(vertices)[None], torch.from_numpy(triangles))[0].numpy()
    n[~n.any(1)] = (0.0, 0.0, 1.0)
    return n


def animated_glb_bytes(base: np.ndarray, triangles: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                       times: np.ndarray, *, rotations: np.ndarray | None = None,
                       translations: np.ndarray | None = None, scale: float = 1e-3,
                       target_names: list[str] | None = None, name: str = "face") -> bytes:
    """The ``.glb`` content of an animated morph-target mesh (module docstring).

    Args:
        base: ``(V, 3)`` the base shape (mm by default, see ``scale``), model frame.
        triangles: ``(F, 3)`` int vertex ids, counter-clockwise seen from outside.
        targets: ``(K, V, 3)`` morph-target displacements (same units as ``base``); ``K = 0``: none (and no
            weights channel).
        weights: ``(N, K)`` the targets' weights at each of the ``N`` keyframes.
        times: ``(N,)`` strictly increasing keyframe times in seconds.
        rotations: ``(N, 3, 3)`` the node's rotation per keyframe (None: no rotation channel).
        translations: ``(N, 3)`` the node's translation per keyframe, same units as ``base`` (None: none).
        scale: multiplies positions, displacements and translations (mm → m by default).
        target_names: ``K`` names, stored as ``mesh.extras.targetNames`` (Blender and three.js read them).
    Raises:
        ValueError: inconsistent shapes, no frame, nothing animated, or times not increasing.
    """
    base = np.asarray(base, np.float64)
    tris = np.asarray(triangles, np.int64)
    times = np.asarray(times, np.float64).reshape(-1)
    V, N = len(base), len(times)
    targets = np.asarray(targets, np.float64)
    weights = np.asarray(weights, np.float64)
    K = len(targets)
    if base.ndim != 2 or base.shape[1] != 3 or tris.ndim != 2 or tris.shape[1] != 3:
        raise ValueError(f"glb: expected base (V, 3) and triangles (F, 3), got {base.shape} and {tris.shape}")
    if targets.shape != (K, V, 3):
        raise ValueError(f"glb: expected targets (K, {V}, 3), got {targets.shape}")
    if N == 0 or weights.shape != (N, K):
        raise ValueError(f"glb: expected weights ({N}, {K}) for {N} times and {K} targets, got {weights.shape}")
    if K == 0 and rotations is None and translations is None:
        raise ValueError("glb: nothing to animate (no morph target, rotation or translation)")
    if N > 1 and not np.all(np.diff(times) > 0):
        raise ValueError("glb: keyframe times must increase strictly")
    if tris.size and (tris.min() < 0 or tris.max() >= V):
        raise ValueError(f"glb: triangles refer to vertices outside 0..{V - 1}")
    buf = _Buffer()
    primitive = {"attributes": {"POSITION": buf.add(base * scale, "VEC3", FLOAT, ARRAY_BUFFER, bounds=True),
                                "NORMAL": buf.add(_normals(base, tris), "VEC3", FLOAT, ARRAY_BUFFER)},
                 "indices": buf.add(tris.reshape(-1), "SCALAR", UNSIGNED_SHORT if V <= 65535 else UNSIGNED_INT,
                                    ELEMENT_ARRAY_BUFFER),
                 "mode": 4}  # TRIANGLES
    mesh = {"name": name, "primitives": [primitive]}
    if K:
        primitive["targets"] = [{"POSITION": buf.add(t * scale, "VEC3", FLOAT, ARRAY_BUFFER, bounds=True)}
                                for t in targets]
        mesh["weights"] = weights[0].tolist()
    if target_names is not None:
        if len(target_names) != K:
            raise ValueError(f"glb: {len(target_names)} target names for {K} targets")
        mesh["extras"] = {"targetNames": list(target_names)}
    time_acc = buf.add(times.astype(np.float32), "SCALAR", FLOAT, bounds=True)  # input accessors need min/max
    samplers, channels = [], []
    if K:
        samplers.append({"input": time_acc, "output": buf.add(weights.reshape(-1), "SCALAR", FLOAT),
                         "interpolation": "LINEAR"})
        channels.append({"sampler": 0, "target": {"node": 0, "path": "weights"}})
    if rotations is not None:
        R = np.asarray(rotations, np.float64)
        if R.shape != (N, 3, 3):
            raise ValueError(f"glb: expected rotations ({N}, 3, 3), got {R.shape}")
        q = matrix_to_quaternion(torch.from_numpy(R)).numpy()[:, [1, 2, 3, 0]]  # (w, x, y, z) → glTF's (x, y, z, w)
        for n in range(1, N):  # q and −q are one rotation: keep consecutive keys in one hemisphere, so that
            if np.dot(q[n], q[n - 1]) < 0:  # interpolating between them takes the short way
                q[n] = -q[n]
        samplers.append({"input": time_acc, "output": buf.add(q, "VEC4", FLOAT), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": 0, "path": "rotation"}})
    if translations is not None:
        T = np.asarray(translations, np.float64)
        if T.shape != (N, 3):
            raise ValueError(f"glb: expected translations ({N}, 3), got {T.shape}")
        samplers.append({"input": time_acc, "output": buf.add(T * scale, "VEC3", FLOAT), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": 0, "path": "translation"}})
    node = {"name": name, "mesh": 0}
    binary = buf.bytes()
    gltf = {"asset": {"version": "2.0", "generator": "morphable"}, "scene": 0, "scenes": [{"nodes": [0]}],
            "nodes": [node], "meshes": [mesh], "animations": [{"name": "track", "channels": channels,
                                                                "samplers": samplers}],
            "buffers": [{"byteLength": len(binary)}], "bufferViews": buf.views, "accessors": buf.accessors}
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 4)  # the JSON chunk is padded with spaces, the BIN chunk with zeros
    total = 12 + 8 + len(text) + 8 + len(binary)
    return (struct.pack("<III", GLB_MAGIC, GLB_VERSION, total) + struct.pack("<II", len(text), CHUNK_JSON) + text
            + struct.pack("<II", len(binary), CHUNK_BIN) + binary)


def write_animated_glb(path: str | PathLike, base: np.ndarray, triangles: np.ndarray, targets: np.ndarray,
                       weights: np.ndarray, times: np.ndarray, **kwargs) -> None:
    """Write :func:`animated_glb_bytes` to ``path`` atomically (same arguments)."""
    data = animated_glb_bytes(base, triangles, targets, weights, times, **kwargs)
    with atomic_write(path, "wb") as f:
        f.write(data)
