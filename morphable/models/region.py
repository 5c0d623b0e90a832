"""Restricting a model to a vertex subset (e.g. the face region for fitting and rendering).

The sub-model has the same coefficients (bases are row-sliced), triangles whose three vertices are all kept
(re-indexed), and the landmark, contour, symmetry and region tables re-indexed; entries that point outside
the subset are dropped (landmarks become undefined in ``landmark_mask``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from morphable.geometry.mesh import submesh
from morphable.models.base import MorphableModel


def restrict(model: MorphableModel, vertex_ids: Tensor, name: str | None = None) -> MorphableModel:
    """The model on ``vertex_ids`` ``(K,)`` only (sorted, unique); see the module docstring."""
    cut = submesh(model.triangles, torch.as_tensor(vertex_ids, dtype=torch.int64, device=model.triangles.device),
                  model.n_vertices)
    keep, new = cut.vertex_ids, cut.new_index

    def sub(x: Tensor | None) -> Tensor | None:
        return None if x is None else x[keep]

    def ids(x: Tensor | None) -> Tensor | None:
        if x is None:
            return None
        y = new[x]
        return y[y >= 0]

    tri = cut.triangles
    lmk = new[model.landmark_indices]
    defined = model.landmark_mask & ((lmk >= 0) | (model.landmark_weights == 0)).all(1)
    sym = None
    if model.symmetry is not None:
        mirrored = new[model.symmetry[keep].clamp_min(0)]
        sym = torch.where(model.symmetry[keep] >= 0, mirrored, -1)
    return MorphableModel(
        name=name or f"{model.name}_region",
        mean=sub(model.mean),
        triangles=tri,
        identity_basis=sub(model.identity_basis),
        identity_std=model.identity_std,
        expression_basis=sub(model.expression_basis),
        expression_kind=model.expression_kind,
        expression_names=model.expression_names,
        albedo_mean=sub(model.albedo_mean),
        albedo_basis=sub(model.albedo_basis),
        uv=sub(model.uv) if model.uv is not None and model.uv_triangles is None else None,
        landmark_indices=lmk.clamp_min(0),
        landmark_weights=model.landmark_weights,
        landmark_mask=defined,
        contour_right=ids(model.contour_right),
        contour_left=ids(model.contour_left),
        regions={k: ids(v) for k, v in model.regions.items()},
        symmetry=sym,
        metadata={**model.metadata, "restricted_from": model.name, "vertex_ids": keep.tolist()},
        dtype=model.mean.dtype,
    )
