"""Small synthetic models for the fitting tests, and the registered real models."""
from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest
import torch

import morphable
from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
from morphable.models.base import MorphableModel
from tests.conftest import DATA, data_file

N_AZ, N_EL = 31, 25  # grid of the ellipsoidal "face"


def grid_vertex(i_az: int, i_el: int) -> int:
    return i_az * N_EL + i_el


@functools.lru_cache(maxsize=None)
def face_model(n_identity: int = 10, expression_kind: str = "blendshapes") -> MorphableModel:
    """An ellipsoidal cap (mm, +z towards the viewer) with smooth random identity modes, three local
    expression bumps, 68 vertex landmarks on the front and jawline candidate columns on both sides.

    The subject's right (iBUG 0–7 contour) is at −x, as in SFM and ICT.
    """
    rng = np.random.default_rng(0)
    az = np.deg2rad(np.linspace(-100, 100, N_AZ))
    el = np.deg2rad(np.linspace(-60, 60, N_EL))
    A, E = np.meshgrid(az, el, indexing="ij")
    unit = np.stack([np.sin(A) * np.cos(E), np.sin(E), np.cos(A) * np.cos(E)], -1).reshape(-1, 3)
    mean = unit * np.array([75.0, 95.0, 85.0]) - np.array([0, 0, 70.0])
    normal = unit / np.array([75.0, 95.0, 85.0]) ** 2
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    x, y = unit[:, 0], unit[:, 1]
    monomials = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y, x**3, y**3, x * x * y, x * y * y], 1)
    identity = np.stack([monomials @ rng.normal(size=10) for _ in range(n_identity)], 1)  # (V, K)
    identity = identity / identity.std(0) * np.linspace(4.0, 1.0, n_identity)  # mm per unit coefficient
    id_basis = normal[:, :, None] * identity[:, None, :]
    bumps = [(0.0, -0.4), (-0.3, 0.3), (0.3, 0.3)]
    exp = np.stack([np.exp(-((x - bx) ** 2 + (y - by) ** 2) / 0.05) * 6.0 for bx, by in bumps], 1)
    exp_basis = normal[:, :, None] * exp[:, None, :]
    tris = []
    for i in range(N_AZ - 1):
        for j in range(N_EL - 1):
            a, b, c, d = grid_vertex(i, j), grid_vertex(i + 1, j), grid_vertex(i + 1, j + 1), grid_vertex(i, j + 1)
            tris += [[a, b, c], [a, c, d]]
    front = [grid_vertex(i, j) for i in range(9, 22) for j in range(4, 22)]
    landmarks = rng.choice(front, size=68, replace=False)
    right = [grid_vertex(i, j) for i in (3, 4, 5, 6) for j in range(3, 13)]
    left = [grid_vertex(N_AZ - 1 - i, j) for i in (3, 4, 5, 6) for j in range(3, 13)]
    return MorphableModel(name="synthetic", mean=mean, triangles=np.array(tris), identity_basis=id_basis,
                          expression_basis=exp_basis, expression_kind=expression_kind,
                          landmark_indices=np.stack([landmarks, landmarks, landmarks], 1),
                          landmark_weights=np.tile([1.0, 0.0, 0.0], (68, 1)), contour_right=right,
                          contour_left=left, dtype=torch.float64)


def camera(ypr_deg, scale=2.0, translation=(250.0, 240.0)) -> ScaledOrthographic:
    """A batch of cameras from ``(B, 3)`` yaw/pitch/roll in degrees."""
    ypr = torch.as_tensor(ypr_deg, dtype=torch.float64).reshape(-1, 3).deg2rad()
    B = ypr.shape[0]
    return ScaledOrthographic(torch.full((B,), scale, dtype=torch.float64), matrix_to_axis_angle(euler_to_matrix(ypr)),
                              torch.tensor([translation], dtype=torch.float64).expand(B, 2))


def random_instances(model: MorphableModel, B: int, seed: int, expression_max: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.randn(B, model.n_identity, generator=g, dtype=torch.float64)
    if model.expression_kind == "blendshapes":
        beta = torch.rand(B, model.n_expression, generator=g, dtype=torch.float64) * expression_max
    else:
        beta = torch.randn(B, model.n_expression, generator=g, dtype=torch.float64) * expression_max
    ypr = (torch.rand(B, 3, generator=g, dtype=torch.float64) * 2 - 1) * torch.tensor([35.0, 15.0, 15.0], dtype=torch.float64)
    return alpha, beta, ypr


def angle_error_deg(R_fit: torch.Tensor, R_true: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between rotations, degrees. ``(B, 3, 3)`` x2 -> ``(B,)``."""
    c = ((R_fit.transpose(1, 2) @ R_true).diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(c.clamp(-1, 1)))


@functools.lru_cache(maxsize=None)
def _load(name: str, home: str) -> MorphableModel:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MORPHABLE_HOME", home)
        mp.setenv("MORPHABLE_MIRROR", str(DATA))
        return morphable.load_model(name)


def real_model(name: str) -> MorphableModel:
    """``morphable.load_model(name)`` from the corpus mirror (skips without the corpus); cached per process."""
    data_file({"sfm": "eos/share/sfm_shape_3448.bin", "ict": "ICT-FaceKit/FaceXModel_vertices_float32.npz"}[name])
    return _load(name, os.environ["MORPHABLE_HOME"])


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row pair. ``(B, K)`` x2 -> ``(B,)``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


__all__ = ["angle_error_deg", "camera", "correlation", "face_model", "grid_vertex", "random_instances",
           "real_model", "math"]
