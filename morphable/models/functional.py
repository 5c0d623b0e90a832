"""The model's maths as small pure functions (the Module in ``base.py`` only wires them together)."""
from __future__ import annotations

import torch
from torch import Tensor


def blend(coeffs: Tensor, basis: Tensor) -> Tensor:
    """Linear combination of basis vectors. ``(B, K), (V, 3, K) -> (B, V, 3)``."""
    return torch.einsum("bk,vck->bvc", coeffs, basis)  # out[b,v,c] = sum_k coeffs[b,k] * basis[v,c,k]


def blend_rows(coeffs: Tensor, rows: Tensor) -> Tensor:
    """:func:`blend` with the basis as component rows: ``(B, K), (K' ≥ K, V, 3) -> (B, V, 3)``.

    The same sum, but as a vector–matrix product over contiguous rows: on CPU about twice as fast as the
    ``(V, 3, K)`` layout's product, forward and backward (a 28k × 100 basis: 1.1 against 2.4 ms)."""
    K, shape = coeffs.shape[1], rows.shape[1:]
    return (coeffs @ rows[:K].reshape(K, shape.numel())).view(coeffs.shape[0], *shape)


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
