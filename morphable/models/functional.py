"""The model's maths as small pure functions (the Module in ``base.py`` only wires them together)."""
from __future__ import annotations

import torch
from torch import Tensor


def blend(coeffs: Tensor, basis: Tensor) -> Tensor:
    """Linear combination of basis vectors. ``(B, K), (V, 3, K) -> (B, V, 3)``."""
    return torch.einsum("bk,vck->bvc", coeffs, basis)  # out[b,v,c] = sum_k coeffs[b,k] * basis[v,c,k]


def barycentric_points(vertices: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
    """Points given as weighted vertex triples (landmarks on triangles, UV-grid samples).

    Args:
        vertices: ``(B, V, C)``.
        indices: ``(L, 3)`` int64 vertex ids.
        weights: ``(L, 3)`` barycentric weights (rows sum to 1; a vertex landmark is ``[1, 0, 0]``).
    Returns:
        ``(B, L, C)``.
    """
    return torch.einsum("blkc,lk->blc", vertices[:, indices], weights.to(vertices.dtype))
