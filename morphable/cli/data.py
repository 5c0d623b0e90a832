"""``morphable data``: training datasets from photos.

``morphable data prepare PHOTOS... -o DATASET`` detects faces (or reads a ``.pts`` file beside a photo),
cuts dlib's aligned chips and caches their dlib descriptors and pooled features
(:func:`~morphable.train.data.prepare.prepare_dataset`; layout in :mod:`morphable.train.data.manifest`).
Rerunning the same command resumes. Photos that give no face are listed at the end (and in
``DATASET/bad.jsonl``); everything else is still written, and the command then exits with status 1.
"""
from __future__ import annotations

from pathlib import Path

import click


@click.group()
def data() -> None:
    """Training datasets: prepare face chips, landmarks and descriptors from photos."""


@data.command()
@click.argument("photos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder (created; rerun the same command to resume).")
@click.option("--identity-from-folder", is_flag=True, help="Label each face with its photo's folder name "
              "(<person>/<photos> layout).")
@click.option("--identities", "identities_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON {identity: [photo stems]}; photos not listed are skipped.")
@click.option("--face", type=click.Choice(["largest", "best", "all"]), default="largest", show_default=True,
              help="Which detected faces to keep (a photo with a .pts file gives its one annotated face).")
@click.option("--detector", type=click.Choice(["auto", "hog", "cnn"]), default="auto", show_default=True,
              help="dlib detector (auto: HOG, then the CNN when HOG finds nothing).")
@click.option("--source", default="photos", show_default=True, help="The manifest's 'source' field.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare(photos: tuple[Path, ...], output: Path, identity_from_folder: bool, identities_file: Path | None,
            face: str, detector: str, source: str, quiet: bool) -> None:
    """Prepare a face dataset from PHOTOS (files and/or folders, searched recursively)."""
    import time

    from morphable.train.data.prepare import prepare_dataset, read_identities

    if identity_from_folder and identities_file is not None:
        raise click.UsageError("give --identity-from-folder or --identities, not both")
    identities = read_identities(identities_file) if identities_file is not None else None
    start = time.perf_counter()
    report = prepare_dataset(photos, output, identity_from_folder=identity_from_folder, identities=identities,
                             face=face, source=source, detector=detector, progress=not quiet)
    seconds = time.perf_counter() - start
    extra = f", {report.n_unlisted} not in --identities" if identities is not None else ""
    click.echo(f"{report.folder}: {report.n_faces} faces from {report.n_photos} photos "
               f"({report.n_resumed} resumed{extra}, {len(report.bad)} bad) in {seconds:.1f} s")
    if report.missing:
        click.echo(f"listed in --identities but not found: {', '.join(report.missing)}", err=True)
    if report.bad:
        for item in report.bad:
            click.echo(f"bad: {item.problem}", err=True)
        raise click.ClickException(f"{len(report.bad)} of {report.n_photos} photos gave no face "
                                   f"(listed in {report.folder / 'bad.jsonl'})")
