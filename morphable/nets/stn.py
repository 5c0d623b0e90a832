"""The 3DMM spatial transformer: θ = (r, t, log s, α) → flattened texture, visibility mask, landmarks
(Bas et al. 2017, Fig. 2). The localiser network that predicts θ is separate; here θ is an input, so the
same module serves a trained localiser and the gradient-descent fit of ``fitting/stn.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from morphable.models.base import MorphableModel
from morphable.models.resample import UVGrid
from morphable.models.functional import barycentric_points
from morphable.nets.stn_layers import (AxisAngleToRotation, BilinearSampler, GridLayer, LogScale, Masking,
                                       MorphableLayer, OrthographicProjection, Rotate3D, Translate2D,
                                       VisibilityLayer)


@dataclass(frozen=True)
class Theta:
    """Spatial-transformer parameters (batched).

    Attributes:
        rotation: ``(B, 3)`` axis-angle, radians.
        translation: ``(B, 2)`` pixels.
        log_scale: ``(B,)`` log of pixels per millimetre.
        alpha: ``(B, K)`` standardised identity coefficients.
    """

    rotation: Tensor
    translation: Tensor
    log_scale: Tensor
    alpha: Tensor


@dataclass(frozen=True)
class STNOutput:
    """Attributes: ``texture (B, H', W', C)`` masked flattened texture; ``mask (B, H', W')`` visibility (not
    self-occluded and inside the photo);
    ``grid (B, H', W', 2)`` sample positions (px); ``landmarks (B, 68, 2)`` projected model landmarks (px)."""

    texture: Tensor
    mask: Tensor
    grid: Tensor
    landmarks: Tensor


class SpatialTransformer3DMM(nn.Module):
    """The grid generator + sampler chain of a 3DMM-STN.

    Args:
        model: the morphable model (shape only is used).
        grid: the :class:`UVGrid` of a symmetric flattening of ``model``.
        visibility_resolution: z-buffer size for the self-occlusion mask.
    """

    def __init__(self, model: MorphableModel, grid: UVGrid, visibility_resolution: int = 256):
        super().__init__()
        self.model = model
        self.grid_def = grid
        self.shape = MorphableLayer(model)
        self.to_rotation = AxisAngleToRotation()
        self.rotate = Rotate3D()
        self.project = OrthographicProjection()
        self.scale = LogScale()
        self.translate = Translate2D()
        self.to_grid = GridLayer(grid.size)
        self.sampler = BilinearSampler()
        self.visibility = VisibilityLayer(model, grid, visibility_resolution)
        self.masking = Masking()

    def image_points(self, theta: Theta, points: Tensor, R: Tensor) -> Tensor:
        """Model-space points ``(B, N, 3)`` → image pixels ``(B, N, 2)`` through the layer chain."""
        return self.translate(self.scale(self.project(self.rotate(R, points)), theta.log_scale), theta.translation)

    def forward(self, image: Tensor, theta: Theta) -> STNOutput:
        """``image (B, H, W, C)`` in [0, 1] → :class:`STNOutput`."""
        R = self.to_rotation(theta.rotation)
        verts = self.shape(theta.alpha)
        grid_points = self.image_points(theta, self.grid_def.points(verts), R)
        grid = self.to_grid(grid_points)
        sampled = self.sampler(image, grid)
        H, W = image.shape[1:3]
        inside = ((grid >= 0) & (grid <= grid.new_tensor([W - 1, H - 1]))).all(-1)
        mask = self.visibility(R, theta.alpha) & inside  # points sampled off the photo are not seen either
        landmarks = self.image_points(
            theta, barycentric_points(verts, self.model.landmark_indices, self.model.landmark_weights), R)
        return STNOutput(self.masking(sampled, mask), mask, grid, landmarks)
