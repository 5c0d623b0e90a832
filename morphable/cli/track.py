"""``morphable track VIDEO``: one face through a video — one identity for the clip, a pose and an expression
per frame (:mod:`morphable.fitting.track`) — written as ``params.jsonl`` (one params record per frame),
``overlay.mp4`` and, with ``--meshes obj``, ``meshes/frame_NNNNN.obj``, with ``--meshes glb``, ``track.glb``
(the clip's mesh with its expressions as morph targets, animated: :mod:`morphable.io.glb_animation`).

Pipeline (what :func:`track_video` runs; ``docs/tracking.md``):

1. **Observe** (one decoding pass, progress bar): each frame is shrunk to a working copy of at most
   ``--max-side`` px; :class:`~morphable.fitting.track.FaceFollower` gives its 68 landmarks (dlib, the box
   tracked from the previous frame); :func:`~morphable.fitting.track.face_flow` the Farnebäck flow from the
   previous frame around the face. A few keyframes spread over the clip are kept for the identity.
2. **Identity** (E_same): the shape regressor (:mod:`morphable.nets.genova`, as in ``morphable fit``)
   predicts each keyframe's identity; their mean centres the prior of the keyframes' landmark fits, which
   are fused into one identity (:func:`~morphable.fitting.track.clip_identity`).
3. **Track**: :func:`~morphable.fitting.track.track_landmarks` (landmarks + flow + temporal coherence,
   each frame started from the previous one). Frames without a face are held from their neighbours and
   listed at the end.
4. **Write** (the working copies kept from step 1, or decoded again for long videos): per frame a params
   line, an overlay frame (the shaded face, input landmarks green, fitted red; held frames framed in red)
   and optionally the posed mesh (OBJ per frame, or one animated GLB for the clip).

A video that cannot be read is one error line and exit status 1.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from morphable.errors import InputError

MAX_SIDE = 640
"""Default longest side (px) of the working copy each frame is tracked on."""
HELD_BORDER = (230, 40, 40)
FRAME_CACHE_BYTES = 1 << 30
"""Working copies up to this size in all are kept in memory for the writing pass (else decoded again)."""


# --- reading --------------------------------------------------------------------------------------------------
def open_video(path: str | Path):
    """An imageio-ffmpeg reader for ``path`` and its ``(fps, (H, W), estimated frame count)``.

    Raises:
        InputError: no such file, or ffmpeg cannot decode it (one line naming the file).
    """
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such video file")
    try:
        reader = imageio.get_reader(path, "ffmpeg")
        meta = reader.get_meta_data()
    except Exception as err:  # imageio-ffmpeg raises OSError, RuntimeError, ... for undecodable files
        raise InputError(path, f"cannot read as a video ({_first_line(err)})") from None
    fps = float(meta.get("fps") or 25.0)
    W, H = meta.get("size") or meta.get("source_size") or (0, 0)
    duration = meta.get("duration")
    estimate = int(round(duration * fps)) if duration and np.isfinite(duration) else 0
    return reader, fps, (int(H), int(W)), estimate


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def frames(path: str | Path, max_side: int | None, reader=None) -> Iterator[tuple[np.ndarray, float]]:
    """Yield each frame's working copy ``(h, w, 3)`` uint8 (even sides, for the H.264 overlay) and the
    original px per working px.

    Args:
        reader: a fresh reader of ``path`` from :func:`open_video` to decode with (closed at the end), so
            a caller that needed the metadata does not start ffmpeg twice; None: opened here.
    Raises:
        InputError: the file cannot be decoded, or holds no frame.
    """
    import cv2

    reader = reader if reader is not None else open_video(path)[0]
    count = 0
    try:
        iterator = iter(reader)
        while True:
            try:
                frame = next(iterator)
            except StopIteration:
                break
            except Exception as err:
                if count == 0:
                    raise InputError(path, f"cannot decode a frame ({_first_line(err)})") from None
                break  # a truncated file: keep the frames read so far
            H, W = frame.shape[:2]
            f = max(1.0, max(H, W) / max_side) if max_side else 1.0
            w, h = 2 * max(1, round(W / f / 2)), 2 * max(1, round(H / f / 2))
            small = frame if (w, h) == (W, H) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
            count += 1
            yield np.ascontiguousarray(small[..., :3]), W / w
    finally:
        reader.close()
    if count == 0:
        raise InputError(path, "no video frames")


# --- the pipeline ---------------------------------------------------------------------------------------------
@dataclass
class VideoTrack:
    """Everything :func:`track_video` found (pixel quantities in the working copies' frame).

    Attributes:
        track: :class:`~morphable.fitting.track.Track`; landmarks: ``(N, 68, 2)`` detected (NaN: no face).
        sources: per frame ``tracked``, ``dlib-hog``, ``dlib-cnn`` or ``none``.
        fps, image_size (original ``(H, W)``), working_scale (original px per working px).
        shape_from: ``regressor`` or ``landmarks``; keyframes: the frames fused into the identity.
        timings: seconds per stage (``observe``, ``identity``, ``track``).
        frames: the working copies when they fit in :data:`FRAME_CACHE_BYTES`, else ``None``.
    """

    track: object
    landmarks: np.ndarray
    sources: list[str]
    fps: float
    image_size: tuple[int, int]
    working_scale: float
    shape_from: str
    keyframes: list[int]
    timings: dict = field(default_factory=dict)
    frames: list | None = None


def track_video(path: str | Path, model, model_name: str, *, shape_from: str = "regressor",
                max_side: int | None = MAX_SIDE, detector: str = "auto", flow: bool = True, config=None,
                progress: bool = False) -> VideoTrack:
    """Observe, identify and track the face in a video (module docstring, steps 1–3).

    Raises:
        InputError: unreadable video, or no face in any frame.
    """
    import cv2
    import torch
    from tqdm import tqdm

    from morphable.fitting.track import (FaceFollower, TrackConfig, clip_identity, face_flow, keyframe_indices,
                                         landmark_box, track_landmarks)

    config = config or TrackConfig()
    reader, fps, size, estimate = open_video(path)  # decoded by frames() below: one ffmpeg start, not two
    wanted = set(keyframe_indices([True] * max(estimate, 1), config.keyframes))
    follower = FaceFollower(detector)
    landmarks, sources, flows, kept = [], [], [], {}
    scale, previous, cache, cached = 1.0, None, [], 0
    t0 = time.perf_counter()
    bar = tqdm(desc="tracking faces", unit="frame", total=estimate or None, file=sys.stderr, disable=not progress,
               leave=False)
    for n, (frame, scale) in enumerate(frames(path, max_side, reader)):
        points, source = follower(frame)
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        box = landmark_box(landmarks[-1]) if landmarks else None
        flows.append(face_flow(previous, grey, box) if flow and box is not None and previous is not None else None)
        landmarks.append(np.full((68, 2), np.nan) if points is None else points)
        sources.append(source)
        if n in wanted and points is not None:
            kept[n] = frame
        previous = grey
        cached += frame.nbytes
        cache = cache if cache is not None and cached <= FRAME_CACHE_BYTES else None
        if cache is not None:
            cache.append(frame)
        bar.update(1)
    bar.close()
    timings = {"observe": time.perf_counter() - t0}
    L = np.stack(landmarks)
    has_face = np.isfinite(L).all((1, 2))
    if not has_face.any():
        raise InputError(path, f"no face found in any of its {len(L)} frames")
    t0 = time.perf_counter()
    keys = sorted(kept) if len(kept) >= 2 else keyframe_indices(list(has_face), config.keyframes)
    prior, precision, used = None, 1.0, "landmarks"
    if shape_from == "regressor" and kept:
        from morphable.nets.genova import has_regressor, load_regressor

        if has_regressor(model_name):
            reg = load_regressor(model_name)
            ids = sorted(kept)
            images = torch.from_numpy(np.stack([kept[i] for i in ids])).float() / 255
            prior = reg.predict_identity(images, torch.as_tensor(L[ids], dtype=torch.float32)).mean(0)
            precision, used = reg.prior_precision, "regressor"
    identity, covariance = clip_identity(model, torch.as_tensor(L[keys], dtype=model.mean.dtype), prior_mean=prior,
                                         prior_precision=precision, sigma_mm=config.sigma_mm)
    timings["identity"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    track = track_landmarks(model, torch.as_tensor(L), identity, flows=flows, config=config,
                            identity_covariance=covariance)
    timings["track"] = time.perf_counter() - t0
    return VideoTrack(track=track, landmarks=L, sources=sources, fps=fps, image_size=size, working_scale=scale,
                      shape_from=used, keyframes=keys, timings=timings, frames=cache)


# --- writing --------------------------------------------------------------------------------------------------
def frame_params(vt: VideoTrack, n: int, model, model_name: str, video: str) -> dict:
    """Frame ``n``'s record in the params schema (:data:`morphable.io.params.PARAMS_VERSION`, pixels of the
    original video) plus ``frame``, ``time_s`` and ``held``."""
    import torch

    from morphable.geometry.camera import ScaledOrthographic, rescale_pixels
    from morphable.geometry.rotation import matrix_to_euler
    from morphable.io.params import PARAMS_SCHEMA, PARAMS_VERSION, json_ready

    tr, s = vt.track, vt.working_scale
    cam = tr.camera
    camera = ScaledOrthographic(cam.scale[n:n + 1], cam.rotation[n:n + 1], cam.translation[n:n + 1]).rescaled(s)
    yaw, pitch, roll = torch.rad2deg(matrix_to_euler(camera.rotation_matrix))[0].tolist()
    H, W = vt.image_size
    held = n in tr.held
    return json_ready({
        "schema": PARAMS_SCHEMA, "version": PARAMS_VERSION, "model": model_name, "image": f"{video}#{n}",
        "image_size": {"width": W, "height": H}, "face": 0, "frame": n, "time_s": n / vt.fps, "held": held,
        "landmarks_source": vt.sources[n], "detection_score": None, "shape_from": vt.shape_from,
        "identity": tr.identity, "expression": tr.expression[n],
        "expression_kind": model.expression_kind if model.n_expression else None,
        "camera": camera.to_dict(), "euler_degrees": {"yaw": yaw, "pitch": pitch, "roll": roll},
        "landmarks": rescale_pixels(vt.landmarks[n], s),
        "landmarks_fitted": rescale_pixels(tr.landmarks_fitted[n].numpy(), s),
        "rms_px": float(tr.rms_px[n]) * s, "rms_stage": "held" if held else "track", "working_scale": s,
        "arrays": None, "photometric": None,
    })


def frame_vertices(vt: VideoTrack, n: int, model):
    """``(V, 3)`` float64 mm: frame ``n``'s mesh (clip identity, frame expression), model space."""
    import torch

    tr = vt.track
    with torch.no_grad():
        out = model(identity=tr.identity[None].to(model.mean.dtype),
                    expression=tr.expression[n:n + 1].to(model.mean.dtype) if model.n_expression else None)
    return out.vertices[0].double()


