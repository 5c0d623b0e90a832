"""``morphable fit``: photos in, per face ``mesh.obj`` + ``texture.png`` + ``params.json`` + ``overlay.png``.

Per photo: read it, take the 68 landmarks from ``--landmarks`` files or detect them with dlib (best
face, or every face with ``--all-faces``), fit the model to them (:func:`~morphable.fitting.landmarks.
fit_landmarks`; with ``--multi-view`` all photos are one person and share one identity,
:func:`~morphable.fitting.multi.fit_landmarks_multi`), extract the texture into the model's UV layout
and write the outputs under ``DIR/<photo stem>/`` (``DIR/<photo stem>/face<i>/`` with ``--all-faces``).

A photo that cannot be read or has no face is reported at the end; the others are still written and
the command exits with status 1.

``params.json`` keys: ``model``, ``image``, ``image_size`` (``{"width", "height"}`` px), ``face``
(index), ``landmarks_source`` (``dlib-hog``, ``dlib-cnn`` or the landmark file), ``detection_score``,
``identity``, ``expression``, ``expression_kind``,
``rotation`` (axis-angle, rad, model → view), ``euler_degrees`` (``yaw``, ``pitch``, ``roll``),
``translation`` and ``scale`` (px, px per mm; scaled orthographic) or ``translation`` (mm) and ``focal``
(px; ``--perspective``), ``camera`` (the full camera; ``camera_from_dict`` reads it back),
``landmarks`` (the 68 input points) and ``landmarks_fitted`` (the model's 68 landmarks projected),
both 0-based pixels, NaN where missing; ``rms_px``; ``texture_coverage`` (fractions of the UV layout
seen directly and filled from the mirror side).

With ``--photometric`` the landmark fit is refined by inverse rendering
(:func:`~morphable.fitting.photometric.fit_photometric`): the mesh then carries the fitted albedo as its
texture (``albedo.png``; ``texture.png`` is still the photo's texture), ``comparison.png`` shows photo |
render | difference, ``energy.png`` the energy curve, and ``params.json`` gains ``albedo`` (per-vertex
values on the fitted region, or the model's albedo coefficients), ``light`` (27 SH numbers, 9 × RGB) and
``energies`` (final terms, and the starting ones under ``initial``).
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from morphable.errors import InputError, MorphableError

if TYPE_CHECKING:
    import torch


@dataclass
class FaceInput:
    """One face to reconstruct: its photo, 68 landmarks and where its outputs go."""

    image: np.ndarray          # (H, W, 3) uint8
    image_name: str            # shown in params.json and messages
    landmarks: np.ndarray      # (68, 2) 0-based px, NaN = missing
    source: str                # "dlib-hog", "dlib-cnn" or the landmark file
    score: float | None        # detection score (dlib) or None
    index: int                 # face number within its photo
    out_dir: Path


def faces_in_photo(image: np.ndarray, image_name: str, out_dir: Path, *, landmark_file: Path | None = None,
                   all_faces: bool = False, detector: str = "auto") -> list[FaceInput]:
    """The faces of one photo: from a landmark file, or every/the best dlib detection.

    Raises:
        InputError: bad landmark file, or no face found (naming the photo).
    """
    if landmark_file is not None:
        from morphable.detect.formats import read_landmarks

        points = read_landmarks(landmark_file)
        return [FaceInput(image, image_name, points, str(landmark_file), None, 0,
                          out_dir / "face0" if all_faces else out_dir)]
    from morphable.detect.dlib68 import detect_landmarks

    found = detect_landmarks(image, all_faces=all_faces, detector=detector)
    if not found:
        raise InputError(image_name, "no face found")
    return [FaceInput(image, image_name, d.landmarks, f"dlib-{d.detector}", d.score, i,
                      out_dir / f"face{i}" if all_faces else out_dir)
            for i, d in enumerate(found)]


def _camera_slice(camera, b: int):
    """Camera ``b`` of a batched :class:`ScaledOrthographic` or :class:`Perspective`, as a batch of one."""
    from dataclasses import fields, replace

    return replace(camera, **{f.name: getattr(camera, f.name)[b:b + 1] for f in fields(camera)})


def _face_triangles(model) -> "np.ndarray":
    """Triangles drawn in the overlay: those of the ``face`` region when the model names one."""
    tris = model.triangles.cpu().numpy()
    face = model.regions.get("face")
    if face is None:
        return tris
    inside = np.zeros(model.n_vertices, bool)
    inside[face.cpu().numpy()] = True
    return tris[inside[tris].all(1)]


def _with_photometric(fit, pfit, model):
    """The landmark fit with geometry and camera replaced by a photometric fit's (landmarks re-projected
    through the landmark fit's vertex correspondences)."""
    import dataclasses

    import torch

    ids = fit.landmark_ids
    points = pfit.camera.project(pfit.vertices.gather(1, ids.clamp_min(0)[..., None].expand(-1, -1, 3)))
    fitted = torch.where((ids >= 0)[..., None], points, torch.nan)
    return dataclasses.replace(fit, identity=pfit.identity, expression=pfit.expression, camera=pfit.camera,
                               vertices=pfit.vertices, landmarks_fitted=fitted)


