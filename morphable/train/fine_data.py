"""FineNet's training data: inverse-rendered chips with a known per-vertex displacement (Guo, Zhang et al.,
TPAMI 2018; seed ``zhang-deep-3d-face-modeling.txt``: FineNet learns "depth and displacement details" from
synthesized pairs; issue 15, "Fine data").

Built on :mod:`morphable.train.inverse_rendered` (its corpus split, cached photometric fits, variants and
inpainted chip backgrounds — the CoarseNet data's own cache files):

* **detail** (:func:`fit_detail`, cached per photo as ``fine-detail-<key>.pt``): the photometric fit's detail
  stage (:func:`~morphable.fitting.photometric.fit_photometric` with ``detail_iterations``,
  ``E(d) = E_con + μ₁‖d‖² + μ₂‖L d‖₁``) run from the photo's cached coarse fit (identity, expression, camera,
  albedo, light held) on the photo's face square at :data:`DETAIL_SIDE` px: the displacement ``d`` ``(V_r,)`` mm
  along the normals that makes the rendering match the photo's shading beyond the 3DMM's span;
* **chips** (:func:`draw_fine`, :func:`render_fine`): a variant's new pose, identity, expression, light and
  shift (:func:`~morphable.train.inverse_rendered.draw_variant`), and a displacement: the photo's own with
  probability ``1 − transfer_probability``, else another photo's of the same set (the model's vertices
  correspond, so a detail transfers between faces, as the paper's detail augmentation does), times a gain
  uniform in [``min_gain``, ``max_gain``]. The displaced face is rendered with the photo's albedo over the
  cached chip's inpainted background (:func:`~morphable.train.inverse_rendered.place_faces`), rounded to
  8 bits; the coarse (undisplaced) mesh is rendered with the displacement as a vertex attribute: FineNet's
  input maps and its per-pixel target (:func:`~morphable.nets.fine.base_maps`).

Everything is drawn from a ``torch.Generator``; a set drawn from the same generator state is the same, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from morphable.errors import InputError
from morphable.geometry.camera import ScaledOrthographic
from morphable.models.base import MorphableModel
from morphable.nets.fine import base_maps
from morphable.render.renderer import Renderer
from morphable.train import inverse_rendered
from morphable.train.data.cache import cache_root, cached, settings_key
from morphable.train.inverse_rendered import (
    VariantSettings,
    build_set,
    cached_fit,
    chip_box,
    crop_camera,
    crop_photo,
    draw_variant,
    place_faces,
    region_triangles,
    working_photo,
)

DETAIL_SIDE = 192
"""Side (px) of the face square the detail stage fits: twice the 96 px chip, so the detail comes from more
pixels than a chip shows; SFM's 3.6 mm edges are ~3 px there."""
DETAIL_ITERATIONS = 30
"""Adam steps of the detail stage (lr 0.05 mm); 100 steps grew spikes of 5 mm at the face's border (where
the 3DMM's outline and the photo disagree), not detail."""
DETAIL_MU2 = 0.03
"""μ₂, the detail stage's weight on ‖L d‖₁ (the fit's default is 1e-3). At 1e-3 the displacement varies from
vertex to vertex (SFM's vertices are 1.5 px apart in a 96 px chip): on 3 training photos even the true
per-pixel map read back at the vertices left 53 % of it (0.31 of 0.58 mm), a floor no image-based network
can pass; at 0.03 the floor is 34 % (0.13 of 0.39 mm) and the fit keeps 83 % of its colour-energy drop
(0.058 → 0.044 at 1e-3, → 0.046 at 0.03; 0.1: 0.049, floor 29 % of 0.21 mm)."""
DETAIL_VERSION = 1


@dataclass(frozen=True)
class DetailSettings:
    """How a chip's displacement is drawn: another photo's (of the same set) with ``transfer_probability``,
    else its own photo's, × a gain uniform in [``min_gain``, ``max_gain``]."""

    transfer_probability: float = 0.5
    min_gain: float = 0.5
    max_gain: float = 1.5

    def __post_init__(self) -> None:
        if not 0 <= self.transfer_probability <= 1:
            raise ValueError(f"DetailSettings.transfer_probability must be in [0, 1], got {self.transfer_probability}")
        if not 0 <= self.min_gain <= self.max_gain:
            raise ValueError(f"DetailSettings: need 0 <= min_gain <= max_gain, got {self.min_gain}, {self.max_gain}")


