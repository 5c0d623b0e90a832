"""The 3DMM spatial transformer (Bas et al., "3D Morphable Models as Spatial Transformer Networks", ICCV-W
2017, Sec. 3 and Fig. 2): its geometric layers and the chain they form. None has learnable weights (they are
image formation), so they live in ``render/``; the localiser network that predicts θ is
:mod:`morphable.nets.stn_localiser`, and the per-photo gradient-descent fit is :mod:`morphable.fitting.stn`.

A localiser predicts θ = (r, t, log s, α, e); the chain below turns θ into a sampling grid and resamples the
photo into a flattened, pose-normalised texture space:

    α, e ─► MorphableLayer ─► X (B,N,3) ─► Rotate3D(R(r)) ─► OrthographicProjection ─► LogScale(log s)
      ─► Translate2D(t) ─► GridLayer ─► BilinearSampler(image) ─► Masking(VisibilityLayer(R, α, e))

The expression e is optional (the seed's code resamples 3DDFA's expression basis onto its UV grid,
``prepareExpressionBFM``; we use the model's own expression basis, whose vertices the UV grid already
interpolates).

Each layer is a thin ``nn.Module`` over a differentiable tensor function. Image coordinates follow
``DESIGN.md`` (pixel centres at integers, y down): the orthographic projection returns ``(x, −y)`` so that
model +y (up) maps to image up, matching :class:`~morphable.geometry.camera.ScaledOrthographic`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morphable.geometry.rotation import axis_angle_to_matrix
from morphable.models.base import MorphableModel
from morphable.models.functional import barycentric_points
from morphable.models.resample import UVGrid
from morphable.render.visibility import vertex_visibility


class MorphableLayer(nn.Module):
    """3DMM layer: shape parameters α (and expression e) → points ``X = mean + B α + E e`` on the UV grid (or
    the mesh vertices).

    Args:
        model: the morphable model (standardised identity basis).
        grid: a :class:`UVGrid`; with it the output has ``N = H'·W'`` points, else the model's V vertices.
    """

    def __init__(self, model: MorphableModel, grid: UVGrid | None = None):
        super().__init__()
        self.model = model
        self.grid = grid

    def forward(self, alpha: Tensor, expression: Tensor | None = None) -> Tensor:
        """``(B, K)`` (and ``(B, E)``, E ≤ the model's expression components) → ``(B, N, 3)`` millimetres."""
        verts = self.model(identity=alpha, expression=expression).vertices
        return verts if self.grid is None else self.grid.points(verts)


class AxisAngleToRotation(nn.Module):
    """Axis-angle ``r (B, 3)`` → rotation matrix ``R (B, 3, 3)`` (Rodrigues)."""

    def forward(self, r: Tensor) -> Tensor:
        return axis_angle_to_matrix(r)


class Rotate3D(nn.Module):
    """``X' = R X`` for row-stored points: ``(B, 3, 3), (B, N, 3) → (B, N, 3)``."""

    def forward(self, R: Tensor, X: Tensor) -> Tensor:
        return X @ R.transpose(-1, -2)


class OrthographicProjection(nn.Module):
    """Projection along z, flipped to image orientation: ``(B, N, 3) → (B, N, 2)`` = ``(x, −y)``."""

    def forward(self, X: Tensor) -> Tensor:
        return torch.stack([X[..., 0], -X[..., 1]], -1)


class LogScale(nn.Module):
    """``Y · exp(log s)``: ``(B, N, 2), (B,) → (B, N, 2)`` (the log keeps the scale positive)."""

    def forward(self, Y: Tensor, log_s: Tensor) -> Tensor:
        return Y * log_s.exp()[:, None, None]


class Translate2D(nn.Module):
    """``Y + t``: ``(B, N, 2), (B, 2) → (B, N, 2)`` pixels."""

    def forward(self, Y: Tensor, t: Tensor) -> Tensor:
        return Y + t[:, None, :]


class GridLayer(nn.Module):
    """``2 × N`` sample points → a ``H' × W'`` sampling grid: ``(B, N, 2) → (B, H', W', 2)`` pixels."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, points: Tensor) -> Tensor:
        return points.reshape(points.shape[0], *self.size, 2)


def bilinear_sample(image: Tensor, grid: Tensor) -> Tensor:
    """Bilinear sampler of the original STN (Jaderberg et al. 2015, Eq. 5), zero outside the image.

    Args:
        image: ``(B, H, W, C)``.
        grid: ``(B, H', W', 2)`` sample positions in pixels (x right, y down, pixel centres at integers).
    Returns:
        ``(B, H', W', C)``, differentiable w.r.t. both the image and the positions.
    """
    H, W = image.shape[1:3]
    # align_corners=True maps −1/+1 to the centres of the first/last pixels: our integer pixel centres
    norm = torch.stack([grid[..., 0] * (2 / (W - 1)) - 1, grid[..., 1] * (2 / (H - 1)) - 1], -1)
    out = F.grid_sample(image.permute(0, 3, 1, 2), norm.to(image.dtype), mode="bilinear",
                        padding_mode="zeros", align_corners=True)
    return out.permute(0, 2, 3, 1)


class BilinearSampler(nn.Module):
    """Module form of :func:`bilinear_sample`."""

    def forward(self, image: Tensor, grid: Tensor) -> Tensor:
        return bilinear_sample(image, grid)


class VisibilityLayer(nn.Module):
    """Self-occlusion layer: ``(R, α, e) → (B, H', W')`` binary mask of the grid points visible in the view.

    A vertex is visible when it faces the camera and wins the z-buffer of an orthographic view of the mesh
    rendered at ``resolution`` pixels across (``render/visibility.py``); a grid point is visible when the
    three vertices of its triangle are. Not differentiable (a mask), as in the paper.
    """

    def __init__(self, model: MorphableModel, grid: UVGrid, resolution: int = 256):
        super().__init__()
        self.model = model
        self.grid = grid
        self.resolution = resolution

    @torch.no_grad()
    def forward(self, R: Tensor, alpha: Tensor, expression: Tensor | None = None) -> Tensor:
        X = self.model(identity=alpha, expression=expression).vertices @ R.transpose(-1, -2)
        lo, hi = X[..., :2].amin(1, keepdim=True), X[..., :2].amax(1, keepdim=True)
        scale = (self.resolution - 3) / (hi - lo).amax(-1, keepdim=True)
        u = (X[..., 0:1] - lo[..., 0:1]) * scale + 1
        v = (hi[..., 1:2] - X[..., 1:2]) * scale + 1
        screen = torch.cat([u, v, -X[..., 2:3]], -1)
        vis = vertex_visibility(screen, self.model.triangles, (self.resolution, self.resolution))
        grid_vis = vis[:, self.grid.indices].all(-1) & self.grid.valid
        return grid_vis.reshape(-1, *self.grid.size)


class Masking(nn.Module):
    """``texture ⊙ mask``: ``(B, H', W', C), (B, H', W') → (B, H', W', C)``."""

    def forward(self, texture: Tensor, mask: Tensor) -> Tensor:
        return texture * mask[..., None].to(texture.dtype)


@dataclass(frozen=True)
class Theta:
    """Spatial-transformer parameters (batched).

    Attributes:
        rotation: ``(B, 3)`` axis-angle, radians.
        translation: ``(B, 2)`` pixels.
        log_scale: ``(B,)`` log of pixels per millimetre.
        alpha: ``(B, K)`` standardised identity coefficients.
        expression: ``(B, E)`` the model's first E expression coefficients (blendshape weights in [0, 1] or
            PCA coefficients), or ``None`` for the neutral face.
    """

    rotation: Tensor
    translation: Tensor
    log_scale: Tensor
    alpha: Tensor
    expression: Tensor | None = None

    def __getitem__(self, index) -> Theta:
        """The faces ``index`` (an int keeps the batch dimension: ``theta[b]`` is a batch of one)."""
        index = slice(index, index + 1) if isinstance(index, int) else index
        return Theta(self.rotation[index], self.translation[index], self.log_scale[index], self.alpha[index],
                     None if self.expression is None else self.expression[index])


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
        model: the morphable model (shape, and expression when θ has it).
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
        verts = self.shape(theta.alpha, theta.expression)
        grid_points = self.image_points(theta, self.grid_def.points(verts), R)
        grid = self.to_grid(grid_points)
        sampled = self.sampler(image, grid)
        H, W = image.shape[1:3]
        inside = ((grid >= 0) & (grid <= grid.new_tensor([W - 1, H - 1]))).all(-1)
        mask = self.visibility(R, theta.alpha, theta.expression) & inside  # off the photo: not seen either
        landmarks = self.image_points(
            theta, barycentric_points(verts, self.model.landmark_indices, self.model.landmark_weights), R)
        return STNOutput(self.masking(sampled, mask), mask, grid, landmarks)