class OverlayMesh:
    """The model's ``face`` region with the clip identity folded in, for :func:`overlay_frame`: an overlay
    frame then costs one small blend (``(n, 3, Ke)`` expression rows) and one splat of ``n`` points."""

    def __init__(self, vt: VideoTrack, model):
        import torch

        from morphable.geometry.mesh import submesh, vertex_normals

        cut = submesh(model.triangles, model.region_ids("face"), model.n_vertices)
        v = cut.vertex_ids
        f64 = torch.float64
        self.base = model.mean.to(f64)[v] + model.identity_basis.to(f64)[v] @ vt.track.identity  # (n, 3) mm
        self.basis = model.expression_basis.to(f64)[v] if model.n_expression else None  # (n, 3, Ke)
        self.normals = vertex_normals(self.base[None], cut.triangles)[0]  # (n, 3), neutral expression

    def vertices(self, expression):
        """``(1, n, 3)`` mm for expression ``(Ke,)``."""
        return (self.base if self.basis is None else self.base + self.basis @ expression.double())[None]


def splat_shading(screen: np.ndarray, normals: np.ndarray, size: tuple[int, int],
                  cells: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A dense mesh's Lambert shading (lit from the camera, as :func:`~morphable.viz.overlay.shade_mesh`)
    by splatting its vertices instead of rasterising its triangles: ~10× cheaper for ICT's face, so a video
    overlay keeps up with tracking.

    Each vertex lands in a grid of about ``cells`` cells across the mesh's extent; the nearest vertex per
    cell wins (painted far to near), one 3×3 closing fills the gaps between vertices, and the grid is resized
    to the image. Args: ``screen (n, 3)`` ``(u px, v px, depth mm)``, ``normals (n, 3)`` view-frame unit
    normals (+z towards the viewer), ``size`` ``(H, W)``. Returns ``shade (H, W)`` float32, ``mask (H, W)``
    bool, as ``shade_mesh``.
    """
    import cv2

    H, W = size
    front = normals[:, 2] > 0
    xy, depth, nz = screen[front, :2], screen[front, 2], normals[front, 2]
    extent = max(float(np.ptp(xy, axis=0).max()) if len(xy) else 1.0, 1.0)
    cell = max(1.0, extent / cells)
    h, w = max(1, int(np.ceil(H / cell))), max(1, int(np.ceil(W / cell)))
    g = np.floor((xy + 0.5) / cell).astype(np.int64)
    ok = (g[:, 0] >= 0) & (g[:, 0] < w) & (g[:, 1] >= 0) & (g[:, 1] < h)
    order = np.argsort(-depth[ok])  # far first: the nearest vertex is written last and stays
    g, value = g[ok][order], (0.25 + 0.75 * nz[ok][order]).astype(np.float32)
    shade = np.zeros((h, w), np.float32)
    shade[g[:, 1], g[:, 0]] = value
    mask = np.zeros((h, w), np.uint8)
    mask[g[:, 1], g[:, 0]] = 1
    kernel = np.ones((3, 3), np.uint8)
    filled = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    shade = np.where(mask > 0, shade, cv2.dilate(shade, kernel))
    shade = cv2.resize(shade, (int(round(w * cell)), int(round(h * cell))), interpolation=cv2.INTER_LINEAR)[:H, :W]
    cover = cv2.resize(filled.astype(np.float32), shade.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return np.where(cover >= 0.5, shade, 0).astype(np.float32), cover >= 0.5


def overlay_frame(frame: np.ndarray, vt: VideoTrack, n: int, mesh: OverlayMesh) -> np.ndarray:
    """The working frame with the shaded fitted face (:func:`splat_shading`), detected (green) and fitted
    (red) landmarks; a held frame gets a red border. Only the rectangle around the face is redrawn."""
    from morphable.geometry.camera import ScaledOrthographic
    from morphable.viz.overlay import draw_overlay

    cam = vt.track.camera
    camera = ScaledOrthographic(cam.scale[n:n + 1], cam.rotation[n:n + 1], cam.translation[n:n + 1])
    vertices = mesh.vertices(vt.track.expression[n])
    screen = camera.project_with_depth(vertices)[0].numpy()
    marks, fitted = vt.landmarks[n], vt.track.landmarks_fitted[n].numpy()
    points = np.concatenate([screen[:, :2], marks, fitted])
    points = points[np.isfinite(points).all(1)]
    H, W = frame.shape[:2]
    x0, y0 = np.clip(np.floor(points.min(0)) - 8, 0, [W - 1, H - 1]).astype(int)
    x1, y1 = np.clip(np.ceil(points.max(0)) + 9, [x0 + 1, y0 + 1], [W, H]).astype(int)
    shift = np.array([x0, y0], np.float64)
    normals = (mesh.normals @ camera.rotation_matrix[0].T).numpy()
    shading = splat_shading(screen - np.append(shift, 0.0), normals, (y1 - y0, x1 - x0))
    out = np.array(frame)
    out[y0:y1, x0:x1] = draw_overlay(np.ascontiguousarray(frame[y0:y1, x0:x1]), landmarks=marks - shift,
                                     landmarks_fitted=fitted - shift, shading=shading, mesh_opacity=0.5)
    if n in vt.track.held:
        b = max(2, H // 90)
        out[:b], out[-b:], out[:, :b], out[:, -b:] = HELD_BORDER, HELD_BORDER, HELD_BORDER, HELD_BORDER
    return out


def write_track(vt: VideoTrack, video: str | Path, folder: Path, model, model_name: str, *, max_side: int | None,
                meshes: tuple[str, ...] = (), overlay: bool = True, progress: bool = False) -> None:
    """Write ``params.jsonl``, ``overlay.mp4`` and the meshes into an existing ``folder`` (module docstring, step
    4). ``meshes``: formats among ``obj`` (``meshes/frame_NNNNN.obj``, one posed mesh per frame) and ``glb``
    (``track.glb``: the clip identity's mesh, the expression basis as morph targets, the per-frame expression
    weights and head pose as its animation). The posed meshes are in the view
    frame, mm (GLB: m), +y up: the frame's rotation applied and the model origin placed where the camera puts
    it relative to the image centre."""
    import imageio.v2 as imageio
    import torch
    from tqdm import tqdm

    from morphable.io import Mesh, write_obj
    from morphable.io.atomic import atomic_write

    mesh = OverlayMesh(vt, model)
    faces = model.polygons if model.polygons is not None else model.triangles.tolist()
    N = len(vt.landmarks)
    writer = None
    if overlay:
        # x264's veryfast preset: at the same constant quality, 2.6× less encoder CPU than its default (medium:
        # 2.05 → 0.80 s for obama.mp4) and no larger a file (268 vs 281 kB), so the encoder keeps up with the tracker
        writer = imageio.get_writer(folder / "overlay.mp4", fps=vt.fps, codec="libx264", quality=7,
                                    macro_block_size=2, ffmpeg_log_level="error", output_params=["-preset", "veryfast"])
    if "obj" in meshes:
        (folder / "meshes").mkdir()
    shifts = []
    rotations = vt.track.camera.rotation_matrix if meshes else None  # (N, 3, 3), converted once
    bar = tqdm(desc="writing", unit="frame", total=N, file=sys.stderr, disable=not progress, leave=False)
    try:
        with atomic_write(folder / "params.jsonl", "w") as lines:
            source = vt.frames if vt.frames is not None else (f for f, _ in frames(video, max_side))
            for n, frame in enumerate(source):
                if n >= N:
                    break
                lines.write(json.dumps(frame_params(vt, n, model, model_name, str(video))) + "\n")
                if writer is not None:
                    writer.append_data(overlay_frame(frame, vt, n, mesh))
                if meshes:
                    cam = vt.track.camera
                    R = rotations[n]
                    H, W = frame.shape[:2]
                    s = float(cam.scale[n])
                    shift = torch.tensor([(float(cam.translation[n, 0]) - (W - 1) / 2) / s,
                                          -(float(cam.translation[n, 1]) - (H - 1) / 2) / s, 0.0], dtype=R.dtype)
                    shifts.append(shift.double().numpy())
                if "obj" in meshes:
                    posed = frame_vertices(vt, n, model) @ R.T + shift
                    write_obj(folder / "meshes" / f"frame_{n:05d}.obj", Mesh(vertices=posed.numpy(), faces=faces))
                bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if "glb" in meshes:
        write_track_glb(vt, folder / "track.glb", model, rotations[:len(shifts)].double().numpy(), np.stack(shifts))


def write_track_glb(vt: VideoTrack, path: Path, model, rotations: np.ndarray, shifts: np.ndarray) -> None:
    """``track.glb``: the clip identity's mesh (expression 0), the model's expression basis as morph targets,
    and per frame (at ``n / fps`` s) the expression weights and the head pose ``rotations (N, 3, 3)``,
    ``shifts (N, 3)`` mm — so frame ``n`` shows ``R_n (base + Σ_k β_nk E_k) + shift_n``, the OBJ export's mesh."""
    import torch

    from morphable.io.glb_animation import write_animated_glb

    tr = vt.track
    with torch.no_grad():
        base = model(identity=tr.identity[None].to(model.mean.dtype)).vertices[0].double().numpy()
    if model.n_expression:
        targets = model.expression_basis.double().permute(2, 0, 1).numpy()  # (Ke, V, 3)
        weights = tr.expression[:len(rotations)].double().numpy()
    else:
        targets, weights = np.zeros((0, len(base), 3)), np.zeros((len(rotations), 0))
    write_animated_glb(path, base, model.triangles.numpy(), targets, weights, np.arange(len(rotations)) / vt.fps,
                       rotations=rotations, translations=shifts, target_names=model.expression_names
                       if model.n_expression else None)


@click.command("track")
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--model", "model_name", default="ict", show_default=True,
              help="Registry name (ict, sfm) or a model file.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output folder (replaced as a whole) [default: out/track/<video stem>].")
