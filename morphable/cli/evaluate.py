"""``morphable evaluate``: the field's evaluation protocols (NoW, MICC/Genova, landmark NME).

Thin wrappers over :mod:`morphable.eval`; each prints a small table and can write the figures as JSON.
Under ``torchrun --nproc-per-node N -m morphable evaluate nme ...`` each process reads its contiguous share of
the images and rank 0 reports on all of them (:mod:`morphable.train.distributed`).
See ``docs/evaluation.md`` for what each protocol measures and the conventions behind it.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

UNITS_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
_unit = click.Choice(sorted(UNITS_TO_MM))
_path = click.Path(exists=True, dir_okay=False, path_type=Path)


def _read_mesh_mm(path: Path, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) mm, triangles (F, 3)) of an .obj/.ply file; polygons are split into fans."""
    from morphable.errors import InputError
    from morphable.io.mesh import fan_triangles, read_mesh

    mesh = read_mesh(path)
    triangles = fan_triangles(mesh.faces)
    if len(triangles) == 0:
        raise InputError(path, "the mesh has no faces")
    return mesh.vertices * UNITS_TO_MM[unit], triangles


def _crop_triangles(triangles: np.ndarray, ids: np.ndarray, count: int) -> np.ndarray:
    """Triangles with all corners in ``ids`` (sorted, unique), re-indexed into ``ids``."""
    import torch

    from morphable.geometry.mesh import submesh

    return submesh(torch.as_tensor(triangles, dtype=torch.int64), torch.as_tensor(ids), count).triangles.numpy()


def _table(title: str, summary: dict) -> None:
    click.echo(title)
    click.echo(f"  {'median':>9} {'mean':>9} {'std':>9}   (mm, {summary['n_points']} points)")
    click.echo(f"  {summary['median_mm']:9.4g} {summary['mean_mm']:9.4g} {summary['std_mm']:9.4g}")


def _write_heatmap(path: Path, vertices: np.ndarray, triangles: np.ndarray, errors: np.ndarray,
                   frame: np.ndarray | None) -> None:
    from morphable.io.image import write_image
    from morphable.viz.heatmap import render_heatmap

    write_image(path, render_heatmap(vertices, triangles, errors, frame=frame))
    click.echo(f"wrote {path}")


@click.group()
def evaluate() -> None:
    """Evaluate reconstructions: NoW scan-to-mesh, MICC point-to-plane, 2D landmark NME."""


@evaluate.command()
@click.option("--scan", required=True, type=_path, help="Ground-truth scan (.obj/.ply).")
@click.option("--scan-landmarks", required=True, type=_path,
              help="The scan's 7 NoW landmarks (.txt 'x y z' lines, .npy or MeshLab .pp).")
@click.option("--mesh", required=True, type=_path, help="Predicted mesh (.obj/.ply), neutral pose and expression.")
@click.option("--mesh-landmarks", required=True, type=_path, help="The prediction's 7 NoW landmarks.")
@click.option("--scan-unit", type=_unit, default="mm", show_default=True, help="Unit of the scan and its landmarks.")
@click.option("--mesh-unit", type=_unit, default="mm", show_default=True, help="Unit of the mesh and its landmarks.")
@click.option("--metrical", is_flag=True, help="No scale in the alignment (metrical NoW).")
@click.option("--no-align", is_flag=True, help="Measure the mesh where it is (already in the scan's frame).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures here.")
@click.option("--heatmap", type=click.Path(dir_okay=False, path_type=Path),
              help="Render the cropped scan coloured by its error (.png).")
@click.option("--distances", type=click.Path(dir_okay=False, path_type=Path),
              help="Save every cropped scan vertex's distance (mm, .npy) to pool over a dataset as NoW does.")
