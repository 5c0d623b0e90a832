"""Linear blend skinning (LBS) as small pure functions, composed by :func:`lbs`.

The model is the one of SMPL (Loper et al., "SMPL: A Skinned Multi-Person Linear Model", SIGGRAPH Asia
2015, Eqs. 1–4) as FLAME uses it (Li et al., "Learning a model of facial shape and expression from 4D
scans", SIGGRAPH Asia 2017, Sec. 3):

    T_P(β, θ, ψ) = T̄ + B_S(β) + B_E(ψ) + B_P(θ)          (shaped, then pose-corrected template)
    J(β, ψ)      = 𝒥 · (T̄ + B_S(β) + B_E(ψ))              (joints regressed from the unposed shape)
    v'_i         = Σ_k w_ik · G'_k(θ, J) · [t_i; 1]          (skinning)

with ``B_P(θ) = Σ_n (vec(R(θ)) − vec(R(θ*)))_n · P_n`` over the non-root joints (``R(θ*) = I``) and
``G'_k = G_k · [[I, −J_k], [0, 1]]`` the world transform of joint ``k`` with its rest position removed.

Conventions: points are row vectors in ``(B, V, 3)`` arrays but rotations act on column vectors
(``x' = R @ x``, as in :mod:`morphable.geometry.rotation`); units are whatever the inputs use (mm in
:class:`~morphable.models.flame.Flame`); dtype and device follow the inputs. Joint ``k``'s parent is
``parents[k]`` with ``parents[0] = -1`` and parents listed before their children.
"""
from __future__ import annotations

import torch
from torch import Tensor

from morphable.geometry.rotation import axis_angle_to_matrix
from morphable.models.functional import blend


def blend_shapes(coeffs: Tensor, basis: Tensor) -> Tensor:
    """Shape/expression offsets ``B(β) = Σ_k β_k S_k``. ``(B, K), (V, 3, K) -> (B, V, 3)``."""
    return blend(coeffs, basis)


def vertices_to_joints(regressor: Tensor, vertices: Tensor) -> Tensor:
    """Joint locations regressed from vertices, ``J = 𝒥 · T``. ``(J, V), (B, V, 3) -> (B, J, 3)``."""
    return torch.einsum("jv,bvc->bjc", regressor.to(vertices.dtype), vertices)  # J[b,j,c] = Σ_v 𝒥[j,v] T[b,v,c]


def pose_feature(rotations: Tensor) -> Tensor:
    """The pose-corrective input ``vec(R_k − I)`` over the non-root joints ``k = 1..J−1``.

    Args:
        rotations: ``(B, J, 3, 3)`` per-joint local rotation matrices.
    Returns:
        ``(B, (J − 1) · 9)``, each joint's matrix flattened row-major (FLAME/SMPL's layout).
    """
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    return (rotations[:, 1:] - eye).reshape(rotations.shape[0], -1)


def pose_offsets(feature: Tensor, posedirs: Tensor) -> Tensor:
    """Pose-corrective blend shapes ``B_P``. ``(B, P), (P, V·3) -> (B, V, 3)``.

    ``posedirs`` is FLAME's ``(V, 3, P)`` array reshaped to ``(V·3, P)`` and transposed.
    """
    return (feature @ posedirs.to(feature.dtype)).reshape(feature.shape[0], -1, 3)


def rigid_transforms(rotations: Tensor, joints: Tensor, parents: Tensor) -> tuple[Tensor, Tensor]:
    """Forward kinematics along the kinematic tree.

    Joint ``k`` has the local transform ``[R_k, J_k − J_parent(k)]`` (``[R_0, J_0]`` at the root), and its
    world transform is ``G_k = G_parent(k) · local_k``.

    Args:
        rotations: ``(B, J, 3, 3)`` local rotations.
        joints: ``(B, J, 3)`` rest joint locations.
        parents: ``(J,)`` int64 parent ids, ``parents[0] = -1``, parents before children.
    Returns:
        posed joints ``(B, J, 3)`` (the translation of ``G_k``) and the skinning transforms
        ``G'_k = G_k · [[I, −J_k], [0, 1]]`` as ``(B, J, 4, 4)``.
    """
    B, J = joints.shape[:2]
    offsets = joints.clone()
    offsets[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    bottom = torch.zeros(B, J, 1, 4, dtype=joints.dtype, device=joints.device)
    bottom[..., 3] = 1
    local = torch.cat([torch.cat([rotations, offsets[..., None]], dim=-1), bottom], dim=-2)  # (B,J,4,4)
    world = [local[:, 0]]
    for k in range(1, J):
        world.append(world[int(parents[k])] @ local[:, k])
    G = torch.stack(world, dim=1)  # (B, J, 4, 4)
    posed_joints = G[..., :3, 3]
    # G'_k = G_k [[I, -J_k], [0, 1]]: only the translation changes, t' = t_k - R_world,k J_k
    shift = torch.einsum("bjcd,bjd->bjc", G[..., :3, :3], joints)  # shift[b,j] = R_world[b,j] @ J[b,j]
    skinning = G.clone()
    skinning[..., :3, 3] = posed_joints - shift
    return posed_joints, skinning


def skin(vertices: Tensor, weights: Tensor, transforms: Tensor) -> Tensor:
    """Blend the joint transforms per vertex and apply them, ``v' = (Σ_k w_ik G'_k) [v; 1]``.

    Args:
        vertices: ``(B, V, 3)`` pose-corrected rest vertices.
        weights: ``(V, J)`` skinning weights (rows sum to 1).
        transforms: ``(B, J, 4, 4)`` skinning transforms ``G'_k`` from :func:`rigid_transforms`.
    Returns:
        ``(B, V, 3)`` posed vertices.
    """
    T = torch.einsum("vj,bjcd->bvcd", weights.to(vertices.dtype), transforms[..., :3, :])  # (B,V,3,4)
    return torch.einsum("bvcd,bvd->bvc", T[..., :3], vertices) + T[..., 3]  # R_i v_i + t_i per vertex


def lbs(shaped: Tensor, pose: Tensor, posedirs: Tensor, regressor: Tensor, parents: Tensor,
        weights: Tensor) -> tuple[Tensor, Tensor]:
    """Pose a shaped template with linear blend skinning.

    Args:
        shaped: ``(B, V, 3)`` template plus shape and expression offsets, ``T̄ + B_S + B_E``.
        pose: ``(B, J, 3)`` axis-angle local rotation of every joint (radians).
        posedirs: ``(P, V·3)`` pose-corrective basis, ``P = (J − 1) · 9``.
        regressor: ``(J, V)`` joint regressor.
        parents: ``(J,)`` int64 kinematic tree.
        weights: ``(V, J)`` skinning weights.
    Returns:
        posed vertices ``(B, V, 3)`` and posed joints ``(B, J, 3)``.
    """
    # 1. joints from the unposed (shape + expression) mesh
    joints = vertices_to_joints(regressor, shaped)
    # 2. per-joint rotation matrices (Rodrigues), then pose-corrective offsets from (R_k - I), k >= 1
    rotations = axis_angle_to_matrix(pose)
    corrected = shaped + pose_offsets(pose_feature(rotations), posedirs)
    # 3. forward kinematics and skinning
    posed_joints, transforms = rigid_transforms(rotations, joints, parents)
    return skin(corrected, weights, transforms), posed_joints