@click.option("--shape-from", type=click.Choice(["regressor", "landmarks"]), default="regressor", show_default=True,
              help="Identity prior: the shape regressor's prediction averaged over keyframes, or none.")
@click.option("--detector", type=click.Choice(["auto", "hog", "cnn"]), default="auto", show_default=True,
              help="dlib detector for full-frame detections (first frame, and whenever the face is lost).")
@click.option("--max-side", default=MAX_SIDE, show_default=True, type=click.IntRange(64, 100000),
              help="Frames are tracked on a copy with at most this longest side (results in original pixels).")
@click.option("--meshes", type=click.Choice(["none", "obj", "glb"]), multiple=True, default=("none",),
              show_default=True, help="Also write the posed meshes: obj (meshes/frame_NNNNN.obj, one per frame) "
              "and/or glb (track.glb, one animated mesh: expressions as morph targets); repeatable.")
@click.option("--no-flow", is_flag=True, help="Leave out the optical-flow term E_flow.")
@click.option("--no-overlay", is_flag=True, help="Skip overlay.mp4.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info lines (errors still shown).")
def track(video: Path, model_name: str, output: Path | None, shape_from: str, detector: str, max_side: int,
          meshes: tuple[str, ...], no_flow: bool, no_overlay: bool, quiet: bool) -> None:
    """Track the face in VIDEO: one identity, per-frame pose and expression; params.jsonl + overlay.mp4."""
    from morphable.cli.fit import messages
    from morphable.reconstruct import check_output_folder, fresh_folder, load_face_model

    output = check_output_folder(output or Path("out/track") / video.stem)
    open_video(video)[0].close()  # a bad video fails before the model loads
    with messages(quiet):
        model, label = load_face_model(model_name)
        vt = track_video(video, model, label, shape_from=shape_from, max_side=max_side, detector=detector,
                         flow=not no_flow, progress=not quiet)
        with fresh_folder(output) as tmp:
            write_track(vt, video, tmp, model, label, max_side=max_side,
                        meshes=tuple(m for m in meshes if m != "none"), overlay=not no_overlay, progress=not quiet)
    N = len(vt.landmarks)
    click.echo(f"wrote {output}/ ({N} frames, identity from {vt.shape_from}, "
               f"{sum(s != 'tracked' for s in vt.sources)} full detections)")
    if vt.track.held:
        click.echo(f"held (no face found, interpolated from neighbours): {len(vt.track.held)} of {N} frames: "
                   f"{', '.join(map(str, vt.track.held))}", err=True)
