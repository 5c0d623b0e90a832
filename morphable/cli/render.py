"""``morphable render PARAMS.json -o image.png``: a quick shaded look at a fit, in the fit's own camera.

The face is the model evaluated at the stored coefficients, seen through the stored camera (the original
photo's pixel frame), so its silhouette lies where the overlay drew the mesh. ``--size`` renders the same
view with the longer side at that many pixels (:meth:`Camera.rescaled`); by default the photo's size, at
most :data:`~morphable.reconstruct.MAX_SIDE` px (the overlay's size). PNG keeps the coverage as alpha;
formats without alpha (JPEG) get the face over black.
"""
from __future__ import annotations

from pathlib import Path

import click

ALPHA_SUFFIXES = (".png", ".webp", ".tif", ".tiff")


def _light(spec: str) -> "tuple[list[float], float]":
    try:
        parts = [float(p) for p in spec.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (3, 4):
        raise click.BadParameter("expected X,Y,Z or X,Y,Z,AMBIENT (light direction in the view frame)")
    return parts[:3], parts[3] if len(parts) == 4 else 0.35


def render_params(params_file: Path, *, size: int | None = None, light: str = "0.3,0.4,1,0.35",
                  model_name: str | None = None):
    """Render a params file: ``(image (H, W, 3) float in [0, 1] gamma-encoded, coverage (H, W) in [0, 1])``."""
    import torch

    import morphable
    from morphable.io.params import read_params, upgrade_params
    from morphable.reconstruct import MAX_SIDE, Reconstruction
    from morphable.render import Renderer, sh_directional

    direction, ambient = _light(light)
    params = read_params(params_file)
    if model_name:
        params["model"] = model_name
    params = upgrade_params(params, params_file)
    model = morphable.load_model(str(params["model"]))
    rec = Reconstruction.from_params(params, model=model, path=params_file)
    H, W = rec.image_size
    camera = rec.camera
    if size is None and max(H, W) > MAX_SIDE:  # as the overlay: a large photo's fit is drawn at the working size
        size = MAX_SIDE
    if size is not None:
        factor = size / max(H, W)
        camera = camera.rescaled(factor)
        H, W = max(1, round(H * factor)), max(1, round(W * factor))
    dtype = model.mean.dtype
    vertices = torch.as_tensor(rec.vertices, dtype=dtype)[None]
    with torch.no_grad():
        colors = torch.full_like(vertices, 0.75)
        if model.albedo_mean is not None:
            colors = model.albedo_mean.to(dtype)[None].expand_as(vertices)
        sh = sh_directional(torch.tensor([direction], dtype=dtype), torch.full((1, 3), 2.2, dtype=dtype),
                            ambient=ambient)
        result = Renderer.from_model(model, (H, W))(vertices, camera, colors=colors, sh=sh)
    return result.image[0].clamp(0, 1) ** (1 / 2.2), result.alpha[0]


@click.command("render")
@click.argument("params_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Image to write (.png keeps alpha; .jpg and others are written without it).")
@click.option("--size", type=int, default=None,
              help="Longest image side in pixels (default: the fit's image size, at most 1600 like the overlay).")
@click.option("--light", default="0.3,0.4,1,0.35", show_default=True,
              help="Direction X,Y,Z towards a white light (view frame, +z to the viewer), optional ambient.")
@click.option("--model", "model_name", default=None, help="Model name or file (default: the params' model).")
def render(params_file: Path, output: Path, size: int | None, light: str, model_name: str | None) -> None:
    """Render the face described by PARAMS_FILE (a fit's params.json) with SH lighting."""
    import torch

    from morphable.io.image import write_image

    if size is not None and size < 1:
        raise click.ClickException(f"--size must be a positive number of pixels, got {size}")
    _light(light)  # a bad --light is a usage error before any work
    if output.is_dir():
        raise click.ClickException(f"{output}: is a folder (give an image file name)")
    image, alpha = render_params(params_file, size=size, light=light, model_name=model_name)
    if output.suffix.lower() in ALPHA_SUFFIXES:
        pixels = torch.cat([image, alpha[..., None]], dim=-1)
    else:
        pixels = image * alpha[..., None]
    write_image(output, pixels.numpy())
    click.echo(f"{params_file} -> {output} ({image.shape[1]}x{image.shape[0]})")
