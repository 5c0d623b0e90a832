"""``morphable stn-fit``: fit a 3DMM spatial transformer's θ to photos by gradient descent and write the
flattened (pose-normalised) textures, their visibility masks and overlays; ``--mean`` also writes the
visibility-weighted mean flattened texture of all the photos (one person)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("stn-fit")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_name", default="ict", show_default=True, help="Registry name or model file.")
@click.option("--landmarks", "landmark_files", multiple=True, type=click.Path(path_type=Path),
              help="Landmark file (.pts/.json) per image, in order; skips detection.")
@click.option("-o", "--output", "out_dir", default=Path("out/stn"), show_default=True, type=click.Path(path_type=Path))
@click.option("--size", default=128, show_default=True, help="Flattened texture size (pixels per side).")
@click.option("--shape-components", default=10, show_default=True, help="Identity components in α.")
@click.option("--iterations", default=100, show_default=True, help="Gradient-descent steps.")
@click.option("--mean", "write_mean", is_flag=True, help="Also write the mean flattened texture of all photos.")
def stn_fit(images: tuple[Path, ...], model_name: str, landmark_files: tuple[Path, ...], out_dir: Path, size: int,
            shape_components: int, iterations: int, write_mean: bool) -> None:
    """Fit θ = (r, t, log s, α) to each IMAGE through the 3DMM-STN layers."""
    import numpy as np
    import torch

    import morphable
    from morphable.detect.dlib68 import detect_landmarks
    from morphable.detect.formats import read_landmarks
    from morphable.errors import InputError, MorphableError
    from morphable.fitting.stn import fit_stn, mean_flattened
    from morphable.io.image import read_image, write_image
    from morphable.io.params import write_params
    from morphable.models.resample import model_uv, uv_grid
    from morphable.nets.stn import SpatialTransformer3DMM
    from morphable.viz.overlay import draw_overlay

    if landmark_files and len(landmark_files) != len(images):
        raise click.UsageError(f"--landmarks was given {len(landmark_files)} times for {len(images)} images")
    model = morphable.load_model(model_name)
    stn = SpatialTransformer3DMM(model, uv_grid(model_uv(model), model.triangles, (size, size)))
    failures: list[str] = []
    textures, masks = [], []
    for k, path in enumerate(images):
        try:
            photo = read_image(path)
            if landmark_files:
                lmk = read_landmarks(landmark_files[k])
            else:
                faces = detect_landmarks(photo)
                if not faces:
                    raise InputError(path, "no face found")
                lmk = faces[0].landmarks
            image = torch.tensor(photo, dtype=torch.float32)[None] / 255  # a copy: the decoded array is read-only
            fit = fit_stn(stn, image, torch.as_tensor(lmk, dtype=torch.float32)[None], n_shape=shape_components,
                          iterations=iterations)
        except MorphableError as err:
            failures.append(str(err))
            continue
        out = out_dir / path.stem
        out.mkdir(parents=True, exist_ok=True)
        tex, mask = fit.output.texture[0], fit.output.mask[0]
        write_image(out / "flattened.png", tex.clamp(0, 1).numpy())
        write_image(out / "mask.png", np.repeat(mask.float().numpy()[..., None], 3, -1))
        grid = fit.output.grid[0].reshape(-1, 2).numpy()
        write_image(out / "overlay.png", draw_overlay(photo, landmarks=lmk, landmarks_fitted=fit.output.landmarks[0].numpy(),
                                                      points=grid[mask.reshape(-1).numpy()]))
        th = fit.theta
        write_params(out / "params.json", {"model": model.name, "image_size": list(photo.shape[:2]),
                                           "rotation": th.rotation[0], "translation": th.translation[0],
                                           "scale": float(th.log_scale[0].exp()), "identity": th.alpha[0],
                                           "energy": fit.history[-1]})
        textures.append(tex)
        masks.append(mask)
        click.echo(f"{path}: landmark error {fit.history[-1]['landmark_px']:.2f} px -> {out}")
    if write_mean and textures:
        mean, count = mean_flattened(torch.stack(textures), torch.stack(masks))
        out_dir.mkdir(parents=True, exist_ok=True)
        write_image(out_dir / "mean_flattened.png", mean.clamp(0, 1).numpy())
        click.echo(f"mean of {len(textures)} flattened textures -> {out_dir / 'mean_flattened.png'}")
    if failures:
        click.echo(f"{len(failures)} of {len(images)} images failed:", err=True)
        for line in failures:
            click.echo(f"  {line}", err=True)
        raise SystemExit(1)
