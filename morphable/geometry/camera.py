"""Cameras: batched projection of model-space points (mm) to image pixels.

Frames (see ``docs/architecture.md``):

* **Model space**: right-handed, millimetres, +y up, +z out of the face towards the viewer.
* **Image space**: x right, y down, pixel centres at integer coordinates, origin at the centre of the
  top-left pixel. Because model +y is up and image y is down, both cameras flip y.
* **Depth** (returned by :meth:`project_with_depth`, used for z-buffering): distance along the viewing
  direction, *larger is farther*. The viewer looks along −z, so a point with larger z is nearer.

Both cameras are small frozen dataclasses of batched tensors, so gradients flow to every field and a
fitter can rebuild them from its optimised variables. Rotations are axis-angle at the boundary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from morphable.geometry.rotation import axis_angle_to_matrix, rotate_points


def _check_points(points: Tensor) -> None:
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"project: expected points of shape (B, N, 3), got {tuple(points.shape)}")


def _batch(x: Tensor, n: int, name: str) -> Tensor:
    """Check a per-camera field is ``(B,)`` / ``(B, n)``."""
    if n == 0:
        if x.dim() != 1:
            raise ValueError(f"{name}: expected shape (B,), got {tuple(x.shape)}")
    elif x.dim() != 2 or x.shape[-1] != n:
        raise ValueError(f"{name}: expected shape (B, {n}), got {tuple(x.shape)}")
    return x


def rescale_pixels(points: Tensor, factor: float | Tensor) -> Tensor:
    """Pixel coordinates ``(..., 2)`` of an image resized by ``factor``: ``x ↦ (x + ½) · factor − ½``.

    Pixel centres sit at integer coordinates, so the image's outer edge (−½ and ``W − ½``) maps onto the
    resized image's edge; ``factor`` > 1 enlarges.
    """
    return (points + 0.5) * factor - 0.5


def orthographic_view(X: Tensor, scale: Tensor, translation: Tensor) -> Tensor:
    """Scaled orthographic projection of view-frame points ``(B, N, 3)`` (mm) with ``scale`` ``(B,)`` px / mm and
    ``translation`` ``(B, 2)`` px: ``(B, N, 3)`` of ``(u, v, depth)``, ``u = s X_x + t_x``, ``v = −s X_y + t_y``,
    depth ``−X_z`` (:meth:`ScaledOrthographic.project_view`; callers holding ``R`` as a matrix rotate the points
    themselves)."""
    s = scale[:, None]
    u = s * X[..., 0] + translation[:, None, 0]
    v = -s * X[..., 1] + translation[:, None, 1]
    return torch.stack([u, v, -X[..., 2]], dim=-1)


@dataclass(frozen=True)
class ScaledOrthographic:
    """Scaled orthographic (weak-perspective) camera, the seeds' and eos's affine camera.

    ``u = s · (R X)_x + t_x``, ``v = −s · (R X)_y + t_y``.

    Attributes:
        scale: ``(B,)`` pixels per millimetre.
        rotation: ``(B, 3)`` axis-angle (radians), model → view.
        translation: ``(B, 2)`` pixels: where the model origin lands in the image.
    """

    scale: Tensor
    rotation: Tensor
    translation: Tensor

    def __post_init__(self) -> None:
        _batch(self.scale, 0, "ScaledOrthographic.scale")
        _batch(self.rotation, 3, "ScaledOrthographic.rotation")
        _batch(self.translation, 2, "ScaledOrthographic.translation")

    @property
    def rotation_matrix(self) -> Tensor:
        """``(B, 3, 3)``."""
        return axis_angle_to_matrix(self.rotation)

    def transform(self, points: Tensor) -> Tensor:
        """Rotate model points into the view frame (mm, no scale). ``(B, N, 3) -> (B, N, 3)``."""
        _check_points(points)
        return rotate_points(points, self.rotation_matrix)

    def project_with_depth(self, points: Tensor) -> Tensor:
        """``(B, N, 3)`` model points -> ``(B, N, 3)`` of ``(u, v, depth)``; depth in mm, larger is farther."""
        return self.project_view(self.transform(points))

    def project_view(self, X: Tensor) -> Tensor:
        """:meth:`project_with_depth` of points already in the view frame (:meth:`transform`'s output)."""
        return orthographic_view(X, self.scale, self.translation)

    def project(self, points: Tensor) -> Tensor:
        """``(B, N, 3)`` model points (mm) -> ``(B, N, 2)`` pixel coordinates."""
        return self.project_with_depth(points)[..., :2]

    def rescaled(self, factor: float | Tensor) -> "ScaledOrthographic":
        """The same view for the image resized by ``factor`` (:func:`rescale_pixels`): scale × factor."""
        return ScaledOrthographic(self.scale * factor, self.rotation, rescale_pixels(self.translation, factor))

    def to_dict(self) -> dict:
        """JSON-ready parameters of camera 0 (``scale``, ``rotation``, ``translation``)."""
        return {"type": "scaled_orthographic", "scale": float(self.scale[0]),
                "rotation": self.rotation[0].tolist(), "translation": self.translation[0].tolist()}

    @staticmethod
    def from_dict(d: dict, dtype: torch.dtype = torch.float32) -> "ScaledOrthographic":
        """Inverse of :meth:`to_dict` (batch of one)."""
        return ScaledOrthographic(torch.tensor([d["scale"]], dtype=dtype), torch.tensor([d["rotation"]], dtype=dtype),
                                  torch.tensor([d["translation"]], dtype=dtype))


@dataclass(frozen=True)
class Perspective:
    """Pinhole camera. The camera sits at the view-frame origin looking along −z (OpenGL-style).

    ``X_c = R X + t``; ``u = f · X_c,x / (−X_c,z) + c_x``, ``v = −f · X_c,y / (−X_c,z) + c_y``.
    A face at distance d in front of the camera has ``t ≈ (0, 0, −d)``.

    Attributes:
        focal: ``(B,)`` focal length in pixels.
        principal_point: ``(B, 2)`` pixels.
        rotation: ``(B, 3)`` axis-angle (radians), model → camera.
        translation: ``(B, 3)`` millimetres, model → camera.
    """

    focal: Tensor
    principal_point: Tensor
    rotation: Tensor
    translation: Tensor

    def __post_init__(self) -> None:
        _batch(self.focal, 0, "Perspective.focal")
        _batch(self.principal_point, 2, "Perspective.principal_point")
        _batch(self.rotation, 3, "Perspective.rotation")
        _batch(self.translation, 3, "Perspective.translation")

    @property
    def rotation_matrix(self) -> Tensor:
        """``(B, 3, 3)``."""
        return axis_angle_to_matrix(self.rotation)

    def transform(self, points: Tensor) -> Tensor:
        """Model points to camera coordinates (mm). ``(B, N, 3) -> (B, N, 3)``."""
        _check_points(points)
        return rotate_points(points, self.rotation_matrix) + self.translation[:, None, :]

    def project_with_depth(self, points: Tensor) -> Tensor:
        """``(B, N, 3)`` -> ``(B, N, 3)`` of ``(u, v, depth)``, depth = −z_c in mm (positive in front).

        Points at or behind the camera plane give non-finite or mirrored ``(u, v)``; the renderer clips
        against a near plane before dividing.
        """
        return self.project_view(self.transform(points))

    def project_view(self, Xc: Tensor) -> Tensor:
        """:meth:`project_with_depth` of points already in camera coordinates (:meth:`transform`'s output)."""
        depth = -Xc[..., 2]
        f = self.focal[:, None]
        u = f * Xc[..., 0] / depth + self.principal_point[:, None, 0]
        v = -f * Xc[..., 1] / depth + self.principal_point[:, None, 1]
        return torch.stack([u, v, depth], dim=-1)

    def project(self, points: Tensor) -> Tensor:
        """``(B, N, 3)`` model points (mm) -> ``(B, N, 2)`` pixel coordinates."""
        return self.project_with_depth(points)[..., :2]

    def rescaled(self, factor: float | Tensor) -> "Perspective":
        """The same view for the image resized by ``factor`` (:func:`rescale_pixels`): focal × factor."""
        return Perspective(self.focal * factor, rescale_pixels(self.principal_point, factor), self.rotation,
                           self.translation)

    def to_dict(self) -> dict:
        """JSON-ready parameters of camera 0."""
        return {"type": "perspective", "focal": float(self.focal[0]),
                "principal_point": self.principal_point[0].tolist(),
                "rotation": self.rotation[0].tolist(), "translation": self.translation[0].tolist()}

    @staticmethod
    def from_dict(d: dict, dtype: torch.dtype = torch.float32) -> "Perspective":
        """Inverse of :meth:`to_dict` (batch of one)."""
        t = lambda k: torch.tensor([d[k]], dtype=dtype)  # noqa: E731
        return Perspective(t("focal"), t("principal_point"), t("rotation"), t("translation"))


Camera = ScaledOrthographic | Perspective


def camera_from_dict(d: dict, dtype: torch.dtype = torch.float32) -> Camera:
    """Build the camera a ``params.json`` ``camera`` entry describes (``type`` picks the class)."""
    kind = d.get("type")
    if kind == "scaled_orthographic":
        return ScaledOrthographic.from_dict(d, dtype)
    if kind == "perspective":
        return Perspective.from_dict(d, dtype)
    raise ValueError(f"unknown camera type {kind!r} (expected 'scaled_orthographic' or 'perspective')")
