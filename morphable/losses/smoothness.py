"""Mesh-Laplacian smoothness of per-vertex quantities (albedo, displacements).

``E = mean_b Σ_v ‖(L x_b)_v‖_p^p`` with ``L`` a (uniform or cotangent) mesh Laplacian from
``geometry/laplacian.py``: p = 2 for albedo smoothness, p = 1 for Zhang et al.'s detail term μ₂‖L d‖₁
(edge-preserving: displacements may have creases).
"""
from __future__ import annotations

from torch import Tensor

from morphable.geometry.laplacian import SparseOperator


def laplacian_loss(values: Tensor, laplacian: SparseOperator, p: int = 2) -> Tensor:
    """``mean_b Σ_v ‖(L x_b)_v‖_p^p``.

    Args:
        values: ``(B, V, C)`` or ``(B, V)`` per-vertex values.
        laplacian: ``(V, V)`` :class:`~morphable.geometry.laplacian.SparseOperator`.
        p: 1 or 2.
    Returns:
        scalar.
    """
    x = values if values.dim() == 3 else values[..., None]
    B, V, C = x.shape
    Lx = (laplacian.to(x.dtype) @ x.permute(1, 0, 2).reshape(V, B * C)).reshape(V, B, C)
    if p == 2:
        return (Lx * Lx).sum() / B
    if p == 1:
        return Lx.abs().sum() / B
    raise ValueError(f"laplacian_loss: p must be 1 or 2, got {p}")
