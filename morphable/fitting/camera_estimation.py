"""Scaled-orthographic camera from 2D–3D point correspondences, batched.

Two steps, both vectorised over the batch:

1. :func:`estimate_scaled_orthographic`: the linear *Gold Standard* affine camera (Hartley & Zisserman,
   "Multiple View Geometry", 2nd ed., Alg. 7.2: centre both point sets, least-squares 2×3 affine map),
   then the nearest scaled orthographic camera (rows of the affine map orthonormalised by SVD, scale the
   mean singular value) — the method of eos's ``estimate_orthographic_projection_linear``.
2. :func:`refine_scaled_orthographic`: Gauss–Newton on the true scaled-orthographic reprojection error
   over (rotation, log scale, translation); the linear step minimises an algebraic error of an affine
   camera, this step minimises the geometric error of the camera we return.

Points are ``(B, N, 3)`` model-space mm and ``(B, N, 2)`` image pixels (y down); ``weights (B, N)`` are
per-point weights (0 = missing). At least 4 points with non-zero weight are needed for the linear step.
The camera convention is :class:`~morphable.geometry.camera.ScaledOrthographic`:
``u = s (R X)_x + t_x``, ``v = −s (R X)_y + t_y``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle

_FLIP = (1.0, -1.0)  # image v = −(view y)


def _flip(points2d: Tensor) -> Tensor:
    """Image pixels (y down) -> y-up coordinates, so that ``p = s R[:2] X + t'``."""
    return points2d * points2d.new_tensor(_FLIP)


def _weighted_mean(x: Tensor, w: Tensor) -> Tensor:
    """``(B, N, C), (B, N) -> (B, C)``."""
    return (x * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-12)


def estimate_scaled_orthographic(points3d: Tensor, points2d: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Linear scaled-orthographic camera (Gold Standard affine + orthonormalisation).

    Args:
        points3d: ``(B, N, 3)`` model points (mm).
        points2d: ``(B, N, 2)`` image points (px); rows with weight 0 may hold anything finite.
        weights: ``(B, N)`` non-negative weights, default all ones.
    Returns:
        ``scale (B,)`` px/mm, ``R (B, 3, 3)`` rotation matrix, ``t (B, 2)`` px.
    """
    if weights is None:
        weights = points3d.new_ones(points3d.shape[:2])
    y = _flip(points2d)
    Xm, ym = _weighted_mean(points3d, weights), _weighted_mean(y, weights)
    Xc, yc = points3d - Xm[:, None], y - ym[:, None]
    wX = Xc * weights[..., None]
    # normal equations of  min Σ w ‖y_c − A X_c‖²  for A (2×3):  (Σ w X Xᵀ) Aᵀ = Σ w X yᵀ
    M = wX.transpose(1, 2) @ Xc + 1e-9 * torch.eye(3, dtype=Xc.dtype, device=Xc.device)
    At = torch.linalg.solve(M, wX.transpose(1, 2) @ yc)  # (B, 3, 2)
    U, S, Vh = torch.linalg.svd(At.transpose(1, 2), full_matrices=False)  # A = U diag(S) Vh, Vh (B, 2, 3)
    rows = U @ Vh  # nearest 2×3 matrix with orthonormal rows
    r3 = torch.cross(rows[:, 0], rows[:, 1], dim=-1)
    R = torch.cat([rows, r3[:, None]], dim=1)
    s = S.mean(-1)
    t = ym - s[:, None] * (R[:, :2] @ Xm[..., None])[..., 0]
    return s, R, t * t.new_tensor(_FLIP)


def project_scaled_orthographic(points3d: Tensor, scale: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """``(B, N, 3)`` -> ``(B, N, 2)`` px with ``u = s (RX)_x + t_x``, ``v = −s (RX)_y + t_y``."""
    X = points3d @ R.transpose(1, 2)
    return _flip(scale[:, None, None] * X[..., :2]) + t[:, None]


def refine_scaled_orthographic(points3d: Tensor, points2d: Tensor, weights: Tensor, scale: Tensor, R: Tensor,
                               t: Tensor, steps: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """Gauss–Newton on ``Σ_i w_i ‖x_i − π(X_i)‖²`` starting from ``(scale, R, t)``.

    Parameters are a left rotation increment ``R ← exp([ω]_×) R``, ``log s`` and ``t``; the Jacobian of the
    projection ``p = s F Π R X + t`` (``F = diag(1, −1)``, ``Π`` drops z) is
    ``∂p/∂ω = −s F Π [R X]_×``, ``∂p/∂log s = p − t``, ``∂p/∂t = I``. Each step solves a ``(B, 6, 6)`` system.

    Returns:
        refined ``scale (B,)``, ``R (B, 3, 3)``, ``t (B, 2)``.
    """
    eye6 = 1e-9 * torch.eye(6, dtype=points3d.dtype, device=points3d.device)
    w = weights.repeat_interleave(2, dim=1)[..., None]  # (B, 2N, 1)
    for _ in range(steps):
        X = points3d @ R.transpose(1, 2)  # (B, N, 3) view frame
        sX = scale[:, None, None] * X
        x, y, z = sX.unbind(-1)
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        # rows of ∂(u, v)/∂(ω, log s, t): u = sX_x + t_x, v = −sX_y + t_y, ∂(RX)/∂ω = −[RX]_×
        J = torch.stack([zero, z, -y, x, one, zero, z, zero, -x, -y, zero, one], -1).reshape(*x.shape, 2, 6)
        J = J.flatten(1, 2)  # (B, 2N, 6)
        r = (points2d - torch.stack([x + t[:, None, 0], -y + t[:, None, 1]], -1)).flatten(1)[..., None]
        wJ = J * w
        delta = torch.linalg.solve(wJ.transpose(1, 2) @ J + eye6, wJ.transpose(1, 2) @ r)[..., 0]  # (B, 6)
        R = axis_angle_to_matrix(delta[:, :3]) @ R
        scale = scale * torch.exp(delta[:, 3])
        t = t + delta[:, 4:]
    return scale, R, t


def to_camera(scale: Tensor, R: Tensor, t: Tensor) -> ScaledOrthographic:
    """Pack ``(scale, R, t)`` as a :class:`ScaledOrthographic` (rotation as axis-angle)."""
    return ScaledOrthographic(scale, matrix_to_axis_angle(R), t)