def fit_detail(model: MorphableModel, fit: dict[str, Tensor], photo: np.ndarray, *, side: int = DETAIL_SIDE,
               iterations: int = DETAIL_ITERATIONS, mu2: float = DETAIL_MU2) -> dict[str, Tensor]:
    """The detail stage of the photometric fit on a photo's face square, from its coarse fit.

    Args:
        model: the fitted model; fit: :func:`~morphable.train.inverse_rendered.fit_photo`'s record;
        photo: the working photo ``(H, W, 3)`` uint8 (:func:`~morphable.train.inverse_rendered.working_photo`).
        side: the square's side (px): the fitted landmarks' box × ``nets.coarse.CROP_SCALE``, resampled.
        iterations: detail-stage steps; mu2: its Laplacian weight (:data:`DETAIL_MU2`).
    Returns:
        ``displacement`` ``(V_r,)`` mm along the normals on ``fit["region_vertices"]``, and ``photometric``
        ``(2,)`` the colour energy on the square before and after.
    """
    from morphable.fitting.landmarks import fit_landmarks
    from morphable.fitting.photometric import PhotometricConfig, fit_photometric

    dtype = model.mean.dtype
    camera = ScaledOrthographic(fit["scale"], fit["rotation"][None], fit["translation"][None])
    verts = model(identity=fit["identity"][None], expression=fit["expression"][None]).vertices
    box = chip_box(camera.project(model.landmarks(verts))[0][model.landmark_mask], 0.0, VariantSettings(size=side))
    image = torch.from_numpy(crop_photo(photo, box, side)).to(dtype)[None] / 255
    chip_camera = crop_camera(camera, box, side)
    left, top, width = box
    landmarks = ((fit["landmarks"] - torch.tensor([left, top], dtype=dtype)) * (side / width) - 0.5)[None]
    # the coarse fit's geometry and camera held; the landmark fit only supplies the correspondences
    init = replace(fit_landmarks(model, landmarks), identity=fit["identity"][None],
                   expression=fit["expression"][None], camera=chip_camera)
    config = PhotometricConfig(schedule=(), detail_iterations=iterations, mu2=mu2)
    out = fit_photometric(model, image, landmarks, init=init, config=config, albedo=fit["albedo"][None],
                          light=fit["light"][None])
    if not torch.equal(out.region_vertices, fit["region_vertices"]):
        raise ValueError("fit_detail: the detail stage's region differs from the coarse fit's")
    return {"displacement": out.displacement[0],
            "photometric": torch.tensor([out.energies["initial"]["photometric"], out.energies["photometric"]])}


def cached_detail(model: MorphableModel, model_name: str, photo: str, root: Path, cache: Path,
                  fit: dict[str, Tensor]) -> dict[str, Tensor]:
    """:func:`fit_detail` of ``root / photo`` from its coarse ``fit``, cached as ``cache/fine-detail-<key>.pt``
    (key: the photo, the coarse fit's energy, the model, :data:`DETAIL_SIDE`, :data:`DETAIL_ITERATIONS`,
    :data:`DETAIL_MU2`, :data:`DETAIL_VERSION`)."""
    key = settings_key(dict(photo=photo, fit=fit["photometric"].item(), model=model_name, n_vertices=model.n_vertices,
                            side=DETAIL_SIDE, iterations=DETAIL_ITERATIONS, mu2=DETAIL_MU2,
                            version=DETAIL_VERSION))
    return cached(cache / f"fine-detail-{key}.pt", lambda: fit_detail(model, fit, working_photo(root / photo)[0]))


def build_fine_set(model: MorphableModel, model_name: str, photos: tuple[str, ...] | list[str], variants: int,
                   seed: int, settings: VariantSettings = VariantSettings(), *, name: str = "set",
                   cache: Path | None = None, root: Path | None = None, progress: bool = False) -> dict[str, Tensor]:
    """:func:`~morphable.train.inverse_rendered.build_set`'s chips (their inpainted backgrounds and scales are
    what the fine chips are drawn over) plus each kept photo's detail displacement.

    Returns:
        ``build_set``'s tensors (``backgrounds`` ``(N, S, S, 3)`` uint8, ``scale`` ``(N,)``, ``photo`` ``(N,)``,
        ``albedo`` ``(P, V_r, 3)``, ``fit_identity``, ``fit_light``, ``region_vertices`` …), ``displacement``
        ``(P, V_r)`` mm and ``detail_photometric`` ``(P, 2)`` (the detail stage's colour energy before / after).
    Raises:
        InputError: a photo is missing from the corpus, or none of them has a face.
    """
    from tqdm import tqdm

    root = inverse_rendered.corpus_root() if root is None else Path(root)
    cache = cache_root() if cache is None else Path(cache)
    data = build_set(model, model_name, photos, variants, seed, settings, name=name, cache=cache, root=root,
                     progress=progress)
    details = []
    for photo in tqdm(photos, desc=f"fine detail ({name})", disable=not progress, leave=False):
        try:
            fit = cached_fit(model, model_name, photo, root, cache)  # (cached by build_set)
        except InputError as err:
            if "no face" not in str(err):
                raise
            continue
        details.append(cached_detail(model, model_name, photo, root, cache, fit))
    data["displacement"] = torch.stack([d["displacement"] for d in details])
    data["detail_photometric"] = torch.stack([d["photometric"] for d in details])
    return data