def now(scan: Path, scan_landmarks: Path, mesh: Path, mesh_landmarks: Path, scan_unit: str, mesh_unit: str,
        metrical: bool, no_align: bool, json_out: Path | None, heatmap: Path | None, distances: Path | None) -> None:
    """NoW scan-to-mesh error (RingNet, CVPR 2019): crop, 7-landmark alignment, refinement, distances."""
    from morphable.eval.now import now_errors, read_landmarks_3d
    from morphable.io.atomic import atomic_write
    from morphable.io.params import write_params
    from morphable.viz.heatmap import view_frame

    scan_lm = read_landmarks_3d(scan_landmarks) * UNITS_TO_MM[scan_unit]     # small files first: fail fast
    mesh_lm = read_landmarks_3d(mesh_landmarks) * UNITS_TO_MM[mesh_unit]
    scan_v, scan_tri = _read_mesh_mm(scan, scan_unit)
    mesh_v, mesh_tri = _read_mesh_mm(mesh, mesh_unit)
    result = now_errors(scan_v, scan_lm, mesh_v, mesh_tri, mesh_lm, metrical=metrical, align=not no_align)
    summary = result.summary()
    variant = "no alignment" if no_align else ("metrical" if metrical else "similarity")
    _table(f"NoW scan-to-mesh error ({variant})", summary)
    if json_out is not None:
        write_params(json_out, {"protocol": "now", "variant": variant, **summary,
                                "transform": result.transform.to_dict()})
        click.echo(f"wrote {json_out}")
    if distances is not None:
        with atomic_write(distances) as f:
            np.save(f, result.distances)
        click.echo(f"wrote {distances}")
    if heatmap is not None:
        frame = view_frame(scan_lm[3] - scan_lm[0], scan_lm[:4].mean(axis=0) - scan_lm[5:].mean(axis=0))
        tri = _crop_triangles(scan_tri, result.scan_ids, len(scan_v))
        _write_heatmap(heatmap, scan_v[result.scan_ids], tri, result.distances, frame)


def _warn_unit(path: Path, vertices_mm: np.ndarray, unit: str, option: str) -> None:
    """One warning line when a mesh's size suggests another unit than the one it was read in."""
    from morphable.eval.micc import suggested_unit

    guess = suggested_unit(vertices_mm)
    if guess is not None:
        diagonal = float(np.linalg.norm(np.ptp(vertices_mm, axis=0)))
        click.echo(f"warning: {path}: {diagonal:.3g} mm across when read as {unit}, too small for a face; "
                   f"is it in {'metres' if guess == 'm' else 'centimetres'}? (pass {option} {guess})", err=True)


@evaluate.command()
@click.option("--gt", required=True, type=_path, help="Ground-truth scan (.obj/.ply), frontal (+z to viewer).")
@click.option("--pred", required=True, type=_path, help="Predicted neutral mesh (.obj/.ply).")
@click.option("--gt-unit", type=_unit, default="mm", show_default=True,
              help="Unit of the scan, its landmarks and --gt-nose-tip.")
@click.option("--pred-unit", type=_unit, default="mm", show_default=True,
              help="Unit of the prediction and its landmarks.")
@click.option("--gt-nose-tip", nargs=3, type=float, help="x y z of the scan's nose tip (default: largest z).")
@click.option("--gt-landmarks", type=_path, help="Optional 3D points on the scan for the initial alignment ...")
@click.option("--pred-landmarks", type=_path, help="... and the same points on the prediction (same count, >= 3).")
@click.option("--crop", "crop_mm", type=float, default=95.0, show_default=True, help="Crop radius around the nose tip, mm.")
@click.option("--no-align", is_flag=True, help="Measure the prediction where it is.")
@click.option("--no-scale", is_flag=True, help="Rigid ICP (the protocol solves for isotropic scale).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--heatmap", type=click.Path(dir_okay=False, path_type=Path),
              help="Render the cropped scan coloured by its point-to-plane error (.png).")