def _albedo_texture(model, pfit, b: int, texel_map) -> np.ndarray:
    """The fitted per-vertex albedo rasterised into the model's UV layout, ``(S, S, 3)`` uint8; texels
    off the fitted region get the region's mean albedo."""
    import torch

    albedo = pfit.albedo[b]
    full = albedo.mean(0).expand(model.n_vertices, 3).clone()
    full[pfit.region_vertices] = albedo
    tid = texel_map.triangle_id
    corners = model.triangles[tid.clamp_min(0)]  # (S, S, 3)
    colours = (texel_map.barycentric[..., None].to(full.dtype) * full[corners]).sum(-2)
    colours = torch.where((tid >= 0)[..., None], colours, albedo.mean(0))
    return (colours.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _write_photometric(face: FaceInput, model, pfit, b: int, texel_map, params: dict) -> None:
    """``comparison.png``, ``energy.png``, ``albedo.png`` (as the mesh's texture) and the params extras."""
    from morphable.fitting.photometric import photometric_error
    from morphable.io import write_image
    from morphable.viz.comparison import energy_curve, side_by_side

    photo = face.image.astype(np.float64) / 255
    H, W = photo.shape[:2]
    render = pfit.render[b, :H, :W].cpu().double().numpy()
    alpha = pfit.alpha[b, :H, :W].cpu().double().numpy()
    write_image(face.out_dir / "comparison.png", side_by_side(photo, render, alpha))
    write_image(face.out_dir / "energy.png", energy_curve([h["total"] for h in pfit.history]))
    if texel_map is not None:
        _write_mesh(face.out_dir, model, pfit.vertices[b], _albedo_texture(model, pfit, b, texel_map),
                    texture_name="albedo.png")
    params["albedo"] = ({"kind": "coefficients", "values": pfit.albedo_coefficients[b]}
                        if pfit.albedo_coefficients is not None else
                        {"kind": "per_vertex", "vertex_ids": pfit.region_vertices, "values": pfit.albedo[b]})
    params["light"] = pfit.light[b].T.reshape(-1)  # R's 9, then G's, then B's
    params["light_layout"] = "sh9 per channel (R, G, B); see morphable/render/shading.py"
    params["energies"] = pfit.energies
    params["photometric_error"] = photometric_error(pfit.render[b:b + 1, :H, :W],
                                                    pfit.render.new_tensor(photo)[None], pfit.alpha[b:b + 1, :H, :W])


def write_face(face: FaceInput, model, model_label: str, fit, b: int, texel_map, photometric=None) -> Path:
    """Write ``mesh.obj`` (+ ``mesh.mtl``), ``texture.png``, ``params.json`` and ``overlay.png`` of fit ``b``.

    ``fit`` is a :class:`LandmarkFit` or :class:`PerspectiveFit`; ``texel_map`` is ``None`` for a model
    without UVs (then no texture is written and ``texture_coverage`` is ``null``). With a
    :class:`~morphable.fitting.photometric.PhotometricFit` the outputs show its geometry, plus its extras.
    """
    if photometric is not None:
        fit = _with_photometric(fit, photometric, model)
    import torch

    from morphable.fitting.texture import extract_texture
    from morphable.geometry.camera import Perspective
    from morphable.geometry.rotation import matrix_to_euler
    from morphable.io import write_image, write_params
    from morphable.viz.overlay import draw_overlay, shade_mesh

    H, W = face.image.shape[:2]
    camera = _camera_slice(fit.camera, b)
    vertices = fit.vertices[b:b + 1].detach()
    screen = camera.project_with_depth(vertices).detach()
    overlay_tris = _face_triangles(model)
    shading = shade_mesh(screen[0].cpu().numpy(), camera.transform(vertices)[0].cpu().numpy(), overlay_tris, (H, W))
    texture = None if texel_map is None else extract_texture(model, vertices, camera, face.image, texel_map=texel_map)

    face.out_dir.mkdir(parents=True, exist_ok=True)
    write_image(face.out_dir / "overlay.png",
                draw_overlay(face.image, landmarks=face.landmarks,
                             landmarks_fitted=fit.landmarks_fitted[b].cpu().numpy(), shading=shading, mesh_opacity=0.5))
    _write_mesh(face.out_dir, model, vertices[0], None if texture is None else texture.texture)
    ypr = torch.rad2deg(matrix_to_euler(camera.rotation_matrix))[0].tolist()
    coverage = None
    if texture is not None:
        covered = max(1, int(texture.covered.sum()))
        coverage = {"visible": float(texture.visible.sum()) / covered,
                    "mirrored": float(texture.mirrored.sum()) / covered}
    params = {
        "model": model_label,
        "image": face.image_name,
        "image_size": {"width": W, "height": H},
        "face": face.index,
        "landmarks_source": face.source,
        "detection_score": face.score,
        "identity": fit.identity[b if fit.identity.shape[0] > 1 else 0],
        "expression": fit.expression[b],
        "expression_kind": model.expression_kind,
        "rotation": camera.rotation[0],
        "euler_degrees": {"yaw": ypr[0], "pitch": ypr[1], "roll": ypr[2]},
        "translation": camera.translation[0],
        **({"focal": float(camera.focal[0])} if isinstance(camera, Perspective) else {"scale": float(camera.scale[0])}),
        "camera": camera.to_dict(),
        "landmarks": face.landmarks,
        "landmarks_fitted": fit.landmarks_fitted[b],
        "rms_px": float(fit.rms_px[b]),
        "texture_coverage": coverage,
    }
    if photometric is not None:
        _write_photometric(face, model, photometric, b, texel_map, params)
    write_params(face.out_dir / "params.json", params)
    return face.out_dir


def _write_mesh(folder: Path, model, vertices, texture: np.ndarray | None, texture_name: str = "texture.png") -> None:
    """``mesh.obj`` + ``mesh.mtl`` referencing ``texture_name``; the model's polygons (quads) and UVs kept.

    Faces outside the extracted texture (ICT's eyes, teeth and the back of the head live in other UV
    tiles) are given one flat colour, the texture's mean, kept in its top-left texel. Without a texture
    (a model without UVs) only the geometry is written.
    """
    from morphable.fitting.texture import textured_faces
    from morphable.io import Mesh, write_obj
    from morphable.io.atomic import atomic_write

    if texture is None:
        faces = model.polygons if model.polygons is not None else model.triangles
        write_obj(folder / "mesh.obj", Mesh(vertices=vertices, faces=faces))
        return
    if model.polygons is not None:
        faces, uv_faces = model.polygons, model.polygon_uvs
    else:
        faces, uv_faces = model.triangles.tolist(), None if model.uv_triangles is None else model.uv_triangles.tolist()
    uv = model.uv.detach().cpu().numpy()
    keep = textured_faces(model, faces, uv_faces).cpu().numpy()
    if not keep.all():
        texture = texture.copy()
        texture[0, 0] = texture.reshape(-1, 3).mean(0).round()
        flat = len(uv)
        S = texture.shape[0]
        uv = np.concatenate([uv, [[0.5 / S, 1 - 0.5 / S]]])
        corner_uvs = uv_faces if uv_faces is not None else faces
        uv_faces = [list(t) if k else [flat] * len(t) for t, k in zip(corner_uvs, keep)]
    write_obj(folder / "mesh.obj", Mesh(vertices=vertices, faces=faces, uv=uv, uv_faces=uv_faces, texture=texture))
    # write_obj names the texture after the OBJ (mesh.png); our output layout names it texture_name
    (folder / "mesh.png").replace(folder / texture_name)
    mtl = (folder / "mesh.mtl").read_text().replace("map_Kd mesh.png", f"map_Kd {texture_name}")
    with atomic_write(folder / "mesh.mtl", "w") as f:
        f.write(mtl)


def cached_texel_map(model, size: int):
    """The model's :func:`~morphable.fitting.texture.model_texel_map`, kept in ``MORPHABLE_HOME/texel_maps``.

    Rasterising a UV layout costs seconds (ICT: 18 k triangles) and depends only on the layout, so it
    is stored once per layout and size, under the sha256 of the UVs, UV triangles, textured-triangle
    mask and size. A cache file that cannot be read is rebuilt.
    """
    import hashlib

    import torch

    from morphable.fitting.texture import TexelMap, model_texel_map, textured_triangles
    from morphable.io.atomic import atomic_write
    from morphable.models.registry import home

    uv_tris = model.uv_triangles if model.uv_triangles is not None else model.triangles
    digest = hashlib.sha256()
    for part in (model.uv.detach().cpu().double(), uv_tris.cpu(), textured_triangles(model).cpu()):
        digest.update(np.ascontiguousarray(part.numpy()).tobytes())
    digest.update(str(size).encode())
    path = home() / "texel_maps" / f"{digest.hexdigest()[:32]}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            return TexelMap(torch.from_numpy(f["triangle_id"]).long(), torch.from_numpy(f["barycentric"]))
    except (OSError, KeyError, ValueError):
        pass
    texel_map = model_texel_map(model, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        np.savez(f, triangle_id=texel_map.triangle_id.numpy().astype(np.int32),
                 barycentric=texel_map.barycentric.numpy())
    return texel_map


def _stacked_photos(group: Sequence[FaceInput], dtype) -> "torch.Tensor":
    """The group's photos as one ``(B, H, W, 3)`` batch in [0, 1], zero-padded right/bottom to the largest
    size (padding keeps every photo's pixel coordinates)."""
    import torch

    H = max(f.image.shape[0] for f in group)
    W = max(f.image.shape[1] for f in group)
    out = torch.zeros(len(group), H, W, 3, dtype=dtype)
    for i, f in enumerate(group):
        out[i, :f.image.shape[0], :f.image.shape[1]] = torch.from_numpy(np.array(f.image)).to(dtype) / 255
    return out


def reconstruct(faces: Sequence[FaceInput], model, model_label: str, *, iterations: int = 5,
                multi_view: bool = False, perspective: bool = False, photometric: bool = False,
                texture_size: int = 512, progress: bool = False) -> tuple[list[Path], list[str]]:
    """Fit and write every face. Single-view fits are batched per photo; multi-view fits all faces at once.
    With ``photometric`` the landmark fits are refined by inverse rendering (one shared identity and
    albedo with ``multi_view``).

    Returns the output folders (in the order of ``faces``) and one message per photo whose fit failed
    (e.g. too few usable landmarks in a landmark file).
    """
    import torch
    from tqdm import tqdm

    from morphable.fitting.landmarks import fit_landmarks

    texel_map = cached_texel_map(model, texture_size) if model.uv is not None else None
    dtype = model.mean.dtype
    groups: list[list[FaceInput]] = []
    if multi_view:
        groups = [list(faces)]
    else:
        for face in faces:  # faces of one photo are consecutive
            if groups and groups[-1][0].image is face.image:
                groups[-1].append(face)
            else:
                groups.append([face])
    written, failures = [], []
    bar = tqdm(total=len(faces), desc="fitting", unit="face", disable=not progress, file=sys.stderr)
    for group in groups:
        landmarks = torch.as_tensor(np.stack([f.landmarks for f in group]), dtype=dtype)
        try:
            if multi_view:
                from morphable.fitting.multi import fit_landmarks_multi

                fit = fit_landmarks_multi(model, landmarks, iterations=iterations)
            else:
                fit = fit_landmarks(model, landmarks, iterations=iterations)
                if perspective:
                    from morphable.fitting.perspective import refine_perspective

                    fit = refine_perspective(model, fit, landmarks, group[0].image.shape[:2])
        except ValueError as err:  # e.g. fewer than 4 usable landmarks
            failures.append(f"{', '.join(dict.fromkeys(f.image_name for f in group))}: cannot fit ({err})")
            bar.update(len(group))
            continue
        pfit = None
        if photometric:
            from morphable.fitting.photometric import fit_photometric

            pfit = fit_photometric(model, _stacked_photos(group, dtype), landmarks, init=fit,
                                   shared_identity=multi_view)
        for b, face in enumerate(group):
            written.append(write_face(face, model, model_label, fit, b, texel_map, photometric=pfit))
            bar.update(1)
    bar.close()
    return written, failures


def _output_names(paths: Iterable[Path]) -> list[str]:
    """Folder name per photo: its stem, made unique (``a``, ``a-2``...) when two photos share one."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        names.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return names


@click.command("fit")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_name", default="ict", show_default=True,
              help="Registry name (ict, sfm) or a model file.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("out/fit"), show_default=True,
              help="Output folder; each photo gets DIR/<stem>/.")
@click.option("--landmarks", "landmark_files", multiple=True, type=click.Path(path_type=Path),
              help="68-point landmark file (.pts or .json) per photo, in the photos' order; skips detection.")
@click.option("--multi-view", is_flag=True, help="All photos show one person: fit one shared identity.")
@click.option("--perspective", is_flag=True,
              help="Refine each fit with a perspective camera (focal = the photo's longer side).")
@click.option("--photometric", is_flag=True,
              help="Refine by inverse rendering (SH light, albedo): adds albedo.png, comparison.png, energy.png.")
@click.option("--all-faces", is_flag=True, help="Reconstruct every detected face (DIR/<stem>/face<i>/).")
@click.option("--detector", type=click.Choice(["auto", "hog", "cnn"]), default="auto", show_default=True,
              help="dlib face detector; auto = HOG, then the CNN when HOG finds no face.")
@click.option("--iterations", default=5, show_default=True, type=click.IntRange(0, 100),
              help="Contour / pose / shape alternations.")
@click.option("--texture-size", default=512, show_default=True, type=click.IntRange(16, 8192),
              help="Width and height of texture.png in texels.")
def fit(images: tuple[Path, ...], model_name: str, output: Path, landmark_files: tuple[Path, ...],
        multi_view: bool, perspective: bool, photometric: bool, all_faces: bool, detector: str, iterations: int,
        texture_size: int) -> None:
    """Reconstruct the faces in IMAGES: mesh.obj, texture.png, params.json and overlay.png per face."""
    from tqdm import tqdm

    from morphable import load_model
    from morphable.io import read_image

    if landmark_files and len(landmark_files) != len(images):
        raise click.UsageError(f"--landmarks: got {len(landmark_files)} files for {len(images)} images "
                               "(give one per image, in the same order)")
    if multi_view and all_faces:
        raise click.UsageError("--multi-view fits one person: it cannot be combined with --all-faces")
    if photometric and perspective:
        raise click.UsageError("--photometric fits a scaled-orthographic camera: it cannot be combined with --perspective")
    if multi_view and perspective:
        raise click.UsageError("--perspective refines single-view fits: it cannot be combined with --multi-view")
    model = load_model(model_name)
    failures: list[str] = []
    faces: list[FaceInput] = []
    names = _output_names(images)
    stage = "reading" if landmark_files else "detecting"
    for i, path in enumerate(tqdm(images, desc=stage, unit="image", file=sys.stderr, disable=len(images) < 2)):
        try:
            image = read_image(path)
            faces += faces_in_photo(image, str(path), output / names[i],
                                    landmark_file=landmark_files[i] if landmark_files else None,
                                    all_faces=all_faces, detector=detector)
        except MorphableError as err:
            failures.append(str(err))
    written, fit_failures = reconstruct(faces, model, model_name, iterations=iterations, multi_view=multi_view,
                                        perspective=perspective, photometric=photometric,
                                        texture_size=texture_size, progress=len(faces) > 1)
    failures += fit_failures
    for folder in written:
        click.echo(f"wrote {folder}/")
    if failures:
        for line in failures:
            click.echo(f"failed: {line}", err=True)
        raise click.ClickException(f"{len(failures)} of {len(images)} images failed")