def draw_fine(model: MorphableModel, data: dict[str, Tensor], index: Tensor, generator: torch.Generator,
              settings: VariantSettings, detail: DetailSettings) -> dict[str, Tensor]:
    """Each chip's draws (see the module docstring), from ``generator``: ``index`` ``(B,)`` the chips, and
    :func:`~morphable.train.inverse_rendered.draw_variant`'s ``ypr``, ``identity``, ``expression``, ``light``,
    ``shift``, plus ``source`` ``(B,)`` the photo whose displacement it gets and ``gain`` ``(B,)``."""
    rows = []
    P = len(data["displacement"])
    for p in data["photo"][index].tolist():
        v = draw_variant(model, {"identity": data["fit_identity"][p], "light": data["fit_light"][p]}, generator,
                         settings)
        transfer = float(torch.rand((), generator=generator, dtype=torch.float64)) < detail.transfer_probability
        other = int(torch.randint(P, (), generator=generator))
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        v["source"] = torch.tensor(other if transfer else p)
        v["gain"] = torch.tensor(detail.min_gain + (detail.max_gain - detail.min_gain) * u, dtype=model.mean.dtype)
        rows.append(v)
    out = {k: torch.stack([r[k] for r in rows]) for k in ("ypr", "identity", "expression", "light", "shift", "source",
                                                           "gain")}
    return {"index": index, **out}


class FineRenderers:
    """The two renderers of a model's fitted region at the chip size: ``shaded`` (anti-aliased, for the chips)
    and ``hard`` (for :func:`~morphable.nets.fine.base_maps`)."""

    def __init__(self, model: MorphableModel, region: Tensor, size: int):
        triangles = region_triangles(model, region)
        self.region = region
        self.shaded = Renderer(triangles, (size, size))
        self.hard = Renderer(triangles, (size, size), soft_silhouette=False)


def render_fine(model: MorphableModel, renderers: FineRenderers, data: dict[str, Tensor],
                draws: dict[str, Tensor]) -> dict[str, Tensor]:
    """Render a batch of fine chips (:func:`draw_fine`'s draws over :func:`build_fine_set`'s backgrounds).

    Returns:
        ``images`` ``(B, S, S, 3)`` in [0, 1] (8-bit values), the coarse mesh's ``normals`` ``(B, S, S, 3)``
        and ``mask`` ``(B, S, S)`` (FineNet's inputs), ``target`` ``(B, S, S)`` the displacement map (mm),
        ``displacement`` ``(B, V_r)`` mm, ``visible`` ``(B, V_r)``, ``points`` ``(B, V_r, 2)`` chip px,
        ``vertices`` ``(B, V_r, 3)`` the coarse mesh (mm), ``camera`` the chip camera.
    """
    index, region = draws["index"], renderers.region
    photo = data["photo"][index]
    d = draws["gain"][:, None] * data["displacement"][draws["source"]]
    scale = data["scale"][index]
    with torch.no_grad():
        out = place_faces(model, renderers.shaded, region, data["albedo"][photo],
                          data["backgrounds"][index].to(d.dtype) / 255, scale, draws["ypr"], draws["identity"],
                          draws["expression"], draws["light"], draws["shift"], displacement=d)
        camera = ScaledOrthographic(scale, out["rotation"], out["translation"])
        vertices = out["vertices"]
        maps = base_maps(renderers.hard, vertices, camera, d)
    return {"images": (out["images"] * 255).round() / 255, "normals": maps.normals, "mask": maps.mask,
            "target": maps.attribute, "displacement": d, "visible": maps.visible, "points": maps.points,
            "vertices": vertices, "camera": camera}


def detail_errors(predicted: Tensor, truth: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
    """Per chip, the mean distance (mm) over the seen vertices ``visible`` ``(B, V)`` between the true displaced
    mesh (coarse + ``truth`` ``(B, V)`` along the normals) and: the coarse mesh (``|d|``), and the coarse mesh
    displaced by ``predicted`` ``(B, V)`` (``|d̂ − d|``: both move along the same normals). ``(B,)`` each."""
    n = visible.sum(1).clamp_min(1)
    base = torch.where(visible, truth.abs(), 0.0).sum(1) / n
    fine = torch.where(visible, (predicted - truth).abs(), 0.0).sum(1) / n
    return base, fine
