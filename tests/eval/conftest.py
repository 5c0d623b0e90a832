"""Synthetic face-like surfaces for the protocol tests (fast; the real scan is used in the CLI tests)."""
import numpy as np
import pytest


def face_patch(n=70, size=120.0):
    """A face-sized height field (mm, +z to the viewer) with a nose and brow/cheek bumps, and its 7 NoW
    landmarks as vertex ids (right eye outer/inner, left eye inner/outer, nose bottom, mouth R/L)."""
    u = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(u, u)
    z = (25 * np.exp(-(x ** 2) / 90 - (y + 5) ** 2 / 500)          # nose
         + 8 * np.exp(-((np.abs(x) - 30) ** 2 + (y - 25) ** 2) / 300)  # brows
         - 0.004 * (x ** 2 + 0.6 * y ** 2) + 0.02 * x)              # rounded, slightly asymmetric
    vertices = np.stack([x.ravel(), y.ravel(), z.ravel()], 1)
    q = np.arange(n * n).reshape(n, n)[:-1, :-1].ravel()
    triangles = np.concatenate([np.stack([q, q + 1, q + n], 1), np.stack([q + 1, q + n + 1, q + n], 1)])
    targets = np.array([[-45, 15], [-15, 15], [15, 15], [45, 15], [0, -18], [-25, -40], [25, -40]], float)
    ids = np.argmin(np.linalg.norm(vertices[None, :, :2] - targets[:, None], axis=2), axis=1)
    return vertices, triangles, ids


def vertex_normals_np(vertices, triangles):
    n = np.cross(vertices[triangles[:, 1]] - vertices[triangles[:, 0]], vertices[triangles[:, 2]] - vertices[triangles[:, 0]])
    acc = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(acc, triangles[:, k], n)
    return acc / np.linalg.norm(acc, axis=1, keepdims=True)


@pytest.fixture
def patch():
    return face_patch()


@pytest.fixture
def normals_of():
    """``normals_of(vertices, triangles)``: area-weighted unit vertex normals (plain numpy)."""
    return vertex_normals_np
