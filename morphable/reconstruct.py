"""Photo in, reconstruction out: the library's entry point (what ``morphable fit``, ``demo`` and the
benchmarks call).

    import morphable
    r = morphable.reconstruct("photo.jpg")          # detect -> regress and/or fit -> texture
    r.save("out")                                   # mesh.obj/.mtl + texture.png, mesh.glb, params.json, ...

Pipeline per photo (each stage timed in :attr:`Reconstruction.timings`):

1. **Working copy.** A photo whose longer side exceeds ``max_side`` (1600 px) is shrunk (PIL, area-aware
   bilinear) and everything below runs on the copy; results are mapped back to the original pixel frame
   with :meth:`Camera.rescaled` / :func:`rescale_pixels` (pixel centres at integers). ``working_scale`` is
   original px per working px.
2. **Landmarks.** A landmark file / array (original pixels), or dlib's 68 points of the face chosen by
   :func:`~morphable.detect.choice.choose_faces` (largest by default; one info line when several faces
   are found).
3. **Shape.** ``shape_from="regressor"``: a learned regressor (:mod:`morphable.nets.genova`, Genova et al.
   CVPR 2018) predicts the identity from the photo and centres the landmark fit's identity prior on it,
   so the landmarks refine a recognisable shape; without a regressor for the model (or with
   ``"landmarks"``) the plain landmark fit (:func:`~morphable.fitting.landmarks.fit_landmarks`, eos-style
   linear alternation with contour landmarks). ``perspective=True`` refines with a pinhole camera, which the
   photometric step then keeps.
4. **Photometric** (optional): inverse rendering started from that fit
   (:func:`~morphable.fitting.photometric.fit_photometric`): SH light, albedo, refined geometry.
5. **Texture**: the photo sampled into the model's UV layout where the surface is seen.

Messages (which face was used, a missing regressor) go to the ``morphable`` logger at INFO level.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from morphable.errors import InputError

if TYPE_CHECKING:
    import torch

    from morphable.geometry.camera import Camera
    from morphable.models.base import MorphableModel

log = logging.getLogger("morphable")

MAX_SIDE = 1600
"""Longest side (px) of the working copy of a photo that detection and fitting run on."""
SHAPE_FROM = ("regressor", "landmarks")
ARRAYS_FILE = "arrays.npz"


# --- the record -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhotometricResult:
    """What inverse rendering adds to a reconstruction.

    Attributes:
        light: ``(9, 3)`` SH radiance coefficients (view frame; ``render/shading.py``).
        albedo: ``(V_r, 3)`` linear-RGB albedo on the fitted region's vertices ``albedo_vertex_ids`` ``(V_r,)``.
        albedo_coefficients: ``(K_alb,)`` for models with an albedo basis, else ``None``.
        albedo_texture: ``(S, S, 3)`` uint8 the albedo in the model's UV layout, or ``None`` (no UVs).
        energies: final named energy terms (and the starting ones under ``initial``).
        energy_history: total energy per optimisation step.
        comparison: ``(h, 3w, 3)`` uint8 photo | rendering | difference at the working size, or ``None``.
        photometric_error: mean RGB distance between rendering and photo over the face pixels.
    """

    light: np.ndarray
    albedo: np.ndarray
    albedo_vertex_ids: np.ndarray
    albedo_coefficients: np.ndarray | None
    albedo_texture: np.ndarray | None
    energies: dict
    energy_history: list[float]
    comparison: np.ndarray | None
    photometric_error: float


@dataclass(frozen=True)
class Reconstruction:
    """One reconstructed face (all pixel quantities in the original photo's frame).

    Attributes:
        model: the model's registry name or file (what :func:`morphable.load_model` takes back).
        image: the photo's path or a name.
        image_size: ``(H, W)`` px of the original photo.
        face: index of the face (largest first) among those found; 0 for given landmarks.
        landmarks_source: ``dlib-hog``, ``dlib-cnn``, the landmark file, or ``array``.
        detection_score: the detector's score, ``None`` for given landmarks.
        shape_from: ``regressor`` or ``landmarks`` (what was actually used).
        identity: ``(K,)`` standardised identity coefficients; expression ``(Ke,)``.
        expression_kind: the model's (``pca`` / ``blendshapes``), ``None`` without expressions.
        camera: batch-of-one :class:`ScaledOrthographic` or :class:`Perspective` into the original photo.
        vertices: ``(V, 3)`` float32 mm, model space.
        landmarks: ``(68, 2)`` px input landmarks (NaN = missing); landmarks_fitted: the model's, projected
            by the final stage.
        rms_px: the final stage's RMS landmark error (px of the original photo); rms_stage: that stage.
        working_scale: original px per px of the working copy (1 when not shrunk).
        vertex_uncertainty: ``(V,)`` mm posterior RMS displacement from the landmark fit, or ``None``.
        texture: ``(S, S, 3)`` uint8 the photo in the model's UV layout, ``None`` without UVs;
            texture_coverage: fractions of the layout seen directly / filled from the mirror side.
        photometric: :class:`PhotometricResult` or ``None``.
        timings: seconds per stage (``load``, ``detect``, ``fit``, ``photometric``, ``texture``).
        photo: ``(h, w, 3)`` uint8 working copy of the photo (for the overlay and report), or ``None``.
        face_model: the :class:`MorphableModel` used (not serialised), or ``None``.
    """

    model: str
    image: str
    image_size: tuple[int, int]
    face: int
    landmarks_source: str
    detection_score: float | None
    shape_from: str
    identity: np.ndarray
    expression: np.ndarray
    expression_kind: str | None
    camera: Camera
    vertices: np.ndarray
    landmarks: np.ndarray
    landmarks_fitted: np.ndarray
    rms_px: float
    rms_stage: str
    working_scale: float = 1.0
    vertex_uncertainty: np.ndarray | None = field(default=None, repr=False)
    texture: np.ndarray | None = field(default=None, repr=False)
    texture_coverage: dict | None = None
    photometric: PhotometricResult | None = field(default=None, repr=False)
    timings: dict = field(default_factory=dict)
    photo: np.ndarray | None = field(default=None, repr=False, compare=False)
    face_model: MorphableModel | None = field(default=None, repr=False, compare=False)

    @property
    def euler_degrees(self) -> dict[str, float]:
        """Yaw, pitch and roll of the head, degrees (``geometry/rotation.py``'s convention)."""
        import torch

        from morphable.geometry.rotation import matrix_to_euler

        yaw, pitch, roll = torch.rad2deg(matrix_to_euler(self.camera.rotation_matrix.double()))[0].tolist()
        return {"yaw": yaw, "pitch": pitch, "roll": roll}

    def working_camera(self):
        """The camera in the working copy's pixels (where :attr:`photo` lives)."""
        return self.camera.rescaled(1.0 / self.working_scale)

    # -- parameters --------------------------------------------------------------------------------------
    def to_params(self) -> dict[str, Any]:
        """The JSON-ready ``params.json`` content (schema :data:`morphable.io.params.PARAMS_VERSION`).

        Small by design: per-vertex arrays go to :meth:`arrays` (``arrays.npz`` beside it).
        """
        from morphable.io.params import PARAMS_SCHEMA, PARAMS_VERSION, json_ready

        H, W = self.image_size
        photometric = None
        if self.photometric is not None:
            p = self.photometric
            photometric = {
                "light": p.light.T.reshape(-1),  # R's 9, then G's, then B's
                "light_layout": "sh9 per channel (R, G, B); see morphable/render/shading.py",
                "albedo": ({"kind": "coefficients", "values": p.albedo_coefficients}
                           if p.albedo_coefficients is not None else {"kind": "per_vertex"}),
                "energies": p.energies,
                "photometric_error": p.photometric_error,
            }
        arrays = self.arrays()
        return json_ready({
            "schema": PARAMS_SCHEMA, "version": PARAMS_VERSION,
            "model": self.model, "image": self.image, "image_size": {"width": W, "height": H},
            "face": self.face, "landmarks_source": self.landmarks_source, "detection_score": self.detection_score,
            "shape_from": self.shape_from,
            "identity": self.identity, "expression": self.expression, "expression_kind": self.expression_kind,
            "camera": self.camera.to_dict(), "euler_degrees": self.euler_degrees,
            "landmarks": self.landmarks, "landmarks_fitted": self.landmarks_fitted,
            "rms_px": self.rms_px, "rms_stage": self.rms_stage, "working_scale": self.working_scale,
            "texture_coverage": self.texture_coverage, "timings": self.timings,
            "arrays": ARRAYS_FILE if arrays else None, "photometric": photometric,
        })

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-vertex arrays kept out of ``params.json`` (``arrays.npz``): ``vertex_uncertainty`` ``(V,)``,
        ``albedo`` ``(V_r, 3)`` and ``albedo_vertex_ids`` ``(V_r,)`` (per-vertex photometric albedo)."""
        out = {}
        if self.vertex_uncertainty is not None:
            out["vertex_uncertainty"] = np.asarray(self.vertex_uncertainty, np.float32)
        if self.photometric is not None and self.photometric.albedo_coefficients is None:
            out["albedo"] = np.asarray(self.photometric.albedo, np.float32)
            out["albedo_vertex_ids"] = np.asarray(self.photometric.albedo_vertex_ids, np.int32)
        return out

    @classmethod
    def from_params(cls, params: dict[str, Any], arrays: dict[str, np.ndarray] | None = None, *,
                    model: MorphableModel | None = None, path: str | PathLike = "<params>") -> "Reconstruction":
        """Rebuild a record from :meth:`to_params` (and :meth:`arrays`); older dialects are upgraded.

        The vertices are the model evaluated at the stored coefficients (``model``, or the one the params
        name, loaded). Texture, photo and comparison images are not part of the parameters (``None``).
        """
        import torch

        from morphable.geometry.camera import camera_from_dict
        from morphable.io.params import upgrade_params

        p = upgrade_params(params, path)
        arrays = arrays or {}
        if model is None:
            from morphable import load_model

            model = load_model(p["model"])
        dtype = model.mean.dtype
        camera = camera_from_dict(p["camera"], dtype)
        identity = _coefficients(p.get("identity"), model.identity_basis.shape[-1], "identity", path)
        expression = _coefficients(p.get("expression"), model.n_expression, "expression", path)
        with torch.no_grad():
            vertices = model(identity=torch.as_tensor(identity, dtype=dtype)[None],
                             expression=torch.as_tensor(expression, dtype=dtype)[None] if model.n_expression else None
                             ).vertices[0].float().numpy()
        photometric = None
        if p.get("photometric"):
            q = p["photometric"]
            albedo = q.get("albedo") or {}
            coefficients = np.asarray(albedo["values"], np.float64) if albedo.get("kind") == "coefficients" else None
            photometric = PhotometricResult(
                light=np.asarray(q["light"], np.float64).reshape(3, 9).T,
                albedo=np.asarray(arrays.get("albedo", np.zeros((0, 3))), np.float64),
                albedo_vertex_ids=np.asarray(arrays.get("albedo_vertex_ids", np.zeros(0)), np.int64),
                albedo_coefficients=coefficients, albedo_texture=None, energies=q.get("energies", {}),
                energy_history=[], comparison=None, photometric_error=float(q.get("photometric_error", np.nan)))
        size = p["image_size"]
        return cls(
            model=p["model"], image=str(p.get("image", "")), image_size=(int(size["height"]), int(size["width"])),
            face=int(p.get("face") or 0), landmarks_source=str(p.get("landmarks_source", "")),
            detection_score=p.get("detection_score"), shape_from=str(p.get("shape_from", "landmarks")),
            identity=identity, expression=expression, expression_kind=p.get("expression_kind"),
            camera=camera, vertices=vertices,
            landmarks=_points(p.get("landmarks")), landmarks_fitted=_points(p.get("landmarks_fitted")),
            rms_px=float(p.get("rms_px", np.nan)), rms_stage=str(p.get("rms_stage", "landmarks")),
            working_scale=float(p.get("working_scale", 1.0)),
            vertex_uncertainty=arrays.get("vertex_uncertainty"), texture_coverage=p.get("texture_coverage"),
            photometric=photometric, timings=dict(p.get("timings") or {}), face_model=model)

    @classmethod
    def load(cls, folder: str | PathLike, *, model: MorphableModel | None = None) -> "Reconstruction":
        """Read a folder written by :meth:`save` (``params.json``, ``arrays.npz``, ``texture.png``)."""
        from morphable.io import read_image
        from morphable.io.params import read_fit_params
        from morphable.io.safe_npz import read_npz

        folder = Path(folder)
        params = read_fit_params(folder / "params.json")  # checked before its "arrays" name is opened
        arrays = {}
        if params.get("arrays"):
            arrays = read_npz(folder / str(params["arrays"]), error=InputError)
        rec = cls.from_params(params, arrays, model=model, path=folder / "params.json")
        texture = read_image(folder / "texture.png") if (folder / "texture.png").is_file() else None
        return replace(rec, texture=texture)

    # -- outputs -----------------------------------------------------------------------------------------
    def overlay(self) -> np.ndarray | None:
        """The working-size photo with the fitted mesh (shaded, 50 %), input (green) and fitted (red)
        landmarks; ``None`` without :attr:`photo`."""
        if self.photo is None:
            return None
        import torch

        from morphable.geometry.camera import rescale_pixels
        from morphable.viz.overlay import draw_overlay, shade_mesh

        model = self._model()
        camera = self.working_camera()
        vertices = torch.as_tensor(self.vertices, dtype=camera.rotation.dtype)[None]
        screen = camera.project_with_depth(vertices)[0].numpy()
        shading = shade_mesh(screen, camera.transform(vertices)[0].numpy(), _region_triangles(model, "face"),
                             self.photo.shape[:2])
        f = 1.0 / self.working_scale
        return draw_overlay(self.photo, landmarks=rescale_pixels(self.landmarks, f),
                            landmarks_fitted=rescale_pixels(self.landmarks_fitted, f), shading=shading,
                            mesh_opacity=0.5)

    def save(self, folder: str | PathLike, *, report: bool = True) -> Path:
        """Write every output into ``folder``, replacing it as a whole (no stale files from earlier runs).

        Files: ``mesh.obj`` + ``mesh.mtl`` (+ ``texture.png``; with photometric results the mesh carries
        ``albedo.png``), ``mesh.glb`` (texture embedded), ``params.json`` (+ ``arrays.npz``),
        ``overlay.png`` (working size), ``report.html``, and with photometric results ``albedo.png``,
        ``comparison.png``, ``energy.png``. Everything is first written to a temporary folder beside it.

        Raises:
            InputError: ``folder`` is an existing file, or cannot be written.
        """
        folder = Path(folder)
        with fresh_folder(folder) as tmp:
            write_outputs(self, tmp, report=report)
        return folder

    def _model(self) -> MorphableModel:
        if self.face_model is not None:
            return self.face_model
        from morphable import load_model

        return load_model(self.model)


def _coefficients(values, size: int, key: str, path) -> np.ndarray:
    out = np.zeros(size, np.float64)
    if values is None:
        return out
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) > size:
        raise InputError(path, f"{key} has {len(values)} coefficients, the model only {size}")
    out[:len(values)] = values
    return out


def _points(values) -> np.ndarray:
    if values is None:
        return np.full((68, 2), np.nan)
    return np.array([[np.nan, np.nan] if p is None else p for p in values], np.float64).reshape(-1, 2)


# --- writing --------------------------------------------------------------------------------------------
def check_output_folder(folder: str | PathLike) -> Path:
    """``folder`` as a Path, after checking it can become an output folder (not an existing file, and
    under no existing file). Call it before a long fit so a bad ``-o`` fails at once.

    Raises:
        InputError: naming the file in the way.
    """
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise InputError(part, "is a file, not a folder (choose another output folder)")
    return folder


@contextmanager
def fresh_folder(folder: Path):
    """Yield a new temporary folder beside ``folder``; on success it replaces ``folder`` (an earlier
    folder's files are all gone), on failure it is removed and ``folder`` is left as it was."""
    from morphable.io.atomic import _umask

    folder = check_output_folder(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    except OSError as err:
        raise InputError(folder, f"cannot write: {err.strerror or err}") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
            folder.rename(old / "previous")
        try:
            tmp.rename(folder)
        except OSError:
            if old is not None:  # put the earlier folder back
                (old / "previous").rename(folder)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise InputError(folder, f"cannot write: {err.strerror or err}") from None
        raise


def write_outputs(rec: Reconstruction, folder: Path, *, report: bool = True) -> None:
    """Write :meth:`Reconstruction.save`'s files into an existing ``folder`` (no replacing)."""
    import torch

    from morphable.geometry.camera import rescale_pixels
    from morphable.io import write_image
    from morphable.io.params import write_params
    from morphable.viz.comparison import energy_curve

    model = rec._model()
    vertices = torch.as_tensor(rec.vertices)
    if rec.photometric is not None and rec.photometric.albedo_texture is not None:
        write_model_mesh(folder, model, vertices, rec.photometric.albedo_texture, texture_name="albedo.png")
        if rec.texture is not None:
            write_image(folder / "texture.png", rec.texture)
    else:
        write_model_mesh(folder, model, vertices, rec.texture)
    write_model_glb(folder / "mesh.glb", model, vertices, rec.texture)
    arrays = rec.arrays()
    if arrays:
        from morphable.io.atomic import atomic_write

        with atomic_write(folder / ARRAYS_FILE, "wb") as f:
            np.savez_compressed(f, **arrays)
    write_params(folder / "params.json", rec.to_params())
    images: list[tuple[str, np.ndarray]] = []
    marks = rescale_pixels(rec.landmarks, 1.0 / rec.working_scale)  # in the working copy's pixels
    if rec.photo is not None:
        images.append(("photo", rec.photo))
        overlay = rec.overlay()
        write_image(folder / "overlay.png", overlay)
        images.append(("overlay: fitted mesh, input (green) and fitted (red) landmarks", overlay))
        crop = _face_crop(overlay, marks)
        if crop is not None:
            images.append(("overlay, around the face", crop))
    if rec.photometric is not None:
        p = rec.photometric
        if p.comparison is not None:
            write_image(folder / "comparison.png", p.comparison)
            images.append(("photo | rendering | difference", p.comparison))
            panels = [_face_crop(panel, marks, size=320) for panel in np.split(p.comparison, 3, axis=1)]
            if all(panel is not None for panel in panels):
                images.append(("photo | rendering | difference, around the face", np.concatenate(panels, axis=1)))
        if p.energy_history:
            curve = energy_curve(p.energy_history)
            write_image(folder / "energy.png", curve)
            images.append(("photometric energy per step", curve))
    if report:
        from morphable.viz.report import write_report
        from morphable.viz.turntable import turntable

        tris = _region_triangles(model, "face")
        images.append(("turntable (our renderer)", turntable(vertices, torch.as_tensor(tris))))
        if rec.texture is not None:
            images.append(("texture", rec.texture))
        facts = {"model": rec.model, "image": rec.image, "image size": f"{rec.image_size[1]} x {rec.image_size[0]} px",
                 "face": f"{rec.face} ({rec.landmarks_source}"
                         + (f", score {rec.detection_score:.2f})" if rec.detection_score is not None else ")"),
                 "shape from": rec.shape_from, "RMS landmark error": f"{rec.rms_px:.2f} px ({rec.rms_stage})",
                 "head pose": ", ".join(f"{k} {v:.1f}°" for k, v in rec.euler_degrees.items()),
                 "working scale": f"{rec.working_scale:.3g}"}
        if rec.photometric is not None:
            facts["photometric error"] = f"{rec.photometric.photometric_error:.4f}"
        write_report(folder / "report.html", title=f"morphable: {Path(rec.image).name or 'reconstruction'}",
                     facts=facts, images=images,
                     coefficients={"identity": rec.identity.tolist(), "expression": rec.expression.tolist()},
                     timings=rec.timings)


def _face_crop(image: np.ndarray, landmarks: np.ndarray, *, margin: float = 0.35, size: int = 480) -> np.ndarray | None:
    """The square around the landmarks (``margin`` of their extent added on each side), scaled to ``size``
    px; ``None`` without finite landmarks."""
    from PIL import Image

    points = landmarks[np.isfinite(landmarks).all(1)]
    if not len(points):
        return None
    lo, hi = points.min(0), points.max(0)
    half = (hi - lo).max() * (0.5 + margin)
    cx, cy = (lo + hi) / 2
    H, W = image.shape[:2]
    box = [int(max(0, cx - half)), int(max(0, cy - half)), int(min(W, cx + half + 1)), int(min(H, cy + half + 1))]
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return None
    crop = Image.fromarray(np.ascontiguousarray(image)).crop(box)
    f = size / max(crop.size)
    return np.asarray(crop.resize((max(1, round(crop.size[0] * f)), max(1, round(crop.size[1] * f))), Image.LANCZOS))


def _region_triangles(model: MorphableModel, region: str) -> np.ndarray:
    """``(F', 3)`` the model's triangles inside ``region`` (all of them when the model has no such region)."""
    from morphable.geometry.mesh import submesh

    ids = model.regions.get(region)
    if ids is None:
        return model.triangles.cpu().numpy()
    cut = submesh(model.triangles, ids, model.n_vertices)
    return model.triangles[cut.triangle_ids].cpu().numpy()


def _mesh_faces(model: MorphableModel, texture: np.ndarray | None):
    """The model's polygons (quads kept) with UVs; faces outside the texture's tile point at one flat texel.

    Returns ``(faces, uv (T, 2) or None, uv_faces or None, texture)``; ``texture`` gets the mean colour in
    its top-left texel when some faces (ICT's eyes, teeth, back of the head: other UV tiles) use it.
    """
    from morphable.fitting.texture import textured_faces

    if model.polygons is not None:
        faces, uv_faces = model.polygons, model.polygon_uvs
    else:
        faces, uv_faces = model.triangles.tolist(), None if model.uv_triangles is None else model.uv_triangles.tolist()
    if texture is None or model.uv is None:
        return faces, None, None, None
    uv = model.uv.detach().cpu().numpy()
    keep = textured_faces(model, faces, uv_faces).cpu().numpy()
    if not keep.all():
        texture = texture.copy()
        texture[0, 0] = texture.reshape(-1, 3).mean(0).round()
        flat = len(uv)
        S = texture.shape[0]
        uv = np.concatenate([uv, [[0.5 / S, 1 - 0.5 / S]]])  # the centre of texel (0, 0)
        corner_uvs = uv_faces if uv_faces is not None else faces
        uv_faces = [list(t) if k else [flat] * len(t) for t, k in zip(corner_uvs, keep)]
    return faces, uv, uv_faces, texture


def write_model_mesh(folder: Path, model: MorphableModel, vertices, texture: np.ndarray | None,
                     texture_name: str = "texture.png") -> None:
    """``mesh.obj`` + ``mesh.mtl`` referencing ``texture_name`` (written too); the model's polygons and UVs
    kept. Without a texture (or UVs) only the geometry is written."""
    from morphable.io import Mesh, write_obj
    from morphable.io.atomic import atomic_write

    faces, uv, uv_faces, texture = _mesh_faces(model, texture)
    if texture is None:
        write_obj(folder / "mesh.obj", Mesh(vertices=np.asarray(vertices, np.float64), faces=faces))
        return
    write_obj(folder / "mesh.obj", Mesh(vertices=np.asarray(vertices, np.float64), faces=faces, uv=uv,
                                        uv_faces=uv_faces, texture=texture))
    # write_obj names the texture after the OBJ (mesh.png); our output layout names it texture_name
    (folder / "mesh.png").replace(folder / texture_name)
    mtl = (folder / "mesh.mtl").read_text().replace("map_Kd mesh.png", f"map_Kd {texture_name}")
    with atomic_write(folder / "mesh.mtl", "w") as f:
        f.write(mtl)


def write_model_glb(path: Path, model: MorphableModel, vertices, texture: np.ndarray | None) -> None:
    """``mesh.glb``: the fitted mesh (metres) with the texture embedded."""
    from morphable.io import Mesh
    from morphable.io.glb import write_glb

    faces, uv, uv_faces, texture = _mesh_faces(model, texture)
    write_glb(path, Mesh(vertices=np.asarray(vertices, np.float64), faces=faces, uv=uv, uv_faces=uv_faces,
                         texture=texture))


def save_all(recs: Sequence[Reconstruction], folder: str | PathLike, *, report: bool = True) -> list[Path]:
    """Save several faces of one photo as ``folder/face<i>/`` (``i`` = :attr:`Reconstruction.face`),
    replacing ``folder`` as a whole. Returns the face folders."""
    folder = Path(folder)
    with fresh_folder(folder) as tmp:
        for rec in recs:
            (tmp / f"face{rec.face}").mkdir()
            write_outputs(rec, tmp / f"face{rec.face}", report=report)
    return [folder / f"face{rec.face}" for rec in recs]


# --- inputs ---------------------------------------------------------------------------------------------
@dataclass
class FaceInput:
    """One face to reconstruct, in the working copy of its photo.

    Attributes:
        photo: ``(h, w, 3)`` uint8 working copy; image_size: ``(H, W)`` of the original photo.
        working_scale: original px per working px.
        landmarks: ``(68, 2)`` working px, NaN = missing.
    """

    photo: np.ndarray
    image: str
    image_size: tuple[int, int]
    working_scale: float
    landmarks: np.ndarray
    source: str
    score: float | None
    index: int


def working_copy(image: np.ndarray, max_side: int | None = MAX_SIDE) -> tuple[np.ndarray, float]:
    """The photo shrunk so its longer side is at most ``max_side`` px, and original px per copy px."""
    H, W = image.shape[:2]
    if max_side is None or max(H, W) <= max_side:
        return image, 1.0
    from PIL import Image

    f = max(H, W) / max_side
    size = (max(1, round(W / f)), max(1, round(H / f)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))  # area-aware when shrinking
    return small, (W / size[0]) if W >= H else (H / size[1])


def _as_photo(image, name: str | None) -> tuple[np.ndarray, str]:
    """``(H, W, 3)`` uint8 from a path or an array (uint8, or floats in [0, 1])."""
    from morphable.io import read_image

    if isinstance(image, str | PathLike):
        return read_image(image), name or str(image)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"reconstruct: expected an (H, W, 3) image or a path, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(array[..., :3]), name or "array"


def find_faces(image, *, landmarks=None, face: str | int = "largest", detector: str = "auto",
               max_side: int | None = MAX_SIDE, name: str | None = None) -> list[FaceInput]:
    """Read a photo, make its working copy and find the faces to reconstruct.

    Args:
        image: path or ``(H, W, 3)`` array.
        landmarks: ``None`` (detect), a landmark file (iBUG ``.pts``/JSON), or a ``(68, 2)`` array in the
            original photo's pixels.
        face: ``largest``, ``best``, ``all`` or an index (:func:`~morphable.detect.choice.choose_faces`).
    Raises:
        InputError: unreadable photo or landmark file, or no face found (naming the photo).
    """
    from morphable.detect.choice import detect_faces, parse_face
    from morphable.geometry.camera import rescale_pixels

    face = parse_face(face)
    photo, label = _as_photo(image, name)
    size = photo.shape[:2]
    small, scale = working_copy(photo, max_side)
    del photo
    if landmarks is not None:
        if isinstance(landmarks, str | PathLike):
            from morphable.detect.formats import read_landmarks

            points, source = read_landmarks(landmarks), str(landmarks)
        else:
            points, source = np.asarray(landmarks, np.float64), "array"
            if points.shape != (68, 2):
                raise ValueError(f"reconstruct: expected (68, 2) landmarks, got {points.shape}")
        return [FaceInput(small, label, size, scale, rescale_pixels(points, 1.0 / scale), source, None, 0)]
    try:
        chosen, line = detect_faces(small, face, detector=detector)
    except ValueError as err:  # an index past the faces found
        raise InputError(label, str(err)) from None
    if not chosen:
        raise InputError(label, "no face found")
    if line:
        log.info("%s: %s", label, line)
    return [FaceInput(small, label, size, scale, d.landmarks, f"dlib-{d.detector}", d.score, i) for i, d in chosen]


# --- fitting --------------------------------------------------------------------------------------------
def cached_texel_map(model: MorphableModel, size: int):
    """The model's :func:`~morphable.fitting.texture.model_texel_map`, kept in ``MORPHABLE_HOME/texel_maps``.

    Rasterising a UV layout costs seconds (ICT: 18 k triangles) and depends only on the layout, so it
    is stored once per layout and size, under the sha256 of the UVs, UV triangles, textured-triangle
    mask and size. A cache file that cannot be read is rebuilt.
    """
    import hashlib

    import torch

    from morphable.fitting.texture import TexelMap, model_texel_map, textured_triangles
    from morphable.io.atomic import atomic_write
    from morphable.io.safe_npz import read_npz
    from morphable.models.registry import home

    uv_tris = model.uv_triangles if model.uv_triangles is not None else model.triangles
    digest = hashlib.sha256()
    for part in (model.uv.detach().cpu().double(), uv_tris.cpu(), textured_triangles(model).cpu()):
        digest.update(np.ascontiguousarray(part.numpy()).tobytes())
    digest.update(str(size).encode())
    path = home() / "texel_maps" / f"{digest.hexdigest()[:32]}.npz"
    try:
        f = read_npz(path, error=InputError, keys=("triangle_id", "barycentric"))
        return TexelMap(torch.from_numpy(f["triangle_id"]).long(), torch.from_numpy(f["barycentric"]))
    except (InputError, KeyError):
        pass
    texel_map = model_texel_map(model, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        np.savez(f, triangle_id=texel_map.triangle_id.numpy().astype(np.int32),
                 barycentric=texel_map.barycentric.numpy())
    return texel_map


def _stacked_photos(faces: Sequence[FaceInput], dtype) -> torch.Tensor:
    """The faces' working photos as one ``(B, h, w, 3)`` batch, zero-padded right/bottom to the largest
    (padding keeps every photo's pixel coordinates): in [0, 1] in ``dtype``, or with ``dtype=None`` the
    uint8 pixels (no copy for a single photo; the regressor converts only the face's crop)."""
    import torch

    if dtype is None and len(faces) == 1:
        photo = faces[0].photo
        return torch.from_numpy(photo if photo.flags.writeable else np.array(photo))[None]
    H = max(f.photo.shape[0] for f in faces)
    W = max(f.photo.shape[1] for f in faces)
    out = torch.zeros(len(faces), H, W, 3, dtype=torch.uint8 if dtype is None else dtype)
    for i, f in enumerate(faces):
        pixels = torch.from_numpy(np.array(f.photo))
        out[i, :f.photo.shape[0], :f.photo.shape[1]] = pixels if dtype is None else pixels.to(dtype) / 255
    return out


def _regressor(model_name: str):
    """The identity regressor for ``model_name``, or ``None`` (with one info line) when there is none."""
    from morphable.nets.genova import has_regressor, load_regressor

    if not has_regressor(model_name):
        log.info("no shape regressor for model %s: fitting the shape to the landmarks only", model_name)
        return None
    return load_regressor(model_name)


def _landmark_fit(model, model_name: str, faces: Sequence[FaceInput], landmarks, *, shape_from: str,
                  multi_view: bool, perspective: bool, iterations: int, method: str = "fit"):
    """The landmark fit (regressor prior where available), or with ``method`` ``regress`` / ``regress+fit``
    the shipped RingNet (:func:`morphable.nets.ringnet.fit_with_ringnet`), ``coarse`` / ``coarse+fit`` the
    shipped CoarseNet (:func:`morphable.nets.coarse.fit_with_coarse`). Returns ``(fit, shape_from used)``."""
    from morphable.fitting.landmarks import fit_landmarks

    if method == "sir":  # SIR hook (nets/sir.py): the landmark fit with its prior centred at the SIR shape
        import torch

        from morphable.nets.sir import fit_with_sir, shipped_sir

        photos = [torch.from_numpy(np.array(f.photo)).to(landmarks.dtype) / 255 for f in faces]
        return fit_with_sir(model, shipped_sir(model_name), photos, landmarks, iterations=iterations), "sir"
    if method in ("coarse", "coarse+fit"):  # Zhang's CoarseNet (nets/coarse.py) on each face's chip
        from morphable.nets.coarse import fit_with_coarse, shipped_coarse

        return fit_with_coarse(model, shipped_coarse(model_name), [f.photo for f in faces], landmarks,
                               method=method, iterations=iterations), "coarse"
    if method != "fit":
        import torch

        from morphable.nets.ringnet import fit_with_ringnet, shared_decoder, shipped_ringnet

        photos = [torch.from_numpy(np.array(f.photo)) for f in faces]  # uint8: the network reads the box only
        return fit_with_ringnet(model, shipped_ringnet(model_name), shared_decoder(model), photos, landmarks,
                                method=method, iterations=iterations), "ringnet"
    if multi_view:
        from morphable.fitting.multi import fit_landmarks_multi

        if shape_from == "regressor":
            log.info("--multi-view fits one identity to the landmarks of all photos (no regressor prior)")
        return fit_landmarks_multi(model, landmarks, iterations=iterations), "landmarks"
    used, kwargs = "landmarks", {}
    reg = _regressor(model_name) if shape_from == "regressor" else None
    if reg is not None:
        mu = reg.predict_identity(_stacked_photos(faces, None), landmarks)
        kwargs = {"identity_prior_mean": mu, "lambda_identity": reg.prior_precision}
        used = "regressor"
    fit = fit_landmarks(model, landmarks, iterations=iterations, **kwargs)
    if perspective:
        from morphable.fitting.perspective import refine_perspective

        fit = _PerspectiveWithIds(refine_perspective(model, fit, landmarks, faces[0].photo.shape[:2], **kwargs), fit)
    return fit, used


class _PerspectiveWithIds:
    """A :class:`PerspectiveFit` with its landmark fit's correspondences and uncertainty."""

    def __init__(self, pfit, base):
        self.identity, self.expression, self.camera = pfit.identity, pfit.expression, pfit.camera
        self.vertices, self.landmarks_fitted = pfit.vertices, pfit.landmarks_fitted
        self.landmark_ids, self.vertex_uncertainty = base.landmark_ids, base.vertex_uncertainty


def _rms(landmarks: np.ndarray, fitted: np.ndarray, ids: np.ndarray) -> float:
    """RMS distance over the landmarks with an input point, a fitted point and a correspondence."""
    ok = np.isfinite(landmarks).all(1) & np.isfinite(fitted).all(1) & (ids >= 0)
    if not ok.any():
        return float("nan")
    return float(np.sqrt(((landmarks[ok] - fitted[ok]) ** 2).sum(1).mean()))


def _camera_slice(camera, b: int):
    """Camera ``b`` of a batched camera, as a batch of one."""
    from dataclasses import fields

    return replace(camera, **{f.name: getattr(camera, f.name)[b:b + 1] for f in fields(camera)})


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


def _depth_size_problem(depth: np.ndarray, face: FaceInput) -> str | None:
    """What is wrong when ``depth`` ``(H, W)`` is not the size of ``face``'s original photo (RGB-D depth must be
    registered with the colour image), else ``None``."""
    if tuple(depth.shape) == tuple(face.image_size):
        return None
    return (f"depth image is {depth.shape[1]}×{depth.shape[0]} px but {face.image} is "
            f"{face.image_size[1]}×{face.image_size[0]}: it must be registered with the photo")


def check_depth_size(depth: np.ndarray, face: FaceInput, path: str | PathLike) -> None:
    """Raise :class:`InputError` naming the depth file ``path`` when ``depth`` is not registered with ``face``'s
    photo (:func:`_depth_size_problem`)."""
    problem = _depth_size_problem(depth, face)
    if problem:
        raise InputError(path, problem)


def working_depth(faces: Sequence[FaceInput], depths: Sequence[np.ndarray], focal: float,
                  principal_point: tuple[float, float] | None, dtype):
    """Depth images registered with the faces' photos, moved to the working copies' pixels: a
    :class:`~morphable.fitting.rgbd.RegisteredDepth` whose rows line up with :func:`_stacked_photos`.

    Args:
        faces: the faces (their working copies); depths: per face, ``(H, W)`` mm (NaN = hole) on the original
            photo's pixel grid (``face.image_size``); focal, principal_point: the pinhole in the original
            photo's pixels (default principal point: the photo's centre).
    Raises:
        ValueError: a depth image whose size is not its photo's, or faces whose photos were shrunk by different
            factors or have different principal points (one pinhole serves the batch).
    """
    import cv2
    import torch

    from morphable.fitting.rgbd import RegisteredDepth
    from morphable.geometry.camera import rescale_pixels

    H = max(f.photo.shape[0] for f in faces)
    W = max(f.photo.shape[1] for f in faces)
    out = torch.full((len(faces), H, W), float("nan"), dtype=dtype)
    pinholes = set()
    for i, (f, d) in enumerate(zip(faces, depths, strict=True)):
        problem = _depth_size_problem(d, f)
        if problem:
            raise ValueError(problem)
        h, w = f.photo.shape[:2]
        small = d if (h, w) == tuple(d.shape) else cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
        out[i, :h, :w] = torch.from_numpy(np.ascontiguousarray(small)).to(dtype)
        c = principal_point if principal_point is not None else ((f.image_size[1] - 1) / 2, (f.image_size[0] - 1) / 2)
        pinholes.add((focal / f.working_scale,
                      tuple(float(x) for x in rescale_pixels(np.asarray(c, np.float64), 1 / f.working_scale))))
    if len(pinholes) > 1:
        raise ValueError("depth: the photos' pinholes differ in the working copies (photos of different sizes); "
                         "fit them one at a time")
    (f_w, c_w), = pinholes
    return RegisteredDepth(out, f_w, c_w)


def _photometric(model, faces, landmarks, fit, *, multi_view: bool, config, progress: bool, depth=None):
    """Inverse rendering from ``fit``, with a tqdm bar over its steps (and E_geo against ``depth``, a
    :class:`~morphable.fitting.rgbd.RegisteredDepth` in the working pixels, when given)."""
    from tqdm import tqdm

    from morphable.fitting.photometric import PhotometricConfig, fit_photometric

    config = config or PhotometricConfig()
    offsets = np.cumsum([0] + [s.iterations for s in config.schedule])
    bar = tqdm(total=int(offsets[-1]), desc="photometric", unit="step", disable=not progress, file=sys.stderr,
               leave=False)
    state = {"stage": -1}

    def on_step(index, stage, terms):
        if index != state["stage"]:
            state["stage"] = index
            bar.n = int(offsets[index])
            bar.set_description(f"photometric {index + 1}/{len(config.schedule)} {stage.size}px "
                                f"{'+'.join(stage.variables)}")
        bar.update(1)

    try:
        return fit_photometric(model, _stacked_photos(faces, landmarks.dtype), landmarks, init=fit,
                               shared_identity=multi_view, config=config, depth=depth, on_step=on_step)
    finally:
        bar.n = bar.total
        bar.close()


def reconstruct_faces(faces: Sequence[FaceInput], model: MorphableModel, model_name: str, *,
                      shape_from: str = "regressor", multi_view: bool = False, perspective: bool = False,
                      photometric: bool = False, photometric_config=None, iterations: int = 5,
                      texture_size: int = 512, progress: bool = False,
                      timings: dict[str, float] | None = None, method: str = "fit",
                      depths: Sequence[np.ndarray] | None = None, focal: float | None = None,
                      principal_point: tuple[float, float] | None = None) -> list[Reconstruction]:
    """Fit a batch of faces (one photo's faces, or all views of one person with ``multi_view``);
    ``method``: ``fit`` (landmark fit), ``regress`` or ``regress+fit`` (RingNet), ``sir`` (SIR prior + fit),
    ``coarse`` or ``coarse+fit`` (CoarseNet; see
    :func:`_landmark_fit`). With ``depths`` (per face, the depth image registered with its photo, mm, NaN =
    holes; :func:`~morphable.io.depth.read_depth`) and the sensor's ``focal`` / ``principal_point`` (original
    photo px), the photometric fit adds E_geo and fits that pinhole (:func:`working_depth`).

    Raises:
        ValueError: a face cannot be fitted (e.g. fewer than 4 usable landmarks), or depth given without
            ``photometric`` or ``focal``, or not registered with its photo.
    """
    import torch

    from morphable.fitting.photometric import photometric_error
    from morphable.fitting.texture import extract_texture
    from morphable.geometry.camera import rescale_pixels
    from morphable.viz.comparison import side_by_side

    if shape_from not in SHAPE_FROM:
        raise ValueError(f"reconstruct: shape_from must be one of {SHAPE_FROM}, got {shape_from!r}")
    if depths is not None and (not photometric or focal is None):
        raise ValueError("reconstruct: depth images need the photometric fit and the sensor's focal length")
    timings = dict(timings or {})
    dtype = model.mean.dtype
    depth = None if depths is None else working_depth(faces, depths, focal, principal_point, dtype)
    landmarks = torch.as_tensor(np.stack([f.landmarks for f in faces]), dtype=dtype)
    t0 = time.perf_counter()
    fit, used = _landmark_fit(model, model_name, faces, landmarks, shape_from=shape_from, multi_view=multi_view,
                              perspective=perspective, iterations=iterations, method=method)
    timings["fit"] = time.perf_counter() - t0
    uncertainty = fit.vertex_uncertainty.detach().cpu().numpy()
    ids = fit.landmark_ids.cpu().numpy()
    pfit = None
    if photometric:
        t0 = time.perf_counter()
        pfit = _photometric(model, faces, landmarks, fit, multi_view=multi_view, config=photometric_config,
                            progress=progress, depth=depth)
        timings["photometric"] = time.perf_counter() - t0
    geometry = pfit if pfit is not None else fit
    texel_map = cached_texel_map(model, texture_size) if model.uv is not None else None
    out = []
    for b, face in enumerate(faces):
        t0 = time.perf_counter()
        cam_w = _camera_slice(geometry.camera, b)
        vertices = geometry.vertices[b:b + 1].detach()
        if pfit is not None:  # the landmark fit's correspondences, re-projected through the refined geometry
            index = torch.as_tensor(ids[b]).clamp_min(0)
            fitted_w = cam_w.project(vertices[:, index])[0].detach().cpu().numpy()
            fitted_w[ids[b] < 0] = np.nan
        else:
            fitted_w = fit.landmarks_fitted[b].detach().cpu().numpy()
        texture = coverage = None
        if texel_map is not None:
            tex = extract_texture(model, vertices, cam_w, face.photo, texel_map=texel_map)
            texture = tex.texture
            covered = max(1, int(tex.covered.sum()))
            coverage = {"visible": float(tex.visible.sum()) / covered, "mirrored": float(tex.mirrored.sum()) / covered}
        result = None
        if pfit is not None:
            h, w = face.photo.shape[:2]
            photo = torch.from_numpy(np.array(face.photo)).to(dtype) / 255
            render, alpha = pfit.render[b, :h, :w], pfit.alpha[b, :h, :w]
            result = PhotometricResult(
                light=pfit.light[b].cpu().double().numpy(), albedo=pfit.albedo[b].cpu().double().numpy(),
                albedo_vertex_ids=pfit.region_vertices.cpu().numpy(),
                albedo_coefficients=(None if pfit.albedo_coefficients is None
                                     else pfit.albedo_coefficients[b].cpu().double().numpy()),
                albedo_texture=None if texel_map is None else _albedo_texture(model, pfit, b, texel_map),
                energies=pfit.energies, energy_history=[h_["total"] for h_ in pfit.history],
                comparison=side_by_side(photo.double().numpy(), render.cpu().double().numpy(),
                                        alpha.cpu().double().numpy()),
                photometric_error=photometric_error(render[None], photo[None], alpha[None]))
        s = face.working_scale
        landmarks_px = rescale_pixels(face.landmarks, s)
        fitted_px = rescale_pixels(fitted_w, s)
        identity = geometry.identity[b if geometry.identity.shape[0] > 1 else 0]
        this = dict(timings)
        this["texture"] = time.perf_counter() - t0
        out.append(Reconstruction(
            model=model_name, image=face.image, image_size=tuple(face.image_size), face=face.index,
            landmarks_source=face.source, detection_score=face.score, shape_from=used,
            identity=identity.detach().cpu().double().numpy(),
            expression=geometry.expression[b].detach().cpu().double().numpy(),
            expression_kind=model.expression_kind if model.n_expression else None,
            camera=cam_w.rescaled(s), vertices=vertices[0].float().cpu().numpy(),
            landmarks=landmarks_px, landmarks_fitted=fitted_px,
            rms_px=_rms(landmarks_px, fitted_px, ids[b]), rms_stage="photometric" if pfit is not None else "landmarks",
            working_scale=s, vertex_uncertainty=uncertainty[b], texture=texture, texture_coverage=coverage,
            photometric=result, timings=this, photo=face.photo, face_model=model))
    return out


def load_face_model(model: str | MorphableModel) -> tuple[MorphableModel, str]:
    """The model and the name to record for it (what :func:`morphable.load_model` takes back)."""
    from morphable import load_model

    if isinstance(model, str | PathLike):
        return load_model(str(model)), str(model)
    return model, model.name


def reconstruct(image, model: str | MorphableModel = "ict", *, landmarks=None, face: str | int = "largest",
                shape_from: str = "regressor", photometric: bool = False, perspective: bool = False,
                progress: bool = False, iterations: int = 5, texture_size: int = 512,
                max_side: int | None = MAX_SIDE, detector: str = "auto", photometric_config=None,
                name: str | None = None, model_name: str | None = None, depth=None, focal: float | None = None,
                principal_point: tuple[float, float] | None = None,
                depth_unit_mm: float = 1.0) -> Reconstruction | list[Reconstruction]:
    """Reconstruct the face in a photo (see the module docstring for the pipeline).

    Args:
        image: path of a photo, or an ``(H, W, 3)`` array (uint8, or floats in [0, 1]).
        model: registry name (``"ict"``, ``"sfm"``), model file, or a loaded :class:`MorphableModel`.
        landmarks: skip detection: a landmark file or a ``(68, 2)`` array (original px, NaN = missing).
        face: ``"largest"`` (default), ``"best"`` (detector score), ``"all"`` or an index (largest first).
        shape_from: ``"regressor"`` (learned identity prior where one exists for the model, else as
            ``"landmarks"``) or ``"landmarks"``.
        photometric: refine by inverse rendering (adds :attr:`Reconstruction.photometric`).
        perspective: refine the camera to a pinhole (focal = the working photo's longer side); with
            ``photometric``, the inverse rendering starts from that pinhole and keeps its focal length (with
            ``depth``, the sensor's pinhole replaces it).
        progress: show tqdm progress bars on stderr.
        iterations: contour / pose / shape alternations of the landmark fit.
        texture_size: texels per side of the extracted texture.
        max_side: longest side of the working copy (``None``: never shrink).
        detector: dlib detector (``auto``, ``hog``, ``cnn``).
        photometric_config: a :class:`~morphable.fitting.photometric.PhotometricConfig`.
        name: what to call the photo in the outputs (default: its path, or ``"array"``).
        model_name: what to record as the model with a loaded ``model`` (default: ``model.name``).
        depth: a depth image registered with the photo (RGB-D): a file (:func:`~morphable.io.depth.read_depth`,
            values × ``depth_unit_mm``) or an ``(H, W)`` array in mm (NaN = hole); needs ``photometric`` and the
            sensor's ``focal`` (px) and optionally ``principal_point`` (px; default the photo's centre).
    Returns:
        One :class:`Reconstruction`, or a list (largest face first) with ``face="all"``.
    Raises:
        InputError: unreadable photo or landmark file, no face found, a face index past those found.
        ValueError: bad arguments, or a face that cannot be fitted (fewer than 4 usable landmarks).
    """
    from tqdm import tqdm

    steps = tqdm(total=3, desc="loading", unit="stage", disable=not progress, file=sys.stderr, leave=False)
    t0 = time.perf_counter()
    face_model, label = load_face_model(model)
    label = model_name or label
    steps.update(1)
    steps.set_description("detecting" if landmarks is None else "reading landmarks")
    t1 = time.perf_counter()
    faces = find_faces(image, landmarks=landmarks, face=face, detector=detector, max_side=max_side, name=name)
    t2 = time.perf_counter()
    steps.update(1)
    steps.set_description("fitting")
    depths = None
    if depth is not None:
        from morphable.io.depth import read_depth

        if isinstance(depth, str | PathLike):
            d = read_depth(depth, depth_unit_mm)
            check_depth_size(d, faces[0], depth)
        else:
            d = np.asarray(depth, np.float32)
        depths = [d] * len(faces)
    recs = reconstruct_faces(faces, face_model, label, shape_from=shape_from, perspective=perspective,
                             photometric=photometric, photometric_config=photometric_config, iterations=iterations,
                             texture_size=texture_size, progress=progress,
                             timings={"load": t1 - t0, "detect": t2 - t1}, depths=depths, focal=focal,
                             principal_point=principal_point)
    steps.update(1)
    steps.close()
    return recs if str(face).lower() == "all" else recs[0]
