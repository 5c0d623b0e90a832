"""Per-vertex uncertainty of a fitted shape from the posterior covariance of its identity coefficients.

A vertex is linear in the coefficients, ``X_v = m_v + B_v α``, so with ``α ~ N(α̂, Σ)`` its covariance is
``B_v Σ B_vᵀ`` (3×3, mm²). We report ``sqrt(trace(B_v Σ B_vᵀ))``: the RMS distance (mm) of the vertex from
its fitted position under the posterior — large where the landmarks leave the shape unconstrained.
"""
from __future__ import annotations

import torch
from torch import Tensor


def vertex_std(basis: Tensor, covariance: Tensor) -> Tensor:
    """``(V, 3, K)`` basis (mm per unit coefficient), ``(B, K, K)`` covariance -> ``(B, V)`` mm.

    Uses ``trace(B Σ Bᵀ) = ‖B L‖²_F`` with ``Σ = L Lᵀ`` (Cholesky), one matrix product per batch.
    """
    K = covariance.shape[-1]
    L = torch.linalg.cholesky(covariance.to(basis.dtype))  # (B, K, K)
    BL = torch.einsum("vck,bkl->bvcl", basis[..., :K], L)  # (B, V, 3, K)
    return BL.square().sum((-1, -2)).sqrt()


def vertex_std_reference(basis: Tensor, covariance: Tensor) -> Tensor:
    """Slow reference for :func:`vertex_std`: the 3×3 covariance of each vertex, one at a time."""
    K = covariance.shape[-1]
    out = torch.empty(covariance.shape[0], basis.shape[0], dtype=basis.dtype)
    for b in range(covariance.shape[0]):
        for v in range(basis.shape[0]):
            Bv = basis[v, :, :K].to(covariance.dtype)
            out[b, v] = torch.trace(Bv @ covariance[b] @ Bv.T).sqrt()
    return out
