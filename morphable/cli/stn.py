"""``morphable stn-fit``: a 3DMM spatial transformer's θ for each photo, by gradient descent or, with
``--localiser``, by a trained localiser network in one pass; writes the flattened (pose-normalised)
textures, their visibility masks and overlays; ``--mean`` also writes the visibility-weighted mean flattened
texture of all the photos (one person).

The localiser reads the detector crop of the face; its box is dlib's box rule applied to the face's 68
landmarks (:func:`~morphable.nets.stn_localiser.landmark_box`: detected, or from ``--landmarks``).

θ = (r, t, log s, α) is a scaled-orthographic camera and identity, so ``params.json`` uses the fit
schema (:mod:`morphable.io.params`) and ``morphable render`` draws it. Photos larger than ``--max-side``
are fitted on a shrunk copy (the camera is given in the original's pixels); faces are chosen like
``morphable fit`` (``--face``, largest by default). Each photo's folder is replaced as a whole.
"""
from __future__ import annotations

from pathlib import Path

import click

from morphable.cli.fit import face_option, messages


@click.command("stn-fit")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_name", default=None,
              help="Registry name or model file [default: the localiser's model, else ict].")
@click.option("--localiser", "localiser_name", default=None, metavar="NAME|PATH",
              help="θ from a trained localiser (shipped name, e.g. stn-sfm, or a weights file) instead of "
                   "gradient descent.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16"]),
              help="The dlib-trunk localiser's convolutions: auto is bfloat16 on CPUs that have it natively "
                   "(faster; θ within a few hundredths of a pixel), else float32.")
@click.option("--landmarks", "landmark_files", multiple=True, type=click.Path(path_type=Path),
              help="Landmark file (.pts/.json) per image, in order; skips detection.")
@click.option("--face", "face", default="largest", show_default=True,
              callback=lambda ctx, param, value: face_option(value),
              help="Which detected face: largest, best or INDEX (0 = largest).")
@click.option("-o", "--output", "out_dir", default=Path("out/stn"), show_default=True, type=click.Path(path_type=Path))
@click.option("--size", default=128, show_default=True, type=click.IntRange(4, 4096),
              help="Flattened texture size (pixels per side).")
@click.option("--shape-components", default=10, show_default=True, type=click.IntRange(0, 1000),
              help="Identity components in α (gradient descent; a localiser has its own).")
@click.option("--iterations", default=100, show_default=True, type=click.IntRange(0, 100000),
              help="Gradient-descent steps.")
@click.option("--max-side", default=1600, show_default=True, type=click.IntRange(64, 100000),
              help="Larger photos are shrunk to this longest side.")
