"""``morphable fit``: photos in, per face ``mesh.obj`` + ``texture.png`` + ``mesh.glb`` + ``params.json`` +
``overlay.png`` + ``report.html`` (a thin caller of :mod:`morphable.reconstruct`).

Per photo: read it (a working copy of at most ``--max-side`` px for large photos), take the 68 landmarks
from ``--landmarks`` files or detect them with dlib (the largest face by default; ``--face best|all|INDEX``
chooses otherwise, and one line says which face was used when several are found), fit the model
(``--shape-from regressor`` centres the identity prior on a learned regressor's prediction where one exists
for the model; with ``--multi-view`` all photos are one person and share one identity), extract the
texture and write everything into a fresh ``DIR/<photo stem>/`` (``DIR/<photo stem>/face<i>/`` with
``--face all``); files from an earlier run into the same folder do not survive.

A photo that cannot be read or has no face is reported at the end; the others are still written and
the command exits with status 1. ``params.json`` follows the versioned schema of
:mod:`morphable.io.params` (:data:`~morphable.io.params.PARAMS_VERSION`).

Under ``torchrun --nproc-per-node N -m morphable fit ...`` the photos are shared out over the N processes
(contiguous shares, in the given order; ``--multi-view`` is one fit and stays on rank 0); each writes its
photos' folders and rank 0 reports the failures of all of them (:mod:`morphable.train.distributed`).

With ``--photometric`` the landmark fit is refined by inverse rendering (progress per stage on stderr
unless ``--quiet``): the mesh then carries the fitted albedo (``albedo.png``; ``texture.png`` is still the
photo's texture), ``comparison.png`` shows photo | render | difference and ``energy.png`` the energy curve.
With ``--depth`` (one depth image per photo, registered with it, e.g. an RGB-D sensor's aligned depth; 16-bit
PNG / TIFF or ``.npy``, values × ``--depth-unit`` mm) and the sensor's ``--focal`` (and ``--principal-point``)
in the photo's pixels, the photometric fit adds the depth term E_geo and fits that pinhole camera
(:func:`~morphable.fitting.photometric.fit_photometric`'s ``depth``): metric shape and pose.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import click

from morphable.errors import MorphableError


class _EchoHandler(logging.Handler):
    """Log records of the ``morphable`` logger as plain lines on stderr (through click, so tests see them)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


