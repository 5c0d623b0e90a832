"""FLAME (Li, Bolkart, Black, Li, Romero: "Learning a model of facial shape and expression from 4D scans",
SIGGRAPH Asia 2017): a linear shape/expression model posed by linear blend skinning with 5 joints.

:class:`Flame` is a :class:`~morphable.models.base.MorphableModel` whose linear part (template, 300
shape and 100 expression components, in mm) behaves like every other model; :meth:`Flame.forward`
adds the pose: the global rotation, the neck, the jaw and the two eyeballs (:mod:`morphable.models.lbs`).
With zero pose it returns exactly the linear model, so code written for ``MorphableModel`` works.

**Coefficient scale (assumption).** FLAME's ``shapedirs`` are published already scaled so that shape and
expression coefficients are about N(0, 1) (the model's own code samples them that way); we use them as
the standardised bases of DESIGN.md without rescaling. ``identity_std`` holds each component's norm
(mm), which equals the PCA σ if the unscaled components were orthonormal, as PCA components are.

**Landmarks** (RingNet, Sanyal et al. CVPR 2019; TF_FLAME): the static embedding puts iBUG points on
triangles (triangle id + barycentrics); the dynamic embedding gives the 17 contour points (iBUG 0–16)
for each head yaw from −39° to +39° in 1° bins (79 bins): bins 0..39 hold yaw 0..+39°, bins 40..78
hold yaw −1..−39°. :func:`contour_bin` is that lookup and :func:`head_yaw` extracts the yaw from the
pose as RingNet does (``atan2(−R₂₀, √(R₀₀² + R₁₀²))`` of ``R_global · R_neck``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from morphable.geometry.rotation import axis_angle_to_matrix
from morphable.models.base import MorphableModel, ModelOutput
from morphable.models.lbs import lbs

JOINT_NAMES = ("global", "neck", "jaw", "left_eye", "right_eye")  # FLAME's joint order (names as in smplx)
N_CONTOUR = 17  # iBUG 0..16


@dataclass(frozen=True)
class FlameOutput(ModelOutput):
    """:class:`ModelOutput` plus the posed joints.

    Attributes:
        joints: ``(B, J, 3)`` posed joint locations, mm (J = 5 for FLAME, order :data:`JOINT_NAMES`).
    """

    joints: Tensor | None = None


def contour_bin(yaw: Tensor, n_bins: int = 79) -> Tensor:
    """RingNet's yaw → dynamic-contour bin lookup. ``(B,) radians -> (B,) int64``.

    The yaw in degrees is rounded (half to even) and clamped to ±(n_bins − 1)/2; a yaw of ``d ≥ 0``
    degrees is bin ``d``, a yaw of ``d < 0`` is bin ``(n_bins − 1)/2 − d``.
    """
    half = (n_bins - 1) // 2
    degrees = torch.round(torch.rad2deg(yaw.detach())).clamp(-half, half).long()
    return torch.where(degrees >= 0, degrees, half - degrees)


def head_yaw(pose: Tensor) -> Tensor:
    """The head's yaw as RingNet measures it for the contour lookup. ``(B, J, 3) -> (B,)`` radians.

    ``R = R_global · R_neck`` (joint 0 then joint 1); yaw ``= atan2(−R[2,0], √(R[0,0]² + R[1,0]²))``,
    the rotation about +y of an ``R = R_z R_y R_x`` decomposition (positive turns the face towards +x).
    """
    R = axis_angle_to_matrix(pose[:, 0]) @ axis_angle_to_matrix(pose[:, 1])
    return torch.atan2(-R[:, 2, 0], torch.sqrt(R[:, 0, 0] ** 2 + R[:, 1, 0] ** 2))


class Flame(MorphableModel):
    """FLAME: the linear model of :class:`MorphableModel` plus LBS pose (see the module docstring).

    Args:
        posedirs: ``(P, V·3)`` pose-corrective basis in mm, ``P = (J − 1) · 9`` (FLAME's ``(V, 3, P)``
            array reshaped to ``(V·3, P)`` and transposed).
        joint_regressor: ``(J, V)`` dense joint regressor.
        parents: ``(J,)`` int64 kinematic tree, ``parents[0] = -1``, parents before children.
        skinning_weights: ``(V, J)``.
        contour_indices / contour_weights: ``(N_bins, 17, 3)`` dynamic contour as weighted vertex triples
            (vertex ids of the embedding's triangles and its barycentrics), or ``None``.
        **kwargs: everything :class:`MorphableModel` takes (mean, triangles, bases in mm, landmarks...).
    """

    def __init__(self, *, posedirs: Any, joint_regressor: Any, parents: Any, skinning_weights: Any,
                 contour_indices: Any = None, contour_weights: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        dtype = self.mean.dtype
        V = self.n_vertices
        parents = torch.as_tensor(parents, dtype=torch.int64)
        J = parents.shape[0]
        if parents[0] != -1 or any(not 0 <= int(parents[k]) < k for k in range(1, J)):
            raise ValueError(f"parents: expected -1 then parents before children, got {parents.tolist()}")
        self.register_buffer("parents", parents)
        self.register_buffer("posedirs", torch.as_tensor(posedirs, dtype=dtype).reshape((J - 1) * 9, V * 3))
        self.register_buffer("joint_regressor", torch.as_tensor(joint_regressor, dtype=dtype).reshape(J, V))
        self.register_buffer("skinning_weights", torch.as_tensor(skinning_weights, dtype=dtype).reshape(V, J))
        if (contour_indices is None) != (contour_weights is None):
            raise ValueError("contour_indices and contour_weights go together")
        self.register_buffer("contour_indices", None if contour_indices is None
                             else torch.as_tensor(contour_indices, dtype=torch.int64).reshape(-1, N_CONTOUR, 3))
        self.register_buffer("contour_weights", None if contour_weights is None
                             else torch.as_tensor(contour_weights, dtype=dtype).reshape(-1, N_CONTOUR, 3))

    @property
    def n_joints(self) -> int:
        return self.parents.shape[0]

    def describe(self) -> str:
        """:meth:`MorphableModel.describe` plus the joints and the dynamic contour."""
        names = ", ".join(JOINT_NAMES) if self.n_joints == len(JOINT_NAMES) else f"{self.n_joints} joints"
        bins = "none" if self.contour_indices is None else f"{self.contour_indices.shape[0]} yaw bins"
        return super().describe() + f"\n  pose: LBS with {self.n_joints} joints ({names}); dynamic contour: {bins}"

    def full_pose(self, pose: Tensor | None = None, *, global_rotation: Tensor | None = None,
                  neck: Tensor | None = None, jaw: Tensor | None = None,
                  eyes: Tensor | None = None) -> Tensor | None:
        """The ``(B, J, 3)`` axis-angle pose from either ``pose`` or its named parts (``None`` if none).

        Args:
            pose: ``(B, J, 3)`` (or ``(B, J·3)``) local rotations of all joints, radians.
            global_rotation / neck / jaw: ``(B, 3)`` each; eyes: ``(B, 2, 3)`` (left, right). Missing
                parts are zero. Cannot be combined with ``pose``.
        """
        parts = {"global_rotation": global_rotation, "neck": neck, "jaw": jaw, "eyes": eyes}
        given = {k: v for k, v in parts.items() if v is not None}
        if pose is not None:
            if given:
                raise ValueError(f"give either pose or its parts ({', '.join(given)}), not both")
            pose = pose.reshape(pose.shape[0], -1, 3) if pose.dim() == 2 else pose
            if pose.dim() != 3 or pose.shape[1:] != (self.n_joints, 3):
                raise ValueError(f"pose: expected (B, {self.n_joints}, 3), got {tuple(pose.shape)}")
            return pose
        if not given:
            return None
        if self.n_joints != len(JOINT_NAMES):
            raise ValueError(f"named pose parts need FLAME's {len(JOINT_NAMES)} joints, model has {self.n_joints}")
        ref = next(iter(given.values()))
        B = ref.shape[0]
        pose = ref.new_zeros(B, self.n_joints, 3)
        slots = {"global_rotation": slice(0, 1), "neck": slice(1, 2), "jaw": slice(2, 3), "eyes": slice(3, 5)}
        for key, value in given.items():
            expected = (B, 2, 3) if key == "eyes" else (B, 3)
            if tuple(value.shape) != expected:
                raise ValueError(f"{key}: expected {expected}, got {tuple(value.shape)}")
            pose[:, slots[key]] = value.reshape(B, -1, 3)
        return pose

    def forward(self, identity: Tensor | None = None, expression: Tensor | None = None,
                pose: Tensor | None = None, *, global_rotation: Tensor | None = None,
                neck: Tensor | None = None, jaw: Tensor | None = None, eyes: Tensor | None = None,
                albedo: Tensor | None = None) -> FlameOutput:
        """Shape, expression and pose a head.

        Args:
            identity: ``(B, K ≤ 300)`` standardised shape coefficients (β), or ``None``.
            expression: ``(B, K ≤ 100)`` standardised expression coefficients (ψ), or ``None``.
            pose / global_rotation / neck / jaw / eyes: see :meth:`full_pose` (θ, radians); zero when absent.
            albedo: ``(B, K)`` colour coefficients when the model has a colour model.
        Returns:
            :class:`FlameOutput`: ``vertices (B, V, 3)`` mm, ``colors`` (or ``None``), ``joints (B, J, 3)`` mm.
        """
        pose = self.full_pose(pose, global_rotation=global_rotation, neck=neck, jaw=jaw, eyes=eyes)
        linear = super().forward(identity, expression, albedo)
        shaped, colors = linear.vertices, linear.colors
        if pose is None:
            pose = shaped.new_zeros(shaped.shape[0], self.n_joints, 3)
        elif pose.shape[0] != shaped.shape[0]:
            if identity is not None or expression is not None or albedo is not None:
                raise ValueError(f"pose: batch {pose.shape[0]} does not match batch {shaped.shape[0]}")
            shaped = shaped.expand(pose.shape[0], -1, -1)
            colors = None if colors is None else colors.expand(pose.shape[0], -1, -1)
        vertices, joints = lbs(shaped, pose, self.posedirs, self.joint_regressor, self.parents,
                               self.skinning_weights)
        return FlameOutput(vertices=vertices, colors=colors, joints=joints)

    def dynamic_contour(self, yaw: Tensor) -> tuple[Tensor, Tensor]:
        """The 17 contour landmarks (iBUG 0–16) for each head yaw, as weighted vertex triples.

        Args:
            yaw: ``(B,)`` radians (:func:`head_yaw` of a pose).
        Returns:
            vertex ids ``(B, 17, 3)`` int64 and barycentric weights ``(B, 17, 3)``.
        """
        if self.contour_indices is None:
            raise ValueError(f"model {self.name} has no dynamic contour embedding")
        b = contour_bin(yaw, self.contour_indices.shape[0]).to(self.contour_indices.device)
        return self.contour_indices[b], self.contour_weights[b]

    def landmarks(self, vertices: Tensor, yaw: Tensor | None = None) -> Tensor:
        """The 68 iBUG landmarks; with ``yaw (B,)`` (radians) the contour (0–16) follows the head's yaw.

        ``(B, V, 3) -> (B, 68, 3)``. Without ``yaw`` the static definition is used.
        """
        points = super().landmarks(vertices)
        if yaw is None:
            return points
        ids, w = self.dynamic_contour(yaw)
        b = torch.arange(vertices.shape[0], device=vertices.device)[:, None, None]
        contour = (vertices[b, ids] * w[..., None].to(vertices.dtype)).sum(-2)  # (B,17,3,3) -> (B,17,3)
        return torch.cat([contour, points[:, N_CONTOUR:]], dim=1)
