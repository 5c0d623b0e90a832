"""``morphable render PARAMS.json -o image.png``: a quick shaded look at a fit."""
from __future__ import annotations

from pathlib import Path

import click


def _image_size(params: dict, path: Path) -> tuple[int, int]:
    from morphable.errors import InputError

    size = params.get("image_size")
    if isinstance(size, dict) and {"width", "height"} <= size.keys():
        return int(size["height"]), int(size["width"])
    if isinstance(size, list | tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise InputError(path, "image_size missing (expected [height, width] or {width, height})")


def _camera(params: dict, path: Path, dtype):
    """The fit's camera: ``camera`` entry if present, else rotation/translation with scale or focal."""
    import torch

    from morphable.errors import InputError
    from morphable.geometry.camera import Perspective, ScaledOrthographic, camera_from_dict

    try:
        if isinstance(params.get("camera"), dict):
            return camera_from_dict(params["camera"], dtype)
        rotation = torch.tensor([params["rotation"]], dtype=dtype)
        translation = torch.tensor([params["translation"]], dtype=dtype)
        if "focal" in params:
            H, W = _image_size(params, path)
            pp = params.get("principal_point", [(W - 1) / 2, (H - 1) / 2])
            return Perspective(torch.tensor([float(params["focal"])], dtype=dtype), torch.tensor([pp], dtype=dtype),
                               rotation, translation)
        return ScaledOrthographic(torch.tensor([float(params["scale"])], dtype=dtype), rotation, translation)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(path, f"cannot build the camera ({err})") from None


def _coefficients(params: dict, key: str, size: int, path: Path, dtype):
    import torch

    from morphable.errors import InputError

    values = params.get(key)
    out = torch.zeros(1, size, dtype=dtype)
    if values is None:
        return out
    values = torch.as_tensor(values, dtype=dtype).reshape(-1)
    if values.numel() > size:
        raise InputError(path, f"{key} has {values.numel()} coefficients, the model only {size}")
    out[0, :values.numel()] = values
    return out


def _light(spec: str) -> "tuple[list[float], float]":
    parts = [float(p) for p in spec.split(",")]
    if len(parts) not in (3, 4):
        raise click.BadParameter("expected X,Y,Z or X,Y,Z,AMBIENT (light direction in the view frame)")
    return parts[:3], parts[3] if len(parts) == 4 else 0.35


@click.command("render")
@click.argument("params_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Image to write (.png).")
@click.option("--size", type=int, default=None, help="Longest image side in pixels (default: the fit's image size).")
@click.option("--light", default="0.3,0.4,1,0.35", show_default=True,
              help="Direction X,Y,Z towards a white light (view frame, +z to the viewer), optional ambient.")
@click.option("--model", "model_name", default=None, help="Model name or file (default: the params' model).")
def render(params_file: Path, output: Path, size: int | None, light: str, model_name: str | None) -> None:
    """Render the face described by PARAMS_FILE (a fit's params.json) with SH lighting."""
    import torch

    import morphable
    from morphable.errors import InputError
    from morphable.io.image import write_image
    from morphable.io.params import read_params
    from morphable.render import Renderer, sh_directional

    params = read_params(params_file)
    name = model_name or params.get("model")
    if not name:
        raise InputError(params_file, "no model named (key 'model'); pass --model")
    direction, ambient = _light(light)
    model = morphable.load_model(str(name))
    dtype = model.mean.dtype
    H, W = _image_size(params, params_file)
    camera = _camera(params, params_file, dtype)
    factor = 1.0 if size is None else size / max(H, W)
    if size is not None:
        camera = _rescaled(camera, factor)
        H, W = max(1, round(H * factor)), max(1, round(W * factor))
    identity = _coefficients(params, "identity", model.identity_basis.shape[-1], params_file, dtype)
    n_exp = 0 if model.expression_basis is None else model.expression_basis.shape[-1]
    expression = _coefficients(params, "expression", n_exp, params_file, dtype) if n_exp else None
    with torch.no_grad():
        out = model(identity, expression)
        colors = out.colors if out.colors is not None else torch.full_like(out.vertices, 0.75)
        sh = sh_directional(torch.tensor([direction], dtype=dtype), torch.full((1, 3), 2.2, dtype=dtype),
                            ambient=ambient)
        result = Renderer.from_model(model, (H, W))(out.vertices, camera, colors=colors, sh=sh)
    rgba = torch.cat([result.image[0].clamp(0, 1) ** (1 / 2.2), result.alpha[0, ..., None]], dim=-1)
    write_image(output, rgba.numpy())
    click.echo(f"{params_file} -> {output} ({W}x{H})")


def _rescaled(camera, factor: float):
    """The camera for an image ``factor`` times larger (pixel centres at integer coordinates)."""
    from morphable.geometry.camera import Perspective, ScaledOrthographic

    if isinstance(camera, Perspective):
        return Perspective(camera.focal * factor, (camera.principal_point + 0.5) * factor - 0.5,
                           camera.rotation, camera.translation)
    return ScaledOrthographic(camera.scale * factor, camera.rotation, (camera.translation + 0.5) * factor - 0.5)