def micc(gt: Path, pred: Path, gt_unit: str, pred_unit: str, gt_nose_tip: tuple[float, float, float] | None,
         gt_landmarks: Path | None, pred_landmarks: Path | None, crop_mm: float, no_align: bool, no_scale: bool,
         json_out: Path | None, heatmap: Path | None) -> None:
    """MICC/Genova: 95 mm crop, ICP with isotropic scale, symmetric point-to-plane distance."""
    from morphable.eval.micc import micc_errors
    from morphable.eval.now import read_landmarks_3d
    from morphable.io.params import write_params

    if (gt_landmarks is None) != (pred_landmarks is None):
        raise click.UsageError("--gt-landmarks and --pred-landmarks go together")
    lm = {}
    if gt_landmarks is not None:
        lm["gt_landmarks"] = read_landmarks_3d(gt_landmarks, None) * UNITS_TO_MM[gt_unit]
        lm["pred_landmarks"] = read_landmarks_3d(pred_landmarks, len(lm["gt_landmarks"])) * UNITS_TO_MM[pred_unit]
    gt_v, gt_tri = _read_mesh_mm(gt, gt_unit)
    pred_v, pred_tri = _read_mesh_mm(pred, pred_unit)
    _warn_unit(gt, gt_v, gt_unit, "--gt-unit")
    _warn_unit(pred, pred_v, pred_unit, "--pred-unit")
    tip = None if gt_nose_tip is None else np.asarray(gt_nose_tip) * UNITS_TO_MM[gt_unit]
    result = micc_errors(gt_v, gt_tri, pred_v, pred_tri, gt_nose_tip=tip, crop_radius=crop_mm,
                         align=not no_align, scale=not no_scale, **lm)
    if result.crop_kept_all:
        click.echo(f"warning: {gt}: the {crop_mm:g} mm crop around the nose tip kept the whole scan "
                   f"({len(gt_v)} vertices), so nothing was cropped; check --gt-unit ({gt_unit}) and the nose tip",
                   err=True)
    summary = result.summary()
    _table("MICC symmetric point-to-plane error", summary)
    click.echo(f"  scan->prediction mean {summary['gt_to_pred_mean_mm']:.4f} mm, "
               f"prediction->scan mean {summary['pred_to_gt_mean_mm']:.4f} mm, scale {summary['scale']:.4f}")
    if json_out is not None:
        write_params(json_out, {"protocol": "micc", **summary, "transform": result.transform.to_dict()})
        click.echo(f"wrote {json_out}")
    if heatmap is not None:
        errors = np.full(len(result.gt_ids), np.nan)
        errors[result.gt_overlap] = result.gt_to_pred
        tri = _crop_triangles(gt_tri, result.gt_ids, len(gt_v))
        _write_heatmap(heatmap, gt_v[result.gt_ids], tri, errors, None)


YAW_FILES = ("index.json", "yaws.json")


