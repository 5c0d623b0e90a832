"""Meshes shared by the renderer tests."""
from __future__ import annotations

import pytest
import torch
import trimesh

from tests.conftest import data_file


@pytest.fixture(scope="session")
def ict_mesh():
    """The ICT FaceKit mean mesh (mm): ``(V, 3)`` float64 vertices and ``(F, 3)`` triangles."""
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    import morphable

    model = morphable.load_model("ict")
    return model.mean.double(), model.triangles


def icosphere(subdivisions: int, radius: float = 1.0, dtype=torch.float64):
    m = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return torch.tensor(m.vertices, dtype=dtype), torch.tensor(m.faces, dtype=torch.int64)
