"""Differentiable rendering in pure PyTorch (CPU-first): rasterise, shade, sample textures, visibility.

``Renderer`` composes camera → ``rasterize`` → soft silhouette → deferred shading; the pieces are
usable on their own. The rasteriser function is imported from its module
(``from morphable.render.rasterize import rasterize``): re-exporting it here would shadow the module.
"""
from morphable.render.rasterize import Fragments, interpolate, rasterize_reference
from morphable.render.renderer import FixedGeometry, PointLights, Renderer, RenderOutput
from morphable.render.shading import color_temperature_rgb, phong_shade, sh_basis, sh_directional, sh_shade
from morphable.render.silhouette import EdgeTopology, soft_silhouette
from morphable.render.texture import UVLayout, image_to_uv, sample_image, uv_to_image
from morphable.render.visibility import vertex_visibility

__all__ = [
    "EdgeTopology",
    "FixedGeometry",
    "Fragments",
    "PointLights",
    "RenderOutput",
    "Renderer",
    "UVLayout",
    "color_temperature_rgb",
    "image_to_uv",
    "interpolate",
    "phong_shade",
    "rasterize_reference",
    "sample_image",
    "sh_basis",
    "sh_directional",
    "sh_shade",
    "soft_silhouette",
    "uv_to_image",
    "vertex_visibility",
]
