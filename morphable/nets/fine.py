"""FineNet (Guo, Zhang et al., "CNN-based Real-time Dense Face Reconstruction with Inverse-rendered
Photo-realistic Face Images", TPAMI 2018; seed ``zhang-deep-3d-face-modeling.txt``, "FineNet"): the face chip
and the coarse face rendered into it → a per-pixel displacement map, the detail the coarse model cannot
express (folds, wrinkles, the shape of the nose and eyelids beyond the 3DMM's span).

Input (:func:`base_maps`, all ``(B, S, S, ·)`` at the chip's pixels): the chip's RGB, the coarse (undisplaced)
mesh's view-frame normals interpolated per pixel (+z towards the viewer, 0 off the face) and its coverage
mask; 7 channels. Output: ``(B, S, S)`` the displacement in mm along the coarse mesh's normal at the surface
point seen in each pixel (0 off the mask) — the quantity the photometric fit's detail stage solves for per
vertex (:func:`~morphable.fitting.photometric.fit_photometric`, ``E(d) = E_con + μ₁‖d‖² + μ₂‖L d‖₁``,
displaced vertices ``v + d · n``).

Network: a 4-level U-Net (two 3 × 3 convolutions + batch norm + ReLU per level, max-pool down, bilinear up,
skip connections; widths :data:`WIDTHS`), a 1 × 1 output convolution started at zero (the first prediction
is "no detail", the coarse mesh) and scaled by the training targets' spread (buffer ``scale``, mm).

Export (:meth:`FineNet.refine`): the map read at the projected coarse vertices that the chip sees
(bilinear, :func:`~morphable.render.texture.sample_image`), those vertices moved along their normals
(:func:`~morphable.geometry.mesh.displace`); vertices the chip does not see keep their coarse position.
"""
from __future__ import annotations

from dataclasses import dataclass
from os import PathLike

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.mesh import displace
from morphable.nets.weights import load_net, save_net
from morphable.render.renderer import Renderer
from morphable.render.texture import sample_image

FORMAT = "morphable-finenet"
VERSION = 1
WIDTHS = (16, 32, 48, 64)
"""U-Net widths per level (full, 1/2, 1/4, 1/8 resolution)."""
IN_CHANNELS = 7
"""RGB (3), the coarse mesh's view-frame normals (3), its coverage mask (1)."""


@dataclass(frozen=True)
class BaseMaps:
    """The coarse mesh rendered into a chip (:func:`base_maps`).

    Attributes:
        normals: ``(B, S, S, 3)`` unit view-frame normals per pixel (0 off the face).
        mask: ``(B, S, S)`` bool, pixels the mesh covers.
        visible: ``(B, V)`` bool, vertices the chip sees (front-facing, not occluded).
        points: ``(B, V, 2)`` the vertices' chip pixel positions ``(x, y)``.
        attribute: ``(B, S, S)`` a per-vertex scalar interpolated per pixel (0 off the face), or ``None``.
    """

    normals: Tensor
    mask: Tensor
    visible: Tensor
    points: Tensor
    attribute: Tensor | None