@click.option("--mean", "write_mean", is_flag=True, help="Also write the mean flattened texture of all photos.")
@click.option("-q", "--quiet", is_flag=True, help="No info lines.")
def stn_fit(images: tuple[Path, ...], model_name: str | None, localiser_name: str | None, precision: str,
            landmark_files: tuple[Path, ...], face: str | int,
            out_dir: Path, size: int, shape_components: int, iterations: int, max_side: int, write_mean: bool,
            quiet: bool) -> None:
    """θ = (r, t, log s, α) for each IMAGE (gradient descent or a localiser) and its flattened texture."""
    import numpy as np
    import torch

    from morphable.cli.fit import _output_names
    from morphable.errors import MorphableError
    from morphable.fitting.stn import FIXED_LANDMARKS, fit_stn, mean_flattened
    from morphable.geometry.camera import ScaledOrthographic, rescale_pixels
    from morphable.io.image import write_image
    from morphable.io.params import PARAMS_SCHEMA, PARAMS_VERSION, write_params
    from morphable.models.resample import model_uv, uv_grid
    from morphable.nets.stn_localiser import flatten_faces, landmark_box, load_localiser
    from morphable.render.stn import SpatialTransformer3DMM
    from morphable.reconstruct import check_output_folder, find_faces, fresh_folder, load_face_model
    from morphable.viz.overlay import draw_overlay

    if landmark_files and len(landmark_files) != len(images):
        raise click.UsageError(f"--landmarks was given {len(landmark_files)} times for {len(images)} images")
    if face == "all":
        raise click.UsageError("--face all: stn-fit fits one face per photo (choose largest, best or INDEX)")
    names = _output_names(images)
    for name in names:
        check_output_folder(out_dir / name)
    if write_mean:
        check_output_folder(out_dir)
    try:
        localiser = load_localiser(localiser_name, precision=precision) if localiser_name else None
    except ValueError as err:
        raise click.UsageError(f"--precision: {err}") from None
    if model_name is None:
        model_name = localiser.model_name if localiser is not None else "ict"
    if localiser is not None and Path(model_name).stem != localiser.model_name:
        raise click.UsageError(f"--localiser {localiser_name} was trained for model {localiser.model_name!r}, "
                               f"not {model_name!r}")
    model, label = load_face_model(model_name)
    stn = SpatialTransformer3DMM(model, uv_grid(model_uv(model), model.triangles, (size, size)))
    failures: list[str] = []
    textures, masks = [], []
    for k, path in enumerate(images):
        try:
            with messages(quiet):
                (found,) = find_faces(path, landmarks=landmark_files[k] if landmark_files else None, face=face,
                                      max_side=max_side)
            image = torch.tensor(found.photo, dtype=torch.float32)[None] / 255  # a copy: decoded arrays are read-only
            marks_t = torch.as_tensor(found.landmarks, dtype=torch.float32)[None]
            if localiser is not None:
                th, output = flatten_faces(localiser, stn, [torch.tensor(found.photo)], landmark_box(marks_t))
                energy = None
            else:
                fit = fit_stn(stn, image, marks_t, n_shape=shape_components, iterations=iterations)
                th, output, energy = fit.theta, fit.output, fit.history[-1]
        except MorphableError as err:
            failures.append(str(err))
            continue
        tex, mask = output.texture[0], output.mask[0]
        grid = output.grid[0].reshape(-1, 2).numpy()
        s = found.working_scale
        camera = ScaledOrthographic(th.log_scale.exp(), th.rotation, th.translation).rescaled(s)
        fitted = output.landmarks[0].detach().numpy().copy()
        unused = np.ones(len(fitted), bool)
        unused[FIXED_LANDMARKS] = False
        fitted[unused] = np.nan  # the jawline is not fitted (pose-dependent contour)
        H, W = found.image_size
        marks, fitted_px = rescale_pixels(found.landmarks, s), rescale_pixels(fitted, s)
        ok = np.isfinite(marks).all(1) & np.isfinite(fitted_px).all(1)
        rms = float(np.sqrt(((marks[ok] - fitted_px[ok]) ** 2).sum(1).mean()))
        with fresh_folder(out_dir / names[k]) as tmp:
            write_image(tmp / "flattened.png", tex.clamp(0, 1).numpy())
            write_image(tmp / "mask.png", np.repeat(mask.float().numpy()[..., None], 3, -1))
            write_image(tmp / "overlay.png", draw_overlay(found.photo, landmarks=found.landmarks,
                                                          landmarks_fitted=fitted, points=grid[mask.reshape(-1).numpy()]))
            write_params(tmp / "params.json", {
                "schema": PARAMS_SCHEMA, "version": PARAMS_VERSION, "model": label, "image": str(path),
                "image_size": {"width": W, "height": H}, "face": found.index, "landmarks_source": found.source,
                "detection_score": found.score, "shape_from": "stn" if localiser is None else "stn-localiser",
                "identity": th.alpha[0].detach(),
                **({} if th.expression is None else {"expression": th.expression[0].detach()}),
                "camera": camera.to_dict(), "landmarks": marks,
                "landmarks_fitted": fitted_px, "rms_px": rms, "rms_stage": "stn", "working_scale": s,
                "stn": {"texture_size": size, **({"energy": energy} if energy is not None else
                                                  {"localiser": localiser_name})}})
        textures.append(tex)
        masks.append(mask)
        click.echo(f"{path}: landmark RMS {rms:.2f} px -> {out_dir / names[k]}")
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
