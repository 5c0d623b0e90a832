"""``morphable demo``: the whole pipeline on the bundled example photo, with the default open model.

Fetches the default model (``ict``; from ``MORPHABLE_MIRROR`` when set), reconstructs scikit-image's
``astronaut`` photo (Eileen Collins, NASA, public domain, shipped inside scikit-image) with
:func:`morphable.reconstruct` and writes the same outputs as ``morphable fit`` into a fresh folder, plus
the photo itself as ``input.png``.
"""
from __future__ import annotations

import time
from pathlib import Path

import click

OUTPUTS = ("input.png", "overlay.png", "mesh.obj", "texture.png", "mesh.glb", "params.json", "report.html")


@click.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True,
              help="Output folder (replaced as a whole).")
@click.option("--model", "model_name", default="ict", show_default=True, help="Registry name or model file.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info lines.")
def demo(output: Path, model_name: str, quiet: bool) -> None:
    """Reconstruct the bundled example photo (scikit-image's astronaut) and say where the results are."""
    from skimage import data

    from morphable.cli.fit import messages
    from morphable.io import write_image
    from morphable.reconstruct import check_output_folder, fresh_folder, load_face_model, reconstruct, write_outputs

    check_output_folder(output)
    start = time.perf_counter()
    model, label = load_face_model(model_name)
    click.echo(model.describe())
    image = data.astronaut()
    with messages(quiet):
        rec = reconstruct(image, model, name="skimage.data.astronaut()", model_name=label, progress=not quiet)
    with fresh_folder(output) as tmp:
        write_image(tmp / "input.png", image)
        write_outputs(rec, tmp)
    click.echo(f"reconstructed the example photo in {time.perf_counter() - start:.1f} s; outputs in {output}/:")
    for name in OUTPUTS:
        click.echo(f"  {output / name}")