@contextmanager
def messages(quiet: bool):
    """Show the library's info lines (which face was used, a missing regressor) unless ``quiet``."""
    logger = logging.getLogger("morphable")
    handler = _EchoHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _output_names(paths: Iterable[Path]) -> list[str]:
    """Folder name per photo: its stem, made unique (``a``, ``a-2``...) when two photos share one."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        names.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return names


class DepthOptions(NamedTuple):
    """``--depth`` and its sensor options: a depth file per photo, the focal length and principal point (photo
    px; ``None``: the photo's centre), millimetres per stored depth value."""

    files: tuple[Path, ...]
    focal: float
    principal_point: tuple[float, float] | None
    unit_mm: float


def face_option(value: str) -> str | int:
    """Click callback body for ``--face``."""
    from morphable.detect.choice import parse_face

    try:
        return parse_face(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@click.command("fit")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_name", default="ict", show_default=True,
              help="Registry name (ict, sfm) or a model file.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("out/fit"), show_default=True,
              help="Output folder; each photo gets DIR/<stem>/ (replaced as a whole).")
@click.option("--landmarks", "landmark_files", multiple=True, type=click.Path(path_type=Path),
              help="68-point landmark file (.pts or .json) per photo, in the photos' order; skips detection.")
@click.option("--face", "face", default="largest", show_default=True,
              callback=lambda ctx, param, value: face_option(value),
              help="Which detected face: largest, best (detector score), all, or INDEX (0 = largest).")
@click.option("--all-faces", is_flag=True, help="Alias of --face all (DIR/<stem>/face<i>/).")
@click.option("--shape-from", type=click.Choice(["regressor", "landmarks"]), default="regressor", show_default=True,
              help="Identity prior: a learned regressor's prediction where one exists for the model, or none.")
@click.option("--method", type=click.Choice(["fit", "regress", "regress+fit", "sir", "coarse", "coarse+fit"]),
              default="fit", show_default=True,
              help="fit: landmark fit; regress: the RingNet network alone; regress+fit: the fit from its shape; "
                   "sir: the landmark fit with its identity prior at the SIR network's shape; coarse: CoarseNet "
                   "alone (--model sfm); coarse+fit: the landmark fit with its identity prior at CoarseNet's.")
@click.option("--multi-view", is_flag=True, help="All photos show one person: fit one shared identity.")
@click.option("--perspective", is_flag=True,
              help="Refine each fit with a perspective camera (focal = the photo's longer side); with "
                   "--photometric, the inverse rendering keeps that pinhole (its focal fixed).")
@click.option("--photometric", is_flag=True,
              help="Refine by inverse rendering (SH light, albedo): adds albedo.png, comparison.png, energy.png.")
@click.option("--depth", "depth_files", multiple=True, type=click.Path(path_type=Path),
              help="Depth image registered with each photo (16-bit PNG/TIFF or .npy), in the photos' order; "
                   "needs --photometric and --focal.")
@click.option("--focal", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The depth sensor's focal length in the photo's pixels (with --depth).")
@click.option("--principal-point", type=(float, float), default=None,
              help="The depth sensor's principal point CX CY in the photo's pixels (default: the photo's centre).")
@click.option("--depth-unit", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Millimetres per stored depth value (e.g. 0.2 for 5000 units per metre).")
@click.option("--detector", type=click.Choice(["auto", "hog", "cnn"]), default="auto", show_default=True,
              help="dlib face detector; auto = HOG, then the CNN when HOG finds no face.")
@click.option("--iterations", default=5, show_default=True, type=click.IntRange(0, 100),
              help="Contour / pose / shape alternations.")
@click.option("--texture-size", default=512, show_default=True, type=click.IntRange(16, 8192),
              help="Width and height of texture.png in texels.")
@click.option("--max-side", default=1600, show_default=True, type=click.IntRange(64, 100000),
              help="Larger photos are shrunk to this longest side for detection and fitting (results are "
                   "given in the original's pixels).")
@click.option("--no-report", is_flag=True, help="Skip report.html (and its turntable renders).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info lines (errors still shown).")
def fit(images: tuple[Path, ...], model_name: str, output: Path, landmark_files: tuple[Path, ...], face: str | int,
        all_faces: bool, shape_from: str, method: str, multi_view: bool, perspective: bool, photometric: bool,
        depth_files: tuple[Path, ...], focal: float | None, principal_point: tuple[float, float] | None,
        depth_unit: float, detector: str, iterations: int, texture_size: int, max_side: int, no_report: bool,
        quiet: bool) -> None:
    """Reconstruct the faces in IMAGES: mesh, texture, GLB, params, overlay and report per face."""
    if all_faces:
        face = "all"
    if landmark_files and len(landmark_files) != len(images):
        raise click.UsageError(f"--landmarks: got {len(landmark_files)} files for {len(images)} images "
                               "(give one per image, in the same order)")
    if depth_files and len(depth_files) != len(images):
        raise click.UsageError(f"--depth: got {len(depth_files)} files for {len(images)} images "
                               "(give one per image, in the same order)")
    if depth_files and not (photometric and focal):
        raise click.UsageError("--depth refines the photometric fit with the sensor's pinhole: give --photometric "
                               "and --focal")
    if (focal or principal_point) and not depth_files:
        raise click.UsageError("--focal and --principal-point describe the depth sensor: give --depth too")
    if multi_view and face == "all":
        raise click.UsageError("--multi-view fits one person: it cannot be combined with --face all / --all-faces")
    if multi_view and perspective:
        raise click.UsageError("--perspective refines single-view fits: it cannot be combined with --multi-view")
    if method != "fit" and (multi_view or perspective):
        raise click.UsageError(f"--method {method} fits one photo at a time with a scaled-orthographic camera: "
                               "it cannot be combined with --multi-view or --perspective")
    from morphable.reconstruct import check_output_folder
    from morphable.train import distributed

    names = _output_names(images)
    for name in names:  # a bad -o fails now, not after minutes of fitting
        check_output_folder(output / name)
    distributed.init()  # under torchrun: this process fits its share of the photos
    mine = _my_photos(len(images), multi_view)
    with messages(quiet):
        depth = DepthOptions(tuple(depth_files[i] for i in mine), focal, principal_point, depth_unit) \
            if depth_files else None
        failures = _run([images[i] for i in mine], [names[i] for i in mine], model_name, output,
                        [landmark_files[i] for i in mine] if landmark_files else (), face, shape_from, multi_view,
                        perspective, photometric, detector, iterations, texture_size, max_side, not no_report,
                        not quiet and distributed.is_main(), method, depth) if mine else []
    failures = [line for share in distributed.gather_objects(failures) for line in share]
    if not distributed.is_main():  # rank 0 reports for all
        return
    if failures:
        for line in failures:
            click.echo(f"failed: {line}", err=True)
        raise click.ClickException(f"{len(failures)} of {len(images)} images failed")


def _my_photos(n: int, multi_view: bool) -> range:
    """The photos (indices into ``n``) this process fits: all of them without ``torchrun``; otherwise its
    contiguous share (:func:`morphable.train.distributed.shard_range`), or all on rank 0 for ``--multi-view``
    (one fit of all photos together)."""
    from morphable.train import distributed

    if multi_view:
        return range(n) if distributed.is_main() else range(0)
    return distributed.shard_range(n)


def _run(images, names, model_name, output, landmark_files, face, shape_from, multi_view, perspective, photometric,
         detector, iterations, texture_size, max_side, report, progress, method="fit", depth=None) -> list[str]:
    """Find, fit and save every photo's faces; returns one failure line per photo that failed. ``depth``:
    :class:`DepthOptions` or ``None``."""
    import time

    from tqdm import tqdm

    from morphable.io.depth import read_depth
    from morphable.reconstruct import check_depth_size, find_faces, load_face_model, reconstruct_faces, save_all

    t0 = time.perf_counter()
    model, label = load_face_model(model_name)
    load_s = time.perf_counter() - t0
    failures: list[str] = []
    found = []  # (photo number, faces, detection seconds, depth image or None)
    # one bar over the stages of all photos: detect each, then fit + write each (a group = one fit)
    stages = tqdm(total=2 * len(images), unit="step", file=sys.stderr, disable=not progress, leave=False)
    for i, path in enumerate(images):
        stages.set_description(f"{path.name}: {'reading landmarks' if landmark_files else 'detecting'}")
        t0 = time.perf_counter()
        try:
            faces = find_faces(path, landmarks=landmark_files[i] if landmark_files else None,
                               face=face, detector=detector, max_side=max_side)
            d = None
            if depth is not None:
                d = read_depth(depth.files[i], depth.unit_mm)
                check_depth_size(d, faces[0], depth.files[i])
        except MorphableError as err:
            failures.append(str(err))
            stages.update(1)  # no fitting step for this photo
            continue
        finally:
            stages.update(1)
        found.append((i, faces, time.perf_counter() - t0, d))
    groups = [found] if multi_view and found else [[x] for x in found]
    for group in groups:
        faces = [f for _, fs, _, _ in group for f in fs]
        depths = [d for _, fs, _, d in group for _ in fs] if depth is not None else None
        timings = {"load": load_s, "detect": sum(s for _, _, s, _ in group) / len(group)}
        stages.set_description(f"{images[group[0][0]].name}{' + others' if len(group) > 1 else ''}: fitting")
        try:
            recs = reconstruct_faces(faces, model, label, shape_from=shape_from, multi_view=multi_view, method=method,
                                     perspective=perspective, photometric=photometric, iterations=iterations,
                                     texture_size=texture_size, progress=progress, timings=timings, depths=depths,
                                     focal=None if depth is None else depth.focal,
                                     principal_point=None if depth is None else depth.principal_point)
        except ValueError as err:  # e.g. fewer than 4 usable landmarks
            failures.append(f"{', '.join(dict.fromkeys(f.image for f in faces))}: cannot fit ({err})")
            stages.update(len(group))
            continue
        stages.set_description(f"{images[group[0][0]].name}: writing")
        if multi_view:
            for (i, _, _, _), rec in zip(group, recs):
                stages.write(f"wrote {rec.save(output / names[i], report=report)}/", file=sys.stdout)
        elif face == "all":
            for folder in save_all(recs, output / names[group[0][0]], report=report):
                stages.write(f"wrote {folder}/", file=sys.stdout)
        else:
            stages.write(f"wrote {recs[0].save(output / names[group[0][0]], report=report)}/", file=sys.stdout)
        stages.update(len(group))
    stages.close()
    return failures
