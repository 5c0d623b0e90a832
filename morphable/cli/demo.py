"""``morphable demo``: the whole pipeline on the bundled example photo, with the default open model.

Fetches the default model (``ict``; from ``MORPHABLE_MIRROR`` when set), detects the face in
scikit-image's ``astronaut`` photo (Eileen Collins, NASA, public domain, shipped inside scikit-image),
fits it and writes the same outputs as ``morphable fit``: ``mesh.obj`` + ``texture.png`` +
``params.json`` + ``overlay.png``, plus the photo itself as ``input.png``.
"""
from __future__ import annotations

import time
from pathlib import Path

import click


@click.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True,
              help="Output folder.")
@click.option("--model", "model_name", default="ict", show_default=True, help="Registry name or model file.")
def demo(output: Path, model_name: str) -> None:
    """Reconstruct the bundled example photo (scikit-image's astronaut) and say where the results are."""
    from skimage import data

    from morphable import load_model
    from morphable.cli.fit import faces_in_photo, reconstruct
    from morphable.io import write_image

    start = time.perf_counter()
    model = load_model(model_name)
    click.echo(model.describe())
    image = data.astronaut()
    output.mkdir(parents=True, exist_ok=True)
    write_image(output / "input.png", image)
    faces = faces_in_photo(image, "skimage.data.astronaut()", output)
    (folder,), failures = reconstruct(faces, model, model_name)
    if failures:  # the bundled photo always fits; anything else is our bug
        raise RuntimeError(failures[0])
    click.echo(f"reconstructed the example photo in {time.perf_counter() - start:.1f} s; outputs in {folder}/:")
    for name in ("input.png", "overlay.png", "mesh.obj", "texture.png", "params.json"):
        click.echo(f"  {folder / name}")
