"""Resampling a model on a regular grid in UV space (the 3DMM-STN ``resampleModel``, Bas et al. 2017, Sec. 3.3).

Each point of an ``H' × W'`` grid over [0, 1]² is a barycentric point of one triangle of the flattened mesh,
so the resampled model has ``N = H'·W'`` "vertices" whose mean and bases are the barycentric interpolation
of the original ones: sampling a photo at their projections gives an image in dense correspondence.

Grid row 0 is the top of the face (``v = 1``), so the grid reads like an image; column ``j`` has
``u = j / (W' − 1)``. Grid points that fall in a hole of the flattening (the mouth) are invalid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from morphable.geometry.mesh import submesh
from morphable.geometry.uv import flatten, locate, mirror_pairs, symmetry_pairs
from morphable.models.base import MorphableModel
from morphable.models.functional import barycentric_points


@dataclass(frozen=True)
class UVGrid:
    """A regular grid in UV space tied to a mesh.

    Attributes:
        size: ``(H', W')``.
        indices: ``(N, 3)`` int64 vertex ids of the triangle under each grid point (0 where invalid).
        weights: ``(N, 3)`` barycentric weights (0 where invalid).
        valid: ``(N,)`` bool: the point lies on the flattened surface.
        triangles: ``(T, 3)`` int64 grid triangles joining valid neighbours (two per full cell).
    """

    size: tuple[int, int]
    indices: Tensor
    weights: Tensor
    valid: Tensor
    triangles: Tensor

    def points(self, vertices: Tensor) -> Tensor:
        """Grid points of a batch of meshes. ``(B, V, C) -> (B, N, C)``."""
        return barycentric_points(vertices, self.indices, self.weights)


def model_uv(model: MorphableModel, region: str | None = "face", symmetric: bool = True) -> Tensor:
    """Symmetric conformal flattening of a model's mean mesh (restricted to ``region`` when it exists).

    Returns ``(V, 2)`` UVs; vertices outside the flattened region are NaN. The symmetry list is the model's
    own (``model.symmetry``) or, failing that, nearest mirrored vertices.
    """
    tris = model.triangles.cpu().numpy()
    if region is not None and region in model.regions:
        tris = tris[submesh(model.triangles, model.regions[region], model.n_vertices).triangle_ids.cpu().numpy()]
    mean = model.mean.detach().cpu().double().numpy()
    pairs = None
    if symmetric:
        if model.symmetry is not None:
            pairs = symmetry_pairs(model.symmetry.cpu().numpy(), tris).numpy()
        else:
            pairs = mirror_pairs(mean, tris).numpy()
    return flatten(mean, tris, pairs)


def uv_grid(uv: Tensor, triangles: Tensor, size: tuple[int, int]) -> UVGrid:
    """Locate an ``H' × W'`` grid (row 0 at v = 1) in a UV layout. ``uv (V, 2)``, ``triangles (F, 3)``."""
    H, W = size
    vv, uu = torch.meshgrid(1 - torch.linspace(0, 1, H, dtype=torch.float64),
                            torch.linspace(0, 1, W, dtype=torch.float64), indexing="ij")
    q = torch.stack([uu, vv], -1).reshape(-1, 2)
    tri = torch.as_tensor(triangles).long()
    ids, bary = locate(uv, tri, q)
    valid = ids >= 0
    idx = torch.where(valid[:, None], tri[ids.clamp_min(0)], 0)
    w = torch.where(valid[:, None], bary, 0.0)
    grid = torch.arange(H * W).reshape(H, W)
    a, b, c, d = grid[:-1, :-1].reshape(-1), grid[:-1, 1:].reshape(-1), grid[1:, :-1].reshape(-1), grid[1:, 1:].reshape(-1)
    # counter-clockwise seen from +z once rows go down in v: (a, c, b) and (b, c, d)
    t = torch.cat([torch.stack([a, c, b], 1), torch.stack([b, c, d], 1)])
    t = t[valid[t].all(1)]
    return UVGrid((H, W), idx, w.float(), valid, t)


def resample_model(model: MorphableModel, grid: UVGrid) -> MorphableModel:
    """The model re-expressed on the grid's points: ``N = H'·W'`` vertices, interpolated mean and bases.

    Landmarks carry over through the grid's barycentric weights where the landmark's triangle maps onto the
    grid; the resampled model keeps the original's expression kind, UVs become the grid coordinates.
    """
    def interp(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        flat = x.reshape(1, x.shape[0], -1)  # (1, V, 3*K)
        return grid.points(flat)[0].reshape(len(grid.indices), *x.shape[1:])

    H, W = grid.size
    vv, uu = torch.meshgrid(1 - torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    return MorphableModel(
        name=f"{model.name}_uv{H}x{W}",
        mean=interp(model.mean),
        triangles=grid.triangles,
        identity_basis=interp(model.identity_basis),
        identity_std=model.identity_std,
        expression_basis=interp(model.expression_basis),
        expression_kind=model.expression_kind,
        expression_names=model.expression_names,
        albedo_mean=interp(model.albedo_mean),
        albedo_basis=interp(model.albedo_basis),
        uv=torch.stack([uu, vv], -1).reshape(-1, 2),
        metadata={**model.metadata, "resampled_from": model.name, "grid": [H, W]},
        dtype=model.mean.dtype,
    )