def base_maps(renderer: Renderer, vertices: Tensor, camera: ScaledOrthographic,
              attribute: Tensor | None = None) -> BaseMaps:
    """Render the coarse mesh's inputs for FineNet (and, for training targets, a per-vertex ``attribute``).

    Args:
        renderer: a hard-edged :class:`Renderer` (``soft_silhouette=False``) of the mesh's triangles at the chip size.
        vertices: ``(B, V, 3)`` mm; camera: the chip camera (px).
        attribute: optional ``(B, V)`` per-vertex values (e.g. a displacement in mm) to interpolate per pixel.
    """
    colors = None if attribute is None else attribute[..., None].expand(-1, -1, 3).to(vertices.dtype)
    out = renderer(vertices, camera, colors=colors, visibility=True)
    return BaseMaps(out.normals, out.triangle_id >= 0, out.visibility, out.screen[..., :2],
                    None if attribute is None else out.albedo[..., 0])


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FineNet(nn.Module):
    """The U-Net (see the module docstring).

    Args:
        model_name: the morphable model whose coarse meshes it refines (recorded, checked by users).
        size: chip side (px), divisible by 2^(levels − 1).
        widths: per-level widths.
    Attributes:
        scale: ``()`` buffer, mm per unit of the raw output (the training targets' RMS on the face).
    """

    def __init__(self, model_name: str, size: int = 96, widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        if size % 2 ** (len(widths) - 1):
            raise ValueError(f"FineNet: chip size {size} is not divisible by {2 ** (len(widths) - 1)}")
        self.model_name, self.size, self.widths = model_name, size, tuple(int(w) for w in widths)
        self.down = nn.ModuleList(_block(cin, w) for cin, w in zip((IN_CHANNELS, *widths[:-1]), widths))
        self.up = nn.ModuleList(_block(widths[i] + widths[i + 1], widths[i]) for i in range(len(widths) - 1))
        self.out = nn.Conv2d(widths[0], 1, 1)
        nn.init.zeros_(self.out.weight)  # starts at "no detail": the coarse mesh
        nn.init.zeros_(self.out.bias)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, images: Tensor, normals: Tensor, mask: Tensor) -> Tensor:
        """The displacement map ``(B, S, S)`` mm (0 off ``mask``) of chips ``(B, S, S, 3)`` in [0, 1], the
        coarse mesh's normal maps ``(B, S, S, 3)`` and masks ``(B, S, S)`` (:func:`base_maps`)."""
        S = self.size
        if images.dim() != 4 or images.shape[1:] != (S, S, 3):
            raise ValueError(f"FineNet: expected chips (B, {S}, {S}, 3), got {tuple(images.shape)}")
        if normals.shape != images.shape or mask.shape != images.shape[:3]:
            raise ValueError(f"FineNet: expected normals {tuple(images.shape)} and mask {tuple(images.shape[:3])}, "
                             f"got {tuple(normals.shape)} and {tuple(mask.shape)}")
        dtype = self.scale.dtype
        m = mask.to(dtype)[..., None]
        x = torch.cat([(images.to(dtype) - 0.5) / 0.25, normals.to(dtype) * m, m], -1).permute(0, 3, 1, 2)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = self.up[i](torch.cat([skips[i], x], 1))
        return self.out(x)[:, 0] * self.scale * m[..., 0]

    def refine(self, images: Tensor, vertices: Tensor, camera: ScaledOrthographic,
               renderer: Renderer) -> tuple[Tensor, Tensor]:
        """The coarse meshes displaced by the predicted detail.

        Args:
            images: ``(B, S, S, 3)`` chips in [0, 1]; vertices: ``(B, V, 3)`` mm, the coarse meshes (e.g.
                CoarseNet's); camera: their chip camera; renderer: a hard-edged :class:`Renderer` of their
                triangles at ``(S, S)``.
        Returns:
            the displaced vertices ``(B, V, 3)`` and the per-vertex displacement ``(B, V)`` mm (0 where unseen).
        """
        maps = base_maps(renderer, vertices, camera)
        d = vertex_displacement(self(images, maps.normals, maps.mask), maps)
        return displace(vertices, renderer.triangles, d.to(vertices.dtype)), d


def vertex_displacement(dmap: Tensor, maps: BaseMaps) -> Tensor:
    """A displacement map ``(B, S, S)`` read (bilinear) at the seen vertices' pixels; ``(B, V)``, 0 where unseen."""
    d = sample_image(dmap[..., None], maps.points.to(dmap.dtype))[..., 0]
    return torch.where(maps.visible, d, 0.0)


def save_fine(net: FineNet, path: str | PathLike, meta: dict | None = None) -> None:
    """Write the weights and buffers atomically (:func:`~morphable.nets.weights.save_net`)."""
    save_net(net, path, FORMAT, VERSION, {"model_name": net.model_name, "size": net.size,
                                          "widths": list(net.widths)}, meta)


def load_fine(name_or_path: str | PathLike) -> FineNet:
    """A FineNet from :func:`save_fine`'s file (or a shipped name), in eval mode.

    Raises:
        ModelFileError: missing, corrupt or inconsistent file (one line naming it).
    """
    return load_net(name_or_path, FORMAT, VERSION, "FineNet",
                    lambda data: FineNet(str(data["model_name"]), int(data["size"]),
                                         tuple(int(w) for w in data["widths"])))