def _landmark_files(path: Path) -> dict[str, Path]:
    """name (file name up to its first dot) -> file, for one file or a folder of .pts/.json files (yaw files
    :data:`YAW_FILES` excepted)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".pts", ".json") and p.name not in YAW_FILES)
    else:
        files = [path]
    return {p.name.split(".")[0]: p for p in files}


def _default_yaws(gt: Path) -> Path:
    """The yaw file beside the ground truth (:data:`YAW_FILES`), or a one-line error saying what to pass."""
    from morphable.errors import InputError

    folder = gt if gt.is_dir() else gt.parent
    for name in YAW_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InputError(None, f"--protocol aflw2000 bins images by yaw: pass --yaws FILE (JSON {{name: degrees}}, "
                           f"or the corpus's _derived/aflw2000_3d/index.json), or put {' or '.join(YAW_FILES)} "
                           f"in {folder}")


def _read_yaws(path: Path) -> dict[str, float]:
    """``{name: yaw in degrees}`` from ``{name: degrees}`` or a list of ``{"image": path, "yaw_deg" | "yaw" |
    "yaw_rad": value}`` records (name: the image's file name up to its first dot).

    ``yaw_rad`` values larger than π in magnitude cannot be radians: the corpus's ``index.json`` stores
    degrees under that key (they equal 3DDFA's ``AFLW2000-3D.pose.npy``, which is in degrees); such a file
    is read as degrees, with a warning.
    """
    import json

    from morphable.errors import InputError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"cannot read the yaw file ({err})") from None
    if isinstance(data, dict):
        records = [{"image": k, "yaw_deg": v} for k, v in data.items()]
    elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
        records = data
    else:
        raise InputError(path, "expected JSON {name: yaw in degrees} or a list of {image, yaw_deg} records")
    table, radians = {}, {}
    for i, record in enumerate(records):
        key = next((k for k in ("yaw_deg", "yaw", "yaw_rad") if k in record), None)
        value = record.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not isinstance(record.get("image"), str) or not number or not -1e6 < value < 1e6:  # also NaN, huge ints
            raise InputError(path, f"entry {i}: needs an image name and a finite yaw number")
        name = Path(record["image"]).name.split(".")[0]
        (radians if key == "yaw_rad" else table)[name] = float(value)
    if radians:
        largest = max(abs(v) for v in radians.values())
        if largest > np.pi:
            click.echo(f"warning: {path}: 'yaw_rad' values reach {largest:.1f}, so they are degrees; read as degrees",
                       err=True)
            table.update(radians)
        else:
            table.update({k: float(np.degrees(v)) for k, v in radians.items()})
    return table


@evaluate.command()
@click.option("--pred", required=True, type=click.Path(exists=True, path_type=Path),
              help="Predicted 68-point landmarks: a .pts/.json file or a folder of them.")
@click.option("--gt", required=True, type=click.Path(exists=True, path_type=Path),
              help="Ground truth, matched to predictions by file name up to the first dot.")
@click.option("--protocol", type=click.Choice(["aflw2000", "300w"]), required=True)
@click.option("--yaws", type=_path,
              help="aflw2000: yaw per image, JSON {name: degrees} or a list of {image, yaw_deg} records "
                   "(the corpus's _derived/aflw2000_3d/index.json). Default: index.json or yaws.json beside the GT.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
def nme(pred: Path, gt: Path, protocol: str, yaws: Path | None, json_out: Path | None) -> None:
    """2D landmark NME: AFLW2000-3D (sqrt(w*h) of the GT box, yaw bins) or 300-W (outer eye corners)."""
    from morphable.detect.formats import read_landmarks
    from morphable.errors import InputError, MorphableError
    from morphable.eval.nme import nme_300w, nme_aflw2000
    from morphable.io.params import write_params
    from morphable.train import distributed

    gt_files, pred_files = _landmark_files(gt), _landmark_files(pred)
    if not gt.is_dir() and not pred.is_dir():                  # two single files: pair them whatever the names
        pred_files = {name: next(iter(pred_files.values())) for name in gt_files}
    names = sorted(gt_files)
    if not names:
        raise InputError(gt, "no ground-truth landmark files (.pts/.json)")
    distributed.init()  # under torchrun: this process reads its share of the images
    gts, preds, problem = [], [], None
    for name in (names[i] for i in distributed.shard_range(len(names))):
        try:
            gts.append(read_landmarks(gt_files[name]))
        except MorphableError as err:                               # every process stops with this line
            if not distributed.is_distributed():
                raise
            problem = str(err)
            break
        try:
            if name not in pred_files:
                raise InputError(pred / name if pred.is_dir() else pred, "no prediction for this image")
            preds.append(read_landmarks(pred_files[name]))
        except MorphableError as err:                               # a failure: counted, the batch goes on
            click.echo(f"warning: {err}", err=True)
            preds.append(np.full((68, 2), np.nan))
    shares = distributed.gather_objects((gts, preds, problem))
    if problems := [p for _, _, p in shares if p]:
        raise click.ClickException(problems[0])
    if not distributed.is_main():                                   # rank 0 reports for all
        return
    gt_arr = np.stack([x for g, _, _ in shares for x in g])
    pred_arr = np.stack([x for _, p, _ in shares for x in p])
    if protocol == "aflw2000":
        if yaws is None:
            yaws = _default_yaws(gt)
        table = _read_yaws(yaws)
        missing = [n for n in names if n not in table]
        if missing:
            raise InputError(yaws, f"no yaw for {missing[0]} (and {len(missing) - 1} more)")
        report = nme_aflw2000(pred_arr, gt_arr, np.array([table[n] for n in names]))
    else:
        report = nme_300w(pred_arr, gt_arr)
    click.echo(f"NME ({protocol}), {len(names)} images, {report.failures} failed")
    for lo, hi, count, mean in report.bins:
        click.echo(f"  |yaw| {lo:>4.0f}-{hi:<4.0f}  n={count:<5d} NME {100 * mean:6.2f} %")
    click.echo(f"  {'mean of bins' if report.bins else 'mean'}: {100 * report.headline:.2f} %"
               + (f"   (all images: {100 * report.mean:.2f} %)" if report.bins else ""))
    if json_out is not None:
        write_params(json_out, {"protocol": protocol, "nme": report.headline, "nme_all": report.mean,
                                "failures": report.failures,
                                "per_image": {n: (None if np.isnan(v) else float(v))
                                              for n, v in zip(names, report.per_image)},
                                "bins": [{"yaw_low": lo, "yaw_high": hi, "count": c,
                                          "nme": None if np.isnan(m) else m} for lo, hi, c, m in report.bins]})
        click.echo(f"wrote {json_out}")
