"""Photometric inverse rendering: analysis-by-synthesis fitting of identity, expression, albedo, pose and
spherical-harmonics lighting to one photo or several photos of one person.

Zhang et al.'s coarse stage (seed ``zhang-deep-3d-face-modeling.txt``; Guo, Zhang et al., "CNN-based
Real-time Dense Face Reconstruction with Inverse-rendered Photo-realistic Face Images", TPAMI 2018, Sec. 3):

    E(χ) = E_con + w_lan · E_lan + w_reg · E_reg,     C_S(p) = ρ_p · Lᵀ φ(n_p)

* ``E_con``: robust colour difference between the rendering and the photo over the rendered face pixels,
  weighted by a chromaticity skin mask (``losses/photometric.py``). The rendering is composited over the
  photo itself, so pixels off the face cost nothing and the soft silhouette moves the face outline.
* ``E_lan``: squared landmark distance in pixels of a 224-px image (the correspondences of the sparse fit,
  jawline included), as in Deep3DFaceRecon's weighting.
* ``E_reg``: ‖α_id‖² + ‖α_exp‖² (+ ‖α_alb‖²) on standardised coefficients (the seed's σ-scaled prior);
  blendshape weights get a small L2 penalty and stay in [0, 1].
* Models without an albedo basis (ICT, SFM) fit per-vertex albedo with Laplacian smoothness, bilateral
  symmetry (mirror vertices) and a prior towards the mean skin colour.
* Several photos (``shared_identity=True``): one identity and one albedo, per-photo pose, expression and
  light — Zhang et al.'s E_same taken to its limit (the shared variables are equal).

Camera: ``init``'s. A :class:`ScaledOrthographic` fit moves log-scale, rotation and a 2-D translation (px); a
:class:`Perspective` one (:func:`~morphable.fitting.perspective.refine_perspective`'s, for close-ups) moves rotation
and a 3-D translation (mm) with its intrinsics fixed.

Schedule: the sparse landmark fit gives pose/identity/expression; the light and the smooth (low-frequency)
albedo are solved linearly from the photo, alternately (:func:`solve_light`, :func:`solve_albedo_modes`);
then one Adam, warmed up and kept across the stages, moves each stage's variables at that stage's image
size with early stopping; per-vertex albedo is initialised from the photo when a stage first fits it
(Zhang's ρ = β ρ_c + (1 − β) C_I / (Lᵀφ(n)), β = 0.65). Renderers are built once per image size and
region and reused by every step, stage and fit. An optional fine stage fits per-vertex displacements
along the normals, ``E(d) = E_con + μ₁‖d‖² + μ₂‖L d‖₁``.

**RGB-D** (``depth=``, the seed's RGB-D tracker, Guo et al. arXiv 1808.05323, Eq. 2 and 5): depth images
registered with the photos add ``w_geo · E_geo``, the robust point-to-plane distance between the face mesh and
the back-projected depth (``fitting/rgbd.py``: per-pixel association by rasterising the mesh into the depth
camera at every step, Geman–McClure weights). The camera is then the sensor's pinhole (:class:`Perspective`,
rotation and a 3-D translation in mm fitted, the intrinsics fixed) and the start is :func:`fit_rgbd`'s
geometric fit; every stage that moves geometry, and the fine stage, keeps E_geo.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from morphable.fitting.landmarks import LandmarkFit, fit_landmarks
from morphable.fitting.rgbd import RegisteredDepth, back_project, fit_rgbd, point_to_plane_energy
from morphable.geometry.camera import Camera, Perspective, ScaledOrthographic, rescale_pixels
from morphable.geometry.laplacian import SparseOperator, uniform_laplacian
from morphable.geometry.mesh import VertexFaceIncidence, displace, vertex_normals
from morphable.geometry.uv import mirror_pairs, symmetry_pairs
from morphable.losses.photometric import photometric_loss, skin_mask
from morphable.losses.prior import prior_loss
from morphable.losses.smoothness import laplacian_loss
from morphable.losses.symmetry import vertex_symmetry_loss
from morphable.models.base import MorphableModel
from morphable.models.region import restrict
from morphable.render.renderer import FixedGeometry, Renderer
from morphable.render.shading import SH_AMBIENT, sh_basis
from morphable.render.texture import sample_image

REFERENCE_SIZE = 224.0
"""Landmark distances are measured in pixels of an image whose longer side is this many pixels."""
OBSERVE_SIZE = 512
"""Longer side (px) of the copy of the photo that initial light and albedo are read from."""
ALBEDO_BETA = 0.65
"""Zhang et al.'s blend between the current albedo and the photo-derived one when albedo is first fitted."""
LINEAR_ROUNDS = 2
"""Alternations of the linear light and smooth-albedo solves that initialise a model without an albedo basis."""
RENDERER_CACHE_SIZE = 8
"""Renderers (image sizes) kept per fitted region: a schedule's stage sizes, the photo's and the observation size."""


@dataclass(frozen=True)
class Stage:
    """One stage of the schedule: render size (longer image side, px), Adam steps (an upper bound: early
    stopping may end it sooner) and which variable groups move: ``pose``, ``shape`` (identity and
    expression), ``light``, ``albedo_lowfreq`` (the smooth part of the albedo: the model's albedo
    coefficients, or the symmetric low-frequency modes below) and ``albedo`` (per-vertex albedo)."""

    size: int
    iterations: int
    variables: tuple[str, ...]


@dataclass(frozen=True)
class _HeldGeometry:
    """A stage's fixed geometry (:func:`fit_photometric`): its rasterisation and the constant geometry terms
    (landmark, identity and expression priors; E_geo or ``None``)."""

    fixed: FixedGeometry
    terms: tuple[Tensor, Tensor, Tensor]
    geo: Tensor | None


DEFAULT_SCHEDULE = (
    Stage(96, 30, ("pose", "shape", "light", "albedo_lowfreq")),  # geometry, pose, light and smooth albedo
    Stage(160, 10, ("albedo", "light")),                          # per-vertex albedo, geometry held
)
"""Chosen on ``benchmarks/photometric_bench.py --tune`` (its held-out seeds, never its test seeds): the
vertex error changes only while shape moves; with the light and smooth albedo solved linearly first, the
old rigid (64 px) and albedo-only (96 px) stages left it unchanged and a joint 160 px stage after 40 steps at
96 px did not lower it. On 20 tuning faces 24 steps at 96 px reached an improvement over the sparse fit of
0.34, 36 steps 0.40 (the old 93-step schedule: see ``docs/performance.md``).

Cheaper schedules were tried again once steps got cheaper (20 tuning faces, improvement; CPU s per face at
1 thread on the loaded machine): 36 at 80 px + 6 at 128 px 0.428 (1.45 s) against this schedule's 0.389
(1.65 s); 30 at 80 + 6 at 128 0.403; 30 at 64 + 6 at 128 0.393; 30 at 96 + 6 at 128 0.364. None was kept: on
real photos (``benchmarks/photometric_real.py``, 12 photos, mean rendering error, same code) this schedule
gives 0.1056 (better than the appearance-only anchor on 12 of 12), 36 at 80 + 10 at 160 0.1095 (8 of 12) and
36 at 80 + 6 at 128 0.1148 (7 of 12): real photos need the 96 px geometry and the 160 px albedo stage.

Once the pixels shaded beyond the silhouette stopped extrapolating their triangles' colours (clamped
barycentrics, ``render/rasterize.py``) every schedule fitted better, and the joint stage was shortened from
36 to 30 steps. The sweep (a scratch script running the benchmark's 20 tuning faces and
``photometric_real.py``'s photos with the stage length changed) gave on the tuning faces 36 steps 0.484,
30 steps 0.454, 26 0.431, 22 0.403, against 0.444 for 36 steps before the fix; on the real photos 0.0911,
0.0922, 0.0931, all better than the anchor on 12 of 12, against 0.1040 before. With this schedule
``photometric_bench.py --n 20 --tune`` prints improvement 0.462 and ``photometric_real.py --threads 1 --multi``
0.0922. Raising the shape step sizes instead (0.12 / 0.036 with 30 steps, before the fix) was better on the
tuning faces but worse on the real photos (0.1086, 8 of 12; the defaults edited for one run)."""


@dataclass(frozen=True)
class PhotometricConfig:
    """Weights and schedule of :func:`fit_photometric`.

    Attributes:
        schedule: the stages (:data:`DEFAULT_SCHEDULE`: shape, pose, light and smooth albedo, then per-vertex albedo).
        w_photo, w_landmark: E_con weight; E_lan weight per px² (at ``REFERENCE_SIZE``).
        w_identity, w_expression, w_albedo_coeffs: prior weights on standardised coefficients.
        w_blendshape: L2 weight on blendshape weights.
        w_albedo_smooth, w_albedo_symmetry, w_albedo_mean: per-vertex albedo priors (models without an
            albedo basis): Laplacian smoothness, mirror symmetry, closeness of the per-vertex factor to
            the mean skin colour.
        albedo_modes: models without an albedo basis get a smooth albedo ``ρ = ρ_v ⊙ (1 + U c)``: ``U`` the
            first this-many left-right symmetric eigenvectors of the face's cotangent Laplacian (manifold
            harmonics, the constant excluded) and ``c`` ``(K, 3)`` coefficients. Fitting geometry with this
            low-dimensional albedo keeps per-vertex albedo from absorbing the shading that geometry must
            explain (Zhang et al. fit geometry with the model albedo, per-pixel albedo last).
        robust: photometric norm (``"l21"``, ``"l2"``, ``"huber"``).
        use_skin_mask: weight pixels by the chromaticity skin mask.
        tolerance, patience: early stopping: a stage ends when the energy has not dropped below
            ``(1 − tolerance)`` × its lowest value so far for ``patience`` steps in a row.
        warmup: each variable's learning rate rises linearly over its first this-many Adam steps (a fresh
            Adam moves every coordinate by ±lr at first: the energy and the shape jumped away from the
            sparse fit when all variables started together).
        detail_iterations: steps of the displacement stage (0 = off); ``mu1``, ``mu2`` its weights.
        w_identity_feature: weight of Genova et al.'s identity loss, 1 − cos between the face-recognition
            descriptors (``identity/``, dlib's ResNet) of the photo's and the rendering's aligned face chips
            at each stage's size (0 = off; it costs a network forward/backward per step).
        w_geo: weight of E_geo (per mm², the robust mean point-to-plane distance) when a depth image is given.
        geo_shape_lr_scale: with depth, the identity and expression learning rates × this: the start
            (:func:`fit_rgbd`) is already metric, and Adam's first steps of ±lr per coordinate moved it away
            (synthetic ICT RGB-D, seeds 100–101 of ``benchmarks/rgbd_bench.py``, ``w_geo`` 1: mean error
            0.198 mm at 0.3 against 0.234 mm at 1; ``w_geo`` 0.1, 3 and 10 gave 0.38, 0.29 and 0.37 mm at 1;
            a tuning script with the config changed, not in the repository. The defaults' figure is printed by
            ``rgbd_bench.py --first-seed 100 --faces 2``: 0.191 mm).
        geo_robust_mm, geo_max_distance_mm, geo_max_pixels: its Geman–McClure scale, the distance beyond which
            a depth pair is an outlier, and the most pairs per image and step (a random subset; seeded).
    """

    schedule: tuple[Stage, ...] = DEFAULT_SCHEDULE
    w_photo: float = 1.0
    w_landmark: float = 3e-3
    w_identity: float = 1e-5
    w_expression: float = 1e-5
    w_albedo_coeffs: float = 1e-4
    w_blendshape: float = 1e-4
    w_albedo_smooth: float = 1.0
    w_albedo_symmetry: float = 10.0
    w_albedo_mean: float = 0.01
    albedo_modes: int = 32
    robust: str = "l21"
    use_skin_mask: bool = True
    tolerance: float = 2e-3
    patience: int = 4
    warmup: int = 5
    lr_rotation: float = 2e-3
    lr_translation: float = 0.2
    lr_log_scale: float = 2e-3
    lr_identity: float = 0.1
    lr_expression: float = 0.03
    lr_albedo: float = 0.01
    lr_light: float = 0.01
    detail_iterations: int = 0
    mu1: float = 1e-3
    mu2: float = 1e-3
    w_identity_feature: float = 0.0
    w_geo: float = 1.0
    geo_shape_lr_scale: float = 0.3
    geo_robust_mm: float = 1.0
    geo_max_distance_mm: float = 10.0
    geo_max_pixels: int = 8000
    region: str | None = "face"


@dataclass(frozen=True)
class PhotometricFit:
    """Result of :func:`fit_photometric`.

    Attributes:
        identity: ``(B, K)`` standardised identity coefficients (rows equal with a shared identity).
        expression: ``(B, Ke)``.
        albedo: ``(B, V_r, 3)`` per-vertex linear-RGB albedo on the fitted region's vertices.
        albedo_coefficients: ``(B, K_alb)`` for models with an albedo basis, else ``None``.
        light: ``(B, 9, 3)`` SH radiance coefficients (``render/shading.py``; view frame).
        camera: :class:`ScaledOrthographic` in the photo's pixels; with depth, the sensor's :class:`Perspective`
            (model → camera pose in mm).
        vertices: ``(B, V, 3)`` the full model's fitted vertices, mm.
        region_vertices: ``(V_r,)`` ids of the fitted region's vertices in the full model.
        region_triangles: ``(F_r, 3)`` the region's triangles (region vertex ids).
        displacement: ``(B, V_r)`` mm along the normals (fine stage), or ``None``.
        render: ``(B, H, W, 3)`` the final rendering composited over the photo, at the photo's size.
        alpha: ``(B, H, W)`` its coverage.
        energies: final named energy terms, scored at the photo's size without the skin mask; the same
            terms at the start (the sparse fit, initial light and albedo) under ``initial``.
        history: per-step named energy terms.
    """

    identity: Tensor
    expression: Tensor
    albedo: Tensor
    albedo_coefficients: Tensor | None
    light: Tensor
    camera: Camera
    vertices: Tensor
    region_vertices: Tensor
    region_triangles: Tensor
    displacement: Tensor | None
    render: Tensor
    alpha: Tensor
    energies: dict[str, float]
    history: list[dict[str, float]] = field(repr=False)


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, H, W, C)`` → ``(B, h, w, C)`` with antialiased bilinear filtering (pixel-area aligned)."""
    if images.shape[1:3] == size:
        return images
    out = F.interpolate(images.permute(0, 3, 1, 2), size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.permute(0, 2, 3, 1)


def solve_light(normals: Tensor, albedo: Tensor, colors: Tensor, weights: Tensor, ridge: float = 1e-3) -> Tensor:
    """Least-squares SH light given normals, albedo and observed colours (linear in L, per channel).

    ``min_L Σ_p w_p (ρ_p Lᵀφ(n_p) − C_p)² + ridge ‖L − L_ambient‖²``, with ``L_ambient`` the light giving
    ``C = ρ``.

    Args:
        normals, albedo, colors: ``(B, P, 3)``; weights: ``(B, P)``.
    Returns:
        ``(B, 9, 3)``.
    """
    phi = sh_basis(normals)  # (B, P, 9)
    prior = torch.zeros(9, dtype=phi.dtype, device=phi.device)
    prior[0] = SH_AMBIENT
    out = []
    for c in range(3):
        A = phi * albedo[..., c:c + 1]  # (B, P, 9)
        Aw = A * weights[..., None]
        lhs = Aw.transpose(1, 2) @ A + ridge * torch.eye(9, dtype=phi.dtype, device=phi.device)
        rhs = Aw.transpose(1, 2) @ colors[..., c:c + 1] + ridge * prior[:, None]
        out.append(torch.linalg.solve(lhs, rhs)[..., 0])
    return torch.stack(out, -1)


def solve_albedo_modes(colors: Tensor, weights: Tensor, shading: Tensor, base: Tensor, harmonics: Tensor, *,
                       shared: bool = False, ridge: float = 1e-3) -> Tensor:
    """Least-squares coefficients of the smooth albedo ``ρ = ρ_v ⊙ (1 + U c)`` given the shading (linear in
    ``c``, per channel):

        ``min_c Σ_v w_v (ρ_v s_v (1 + U_v c) − C_v)² / Σ_v w_v + ridge ‖c‖²``

    Args:
        colors: ``(B, V, 3)`` observed colours C; weights: ``(B, V)``; shading: ``(B, V, 3)`` s = Lᵀφ(n);
        base: ``(B, V, 3)`` per-vertex factor ρ_v; harmonics: ``(V, K)`` the modes U.
        shared: one ``c`` for all ``B`` images (their normal equations summed).
    Returns:
        ``(B, K, 3)``, or ``(1, K, 3)`` when ``shared``.
    """
    a = base * shading  # (B, V, 3): the rendering with c = 0
    w = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    K = harmonics.shape[1]
    out = []
    for c in range(3):
        A = a[..., c:c + 1] * harmonics  # (B, V, K)
        Aw = A * w[..., None]
        lhs = Aw.transpose(1, 2) @ A  # (B, K, K)
        rhs = Aw.transpose(1, 2) @ (colors[..., c:c + 1] - a[..., c:c + 1])  # (B, K, 1)
        if shared:
            lhs, rhs = lhs.mean(0, keepdim=True), rhs.mean(0, keepdim=True)
        eye = torch.eye(K, dtype=lhs.dtype, device=lhs.device)
        out.append(torch.linalg.solve(lhs + ridge * eye, rhs)[..., 0])
    return torch.stack(out, -1)


@dataclass(frozen=True)
class ModeSpacePriors:
    """The albedo smoothness and symmetry priors of ``ρ = ρ_v ⊙ (1 + U c)`` as quadratic forms in the mode
    coefficients ``c``, for stages that hold the per-vertex factor ``ρ_v`` and move ``c`` only.

    Both priors are squared norms of a linear map of ``ρ``: ``E_smooth = Σ_{b,ch} ‖L ρ_{b,ch}‖² / (B V)`` (the
    energy's ``laplacian_loss / V``) and ``E_sym = Σ_{b,ch} ‖S ρ_{b,ch}‖² / (B n 3)`` with ``(S x)_i = x_i −
    x_mirror(i)`` over the ``n`` paired vertices (``vertex_symmetry_loss``). Per image and channel, with
    ``A = M (ρ_v ⊙ U)`` and ``r = M ρ_v`` (``M`` = L or S), ``‖M ρ‖² = c·Gc + 2 g·c + k``, ``G = AᵀA``,
    ``g = Aᵀr``, ``k = rᵀr``: a ``K × K`` form per step instead of two passes over the vertices and their
    backward. Build once per stage with :meth:`build`; tested against the per-vertex losses.

    Attributes:
        smooth, sym: ``(G (B, 3, K, K), g (B, 3, K), k (B, 3))`` of each prior, already normalised.
    """

    smooth: tuple[Tensor, Tensor, Tensor]
    sym: tuple[Tensor, Tensor, Tensor]

    @staticmethod
    def build(base: Tensor, harmonics: Tensor, laplacian: SparseOperator, mirror: Tensor) -> "ModeSpacePriors":
        """``base`` ``(B, V, 3)`` the held factor ρ_v; ``harmonics`` ``(V, K)``; ``mirror`` ``(V,)`` (−1: unpaired)."""
        B, V, _ = base.shape
        K = harmonics.shape[1]
        idx = torch.nonzero(mirror >= 0).squeeze(-1)
        pair = mirror.index_select(0, idx)
        cols = torch.cat([base[..., None] * harmonics[None, :, None, :], base[..., None]], -1)  # (B, V, 3, K+1)
        cols = cols.permute(1, 0, 2, 3).reshape(V, B * 3 * (K + 1))
        forms = []
        for op, scale in ((lambda x: laplacian.to(x.dtype) @ x, 1.0 / (B * V)),
                          (lambda x: x.index_select(0, idx) - x.index_select(0, pair), 1.0 / (B * max(len(idx), 1) * 3))):
            mapped = op(cols).reshape(-1, B * 3, K + 1).transpose(0, 1)  # (B·3, N, K+1): [A | r]
            gram = (mapped.transpose(1, 2) @ mapped * scale).reshape(B, 3, K + 1, K + 1)
            forms.append((gram[..., :K, :K], gram[..., :K, K], gram[..., K, K]))
        return ModeSpacePriors(*forms)

    def __call__(self, modes: Tensor) -> tuple[Tensor, Tensor]:
        """``modes`` ``(B, K, 3)`` -> ``(E_smooth, E_sym)`` scalars."""
        c = modes.expand(self.smooth[1].shape[0], -1, -1).transpose(1, 2)  # (B, 3, K)
        return tuple(((c[..., None, :] @ G @ c[..., None])[..., 0, 0] + 2 * (g * c).sum(-1) + k).sum()
                     for G, g, k in (self.smooth, self.sym))


def symmetric_harmonics(vertices: Tensor, triangles: Tensor, mirror: Tensor, k: int) -> Tensor:
    """The first ``k`` non-constant, left-right symmetric eigenvectors of the cotangent Laplacian
    ("manifold harmonics": the smoothest functions on the surface), each scaled to unit RMS. ``(V, k)``.

    Eigenvectors of a mirror-symmetric mesh are symmetric or antisymmetric; they are symmetrised through
    ``mirror`` ``(V,)`` (−1 = unpaired) and the ones that mostly vanish (antisymmetric) are dropped.
    """
    import scipy.sparse.linalg as spla

    from morphable.geometry.laplacian import cotangent_laplacian

    if k == 0:
        return vertices.new_zeros(len(vertices), 0)
    L = cotangent_laplacian(vertices.detach().double().cpu().numpy(), triangles.cpu().numpy())
    n = min(2 * k + 8, len(vertices) - 2)  # about half the eigenvectors are symmetric
    # a fixed start vector (ARPACK's default is random) and a fixed sign per mode: the same basis in every
    # process, so fits and everything trained on them are reproducible
    v0 = np.random.default_rng(0).uniform(0.5, 1.5, L.shape[0])
    _, U = spla.eigsh(L, k=n, sigma=-1e-6, which="LM", v0=v0)  # smallest eigenvalues first
    U = U[:, 1:] * np.sign(U[np.abs(U).argmax(0)[1:], np.arange(1, n)])  # drop the constant; largest entry > 0
    U = torch.as_tensor(U)
    paired = mirror >= 0
    sym = U.clone()
    sym[paired] = 0.5 * (U[paired] + U[mirror[paired]])
    keep = sym.norm(dim=0) > 0.7 * U.norm(dim=0)
    sym = sym[:, keep][:, :k]
    return (sym / sym.pow(2).mean(0, keepdim=True).sqrt()).to(vertices.dtype)


@dataclass(frozen=True)
class RegionTerms:
    """Per-model tables of the fit, built once per (model, region, albedo modes) and cached.

    Attributes:
        model: the model restricted to the region (``models/region.py``).
        vertex_ids: ``(V_r,)`` the region's vertices in the full model.
        laplacian: ``(V_r, V_r)`` uniform mesh Laplacian (a ``SparseOperator``) for albedo smoothness and details.
        mirror: ``(V_r,)`` mirror vertex of each vertex (−1 = none), an involution: the model's symmetry
            list where it is mutual, else nearest mirrored vertices.
        harmonics: ``(V_r, K)`` symmetric manifold harmonics (:func:`symmetric_harmonics`); ``K = 0`` for
            models with an albedo basis.
        incidence: the vertex–face incidence of the region's triangles (fast vertex normals).
        renderers: the region's renderers by ``(H, W, soft_silhouette)``, built on first use by
            :meth:`renderer` and shared by every stage and every fit (a renderer's tables depend only on
            the triangles and the image size).
    """

    model: MorphableModel
    vertex_ids: Tensor
    laplacian: SparseOperator
    mirror: Tensor
    harmonics: Tensor
    incidence: VertexFaceIncidence
    renderers: OrderedDict[tuple[int, int, bool], Renderer] = field(default_factory=OrderedDict, repr=False,
                                                                    compare=False)

    def renderer(self, size: tuple[int, int], soft_silhouette: bool = True) -> Renderer:
        """The region's :class:`Renderer` for images of ``size`` ``(H, W)``; the last
        :data:`RENDERER_CACHE_SIZE` sizes used are kept (photos of many sizes do not pile up)."""
        key = (int(size[0]), int(size[1]), soft_silhouette)
        if key in self.renderers:
            self.renderers.move_to_end(key)
        else:
            self.renderers[key] = Renderer(self.model.triangles, key[:2], soft_silhouette=soft_silhouette)
            while len(self.renderers) > RENDERER_CACHE_SIZE:
                self.renderers.popitem(last=False)
        return self.renderers[key]


_REGION_CACHE: "weakref.WeakKeyDictionary[MorphableModel, dict]" = weakref.WeakKeyDictionary()


def region_terms(model: MorphableModel, region: str | None, albedo_modes: int) -> RegionTerms:
    """:class:`RegionTerms` of ``model`` on ``region`` (all vertices when ``None`` or absent), cached."""
    key = (region, albedo_modes, model.mean.data_ptr(), model.identity_basis.data_ptr())
    cache = _REGION_CACHE.setdefault(model, {})
    if key in cache:
        return cache[key]
    ids = model.region_ids(region)
    sub = restrict(model, ids)
    tri = sub.triangles
    # an involution: the model's symmetry list where it is mutual, else nearest mirrored vertices
    pairs = symmetry_pairs(sub.symmetry) if sub.symmetry is not None else mirror_pairs(sub.mean, tri)
    mirror = torch.full((sub.n_vertices,), -1, dtype=torch.int64)
    mirror[pairs[:, 0]] = pairs[:, 1]
    k = 0 if sub.albedo_basis is not None else albedo_modes
    terms = RegionTerms(sub, ids, SparseOperator(uniform_laplacian(tri.numpy(), sub.n_vertices), sub.mean.dtype),
                        mirror, symmetric_harmonics(sub.mean, tri, mirror, k), VertexFaceIncidence(tri, sub.n_vertices))
    cache[key] = terms
    return terms


class _Variables:
    """The optimised tensors and how they expand to the batch (shared identity/albedo or per image)."""

    def __init__(self, camera: Camera, identity: Tensor, expression: Tensor, albedo: Tensor, light: Tensor,
                 albedo_coeffs: Tensor | None, shared: bool, albedo_modes: Tensor):
        B = identity.shape[0]
        self.B, self.shared = B, shared
        ident = identity.mean(0, keepdim=True) if shared else identity
        # a pinhole keeps its intrinsics and fits a 3-D translation (mm); a scaled orthographic camera fits
        # log(scale) and a 2-D translation (px)
        self.intrinsics = camera if isinstance(camera, Perspective) else None
        self.rotation = camera.rotation.detach().clone().requires_grad_(True)
        self.translation = camera.translation.detach().clone().requires_grad_(True)
        self.log_scale = None if self.intrinsics else camera.scale.log().detach().clone().requires_grad_(True)
        self.identity = ident.detach().clone().requires_grad_(True)
        self.expression = expression.detach().clone().requires_grad_(True)
        self.albedo = (albedo[:1] if shared else albedo).detach().clone().requires_grad_(True)
        self.albedo_coeffs = None if albedo_coeffs is None else albedo_coeffs.detach().clone().requires_grad_(True)
        self.albedo_modes = albedo_modes.detach().clone().requires_grad_(True)
        self.light = light.detach().clone().requires_grad_(True)

    def expand(self, x: Tensor) -> Tensor:
        return x.expand(self.B, *x.shape[1:]) if self.shared else x

    def camera(self, f: float = 1.0) -> Camera:
        if self.intrinsics is not None:
            c = self.intrinsics
            return Perspective(c.focal, c.principal_point, self.rotation, self.translation).rescaled(f)
        return ScaledOrthographic(self.log_scale.exp(), self.rotation, self.translation).rescaled(f)


def fit_photometric(model: MorphableModel, images: Tensor, landmarks: Tensor, *, init: LandmarkFit | None = None,
                    config: PhotometricConfig = PhotometricConfig(), shared_identity: bool = False,
                    albedo: Tensor | None = None, light: Tensor | None = None,
                    identity_net: torch.nn.Module | None = None, depth: RegisteredDepth | None = None,
                    on_step: Callable[[int, Stage, dict[str, float]], None] | None = None) -> PhotometricFit:
    """Fit a model to photos by inverse rendering (see the module docstring).

    Args:
        model: the morphable model (the fit runs on ``config.region``'s vertices when the model has it).
        images: ``(B, H, W, 3)`` photos, RGB in [0, 1] (treated as linear).
        landmarks: ``(B, 68, 2)`` iBUG landmarks (px, nan = missing).
        init: a sparse fit to start from (default: :func:`fit_landmarks` on ``landmarks``); its camera, scaled
            orthographic or a pinhole (:class:`Perspective`, intrinsics kept), is the one fitted.
        config: weights and schedule.
        shared_identity: the photos show one person: one identity and albedo for all.
        albedo: optional starting per-vertex albedo ``(B, V_r, 3)`` on the region's vertices (models without
            an albedo basis); default: the photo's mean skin colour, refined from the photo when the
            schedule first fits albedo.
        light: optional starting SH light ``(B, 9, 3)``; default: solved linearly from the photo.
        identity_net: the face-recognition network for ``config.w_identity_feature`` (default: a
            :class:`~morphable.identity.DlibFaceNet` built on first use).
        depth: depth images registered with ``images`` (:class:`~morphable.fitting.rgbd.RegisteredDepth`,
            ``(B, H, W)`` mm): adds E_geo, fits the sensor's pinhole camera and starts from :func:`fit_rgbd`
            (``init`` then only gives the landmark correspondences).
        on_step: called after every Adam step with the stage's index, the stage and that step's energy
            terms (for progress bars; early stopping may end a stage before ``stage.iterations`` steps).
    Returns:
        :class:`PhotometricFit`.
    """
    if images.dim() != 4 or images.shape[-1] != 3 or landmarks.shape != (images.shape[0], 68, 2):
        raise ValueError(f"fit_photometric: expected images (B, H, W, 3) and landmarks (B, 68, 2), got "
                         f"{tuple(images.shape)} and {tuple(landmarks.shape)}")
    dtype = model.mean.dtype
    images = images.to(dtype)
    landmarks = landmarks.to(dtype)
    B, H, W = images.shape[:3]
    if depth is not None and tuple(depth.depth.shape) != (B, H, W):
        raise ValueError(f"fit_photometric: expected depth (B, H, W) = {(B, H, W)} (registered with the images), "
                         f"got {tuple(depth.depth.shape)}")
    if init is None:
        init = fit_landmarks(model, landmarks)
    start_camera, start_identity, start_expression = init.camera, init.identity, init.expression
    if depth is not None:  # the geometric RGB-D fit: metric shape and the pinhole pose
        rgbd = [fit_rgbd(model, depth.depth[b], depth.focal, depth.principal_point, landmarks[b]) for b in range(B)]
        start_camera = Perspective(torch.full((B,), float(depth.focal), dtype=dtype),
                                   torch.tensor([list(depth.principal_point)] * B, dtype=dtype),
                                   torch.cat([r.camera.rotation for r in rgbd]).to(dtype),
                                   torch.cat([r.camera.translation for r in rgbd]).to(dtype))
        start_identity = torch.stack([r.identity for r in rgbd]).to(dtype)
        start_expression = torch.stack([r.expression for r in rgbd]).to(dtype)

    tables = region_terms(model, config.region, config.albedo_modes)
    sub, tri, region_ids, laplacian, mirror, harmonics = (tables.model, tables.model.triangles, tables.vertex_ids,
                                                          tables.laplacian.to(dtype), tables.mirror, tables.harmonics)
    new_id = torch.full((model.n_vertices,), -1, dtype=torch.int64)
    new_id[region_ids] = torch.arange(len(region_ids))
    # landmark correspondences of the sparse fit (jawline included), as region vertex ids
    lmk_vertex = torch.where(init.landmark_ids >= 0, new_id[init.landmark_ids.clamp_min(0)], -1)
    lmk_used = (lmk_vertex >= 0) & torch.isfinite(landmarks).all(-1)  # (B, 68)
    # zeros, not NaN, at unused landmarks: a NaN target gives NaN gradients even where it is masked out
    lmk_target = torch.where(lmk_used[..., None], landmarks, 0.0)
    lmk_index = lmk_vertex.clamp_min(0)

    # --- initial light (albedo: the model's mean, or the photo's mean skin colour) ------------------
    has_basis = sub.albedo_basis is not None

    f_obs = min(1.0, OBSERVE_SIZE / max(H, W))
    photo_obs = _resize(images, (max(1, round(H * f_obs)), max(1, round(W * f_obs))))

    def observe(identity: Tensor, expression: Tensor, camera: Camera) -> tuple[Tensor, Tensor, Tensor]:
        """Photo colours at the vertices, their weights (visible × skin) and view-frame normals, read from
        the photo shrunk to at most ``OBSERVE_SIZE`` px."""
        verts = sub(identity=identity, expression=expression if sub.n_expression else None).vertices
        cam = camera.rescaled(f_obs)
        proj = cam.project(verts)
        hard = tables.renderer(photo_obs.shape[1:3], soft_silhouette=False)
        ids = hard(verts, cam, colors=torch.ones_like(verts)).triangle_id
        covered = ids >= 0
        image_of = torch.arange(B)[:, None, None].expand_as(ids)[covered]  # (P,) image of each covered pixel
        seen = torch.zeros(B * sub.n_vertices, dtype=torch.bool)
        seen[(image_of[:, None] * sub.n_vertices + tri[ids[covered]]).reshape(-1)] = True
        weight = seen.view(B, sub.n_vertices).to(dtype)
        if config.use_skin_mask:
            weight = weight * sample_image(skin_mask(photo_obs, covered)[..., None], proj)[..., 0]
        normals = vertex_normals(cam.transform(verts), tri, incidence=tables.incidence)
        return sample_image(photo_obs, proj), weight, normals

    with torch.no_grad():
        observed, weight_v, normals_v = observe(start_identity, start_expression, start_camera)
        w = weight_v / weight_v.sum(1, keepdim=True).clamp_min(1e-12)
        mean_skin_colour = (observed * w[..., None]).sum(1, keepdim=True)  # (B, 1, 3)
        if has_basis:
            albedo_coeffs = torch.zeros(B, sub.n_albedo, dtype=dtype)
            albedo0 = sub(identity=start_identity, albedo=albedo_coeffs).colors
        else:
            albedo_coeffs = None
            albedo0 = mean_skin_colour.expand(B, sub.n_vertices, 3) if albedo is None else albedo.to(dtype)
        light0 = solve_light(normals_v, albedo0, observed, weight_v) if light is None else light.to(dtype)
        modes0 = albedo0.new_zeros(1 if shared_identity else B, 0 if has_basis else harmonics.shape[1], 3)
        if not has_basis and albedo is None:  # the smooth albedo from the photo, alternating with the light
            for _ in range(LINEAR_ROUNDS):
                shading = sh_basis(normals_v) @ light0  # (B, V_r, 3)
                modes0 = solve_albedo_modes(observed, weight_v, shading, albedo0, harmonics, shared=shared_identity)
                if light is None:
                    light0 = solve_light(normals_v, albedo0 * (1 + harmonics @ modes0), observed, weight_v)

    var = _Variables(start_camera, start_identity, start_expression, albedo0, light0, albedo_coeffs, shared_identity,
                     modes0)

    def vertex_albedo() -> Tensor:
        """``(1|B, V_r, 3)`` per-vertex factor ⊙ (1 + smooth symmetric modes)."""
        return var.albedo * (1 + harmonics @ var.albedo_modes)

    shape_lr = config.geo_shape_lr_scale if depth is not None else 1.0
    tensors = {"rotation": (var.rotation, config.lr_rotation), "translation": (var.translation, config.lr_translation),
               "identity": (var.identity, shape_lr * config.lr_identity),
               "expression": (var.expression, shape_lr * config.lr_expression), "light": (var.light, config.lr_light),
               "albedo": (var.albedo_coeffs if has_basis else var.albedo, config.lr_albedo),
               "albedo_lowfreq": (var.albedo_coeffs if has_basis else var.albedo_modes, config.lr_albedo)}
    if var.log_scale is not None:
        tensors["log_scale"] = (var.log_scale, config.lr_log_scale)
    groups = {"pose": ("rotation", "translation") + (("log_scale",) if var.log_scale is not None else ()),
              "shape": ("identity", "expression") if sub.n_expression else ("identity",),
              "light": ("light",), "albedo": ("albedo",), "albedo_lowfreq": ("albedo_lowfreq",)}
    # one Adam over every variable for the whole schedule: a stage moves only its variables (the others
    # do not require a gradient, so Adam skips them), and a variable keeps its moment estimates from one
    # stage to the next (a fresh Adam's first steps are ±lr on every coordinate: the energy jumped at
    # each new stage)
    unique: dict[int, tuple[Tensor, float]] = {id(t): (t, lr) for t, lr in tensors.values()}
    # fused: one kernel per variable instead of a dozen small ops (0.29 against 0.66 ms per step on CPU)
    opt = torch.optim.Adam([{"params": [t], "lr": lr, "initial_lr": lr} for t, lr in unique.values()], fused=True)
    taken: dict[int, int] = {}  # Adam steps taken by each variable (for the warm-up)
    blendshapes = sub.expression_kind == "blendshapes"

    use_idf = config.w_identity_feature > 0
    if use_idf:
        from morphable.identity import DlibFaceNet, extract_face_chips
        from morphable.losses.identity import identity_loss

        net = (identity_net or DlibFaceNet()).to(dtype)
        # chips need all 68 points: missing ones are taken from the sparse fit's projection
        chip_landmarks = torch.where(torch.isfinite(landmarks), landmarks, init.landmarks_fitted.to(dtype))

    def descriptor_target(target: Tensor, f: float) -> Tensor | None:
        """Descriptors of the photo's face chips at a stage's size (no gradient), or None when off."""
        if not use_idf:
            return None
        with torch.no_grad():
            return net(extract_face_chips(target, rescale_pixels(chip_landmarks, f)))

    if depth is not None:
        depth_points = [back_project(depth.depth[b], depth.focal, depth.principal_point) for b in range(B)]
        pair_generator = torch.Generator().manual_seed(0)  # the subsets of depth pairs: the same in every run

    def geo_energy(verts: Tensor) -> Tensor:
        """E_geo (mm²) of the region meshes ``(B, V_r, 3)``, the mean over the images."""
        Xc = var.camera().transform(verts)
        return torch.stack([point_to_plane_energy(Xc[b], tri, depth_points[b], depth.focal, depth.principal_point,
                                                  robust_scale_mm=config.geo_robust_mm,
                                                  max_distance_mm=config.geo_max_distance_mm,
                                                  max_pixels=config.geo_max_pixels, generator=pair_generator)
                            for b in range(B)]).mean()

    def geometry_terms(screen: Tensor, ident: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """The landmark term (px² at :data:`REFERENCE_SIZE`) and the identity and expression priors, from the
        region's screen vertices ``(B, V_r, 2|3)`` at a stage's size."""
        lmk2d = screen.gather(1, lmk_index[..., None].expand(-1, -1, screen.shape[-1]))[..., :2]
        d2 = ((lmk2d - rescale_pixels(lmk_target, size / max(H, W))) ** 2).sum(-1) * (REFERENCE_SIZE / size) ** 2
        e_lan = torch.where(lmk_used, d2, 0.0).sum() / lmk_used.sum().clamp_min(1)
        e_exp = (var.expression ** 2).sum(-1).mean() if sub.n_expression else ident.new_zeros(())
        return e_lan, prior_loss(ident), e_exp

    def hold_geometry(size: int, renderer: Renderer) -> _HeldGeometry:
        """A stage that moves neither pose nor shape: rasterise once, and score its geometry terms once."""
        with torch.no_grad():
            ident = var.expand(var.identity)
            verts = sub(identity=ident, expression=var.expression if sub.n_expression else None).vertices
            cam = var.camera(size / max(H, W))
            fixed = renderer.fix_geometry(verts, cam)
            return _HeldGeometry(fixed, geometry_terms(fixed.coverage.screen, ident, size),
                                 None if depth is None else geo_energy(verts))

    def energy(size: int, target: Tensor, renderer: Renderer | _HeldGeometry, skin_w: Tensor | None,
               displacement: Tensor | None = None, target_descriptor: Tensor | None = None,
               priors: ModeSpacePriors | None = None) -> tuple[Tensor, dict[str, float], object, Tensor | None]:
        """The total energy, its named terms, the rendering and E_geo (``None`` without depth). In a stage that
        holds the geometry ``renderer`` is its :class:`_HeldGeometry`: only the albedo and light terms move;
        in one that holds the per-vertex albedo factor the smoothness and symmetry priors are ``priors``."""
        f = size / max(H, W)
        rho = None if has_basis else vertex_albedo()  # (1|B, V_r, 3), also the albedo priors' argument
        if isinstance(renderer, _HeldGeometry):
            e_lan, e_id, e_exp = renderer.terms
            albedo = sub(albedo=var.expand(var.albedo_coeffs)).colors if has_basis else var.expand(rho)
            rend = renderer.fixed.render(colors=albedo, sh=var.light, background=target)
        else:
            ident = var.expand(var.identity)
            out = sub(identity=ident, expression=var.expression if sub.n_expression else None,
                      albedo=var.expand(var.albedo_coeffs) if has_basis else None)
            verts = out.vertices
            if displacement is not None:
                verts = displace(verts, tri, displacement, incidence=tables.incidence)
            albedo = out.colors if has_basis else var.expand(rho)
            cam = var.camera(f)
            rend = renderer(verts, cam, colors=albedo, sh=var.light, background=target)
            e_lan, e_id, e_exp = geometry_terms(rend.screen, ident, size)  # (the render's projection, reused)
        m = (rend.alpha > 0).to(dtype)
        if skin_w is not None:
            m = m * skin_w
        e_con = photometric_loss(rend.image, target, m, kind=config.robust)
        total = config.w_photo * e_con + config.w_landmark * e_lan + config.w_identity * e_id
        total = total + (config.w_blendshape if blendshapes else config.w_expression) * e_exp
        terms = {"photometric": e_con.item(), "landmark_px2": e_lan.item(), "identity_prior": e_id.item(),
                 "expression_prior": e_exp.item()}
        if has_basis:
            e_alb = prior_loss(var.albedo_coeffs)
            total = total + config.w_albedo_coeffs * e_alb
            terms["albedo_prior"] = e_alb.item()
        else:
            if priors is not None:
                e_smooth, e_sym = priors(var.albedo_modes)
            else:
                e_smooth = laplacian_loss(rho, laplacian) / sub.n_vertices
                e_sym = vertex_symmetry_loss(rho, mirror)
            e_mean = ((var.albedo - mean_skin_colour[:1] if var.shared else var.albedo - mean_skin_colour) ** 2).sum(-1).mean()
            total = total + config.w_albedo_smooth * e_smooth + config.w_albedo_symmetry * e_sym \
                + config.w_albedo_mean * e_mean
            terms.update(albedo_smooth=e_smooth.item(), albedo_symmetry=e_sym.item(), albedo_mean=e_mean.item())
        if target_descriptor is not None:
            e_idf = identity_loss(target_descriptor, net(extract_face_chips(rend.image, rescale_pixels(chip_landmarks, f))))
            total = total + config.w_identity_feature * e_idf
            terms["identity_feature"] = e_idf.item()
        e_geo = None
        if depth is not None:
            e_geo = renderer.geo if isinstance(renderer, _HeldGeometry) else geo_energy(verts)
            total = total + config.w_geo * e_geo
            terms["geo_mm2"] = e_geo.item()
        terms["total"] = total.item()
        return total, terms, rend, e_geo

    history: list[dict[str, float]] = []
    with torch.no_grad():  # the starting point, scored like the result below (full size, no skin mask)
        _, initial_terms, _, _ = energy(max(H, W), images, tables.renderer((H, W)), None)
    albedo_from_photo = False
    for stage_index, stage in enumerate(config.schedule):
        unknown = set(stage.variables) - set(groups)
        if unknown:
            raise ValueError(f"fit_photometric: unknown variable group(s) {sorted(unknown)} in the schedule")
        size, n_iter = stage.size, stage.iterations
        f = size / max(H, W)
        h, w = max(1, round(H * f)), max(1, round(W * f))
        target = _resize(images, (h, w))
        renderer = tables.renderer((h, w))
        # a stage that moves neither pose nor shape rasterises once, then only re-shades
        held = None if {"pose", "shape"} & set(stage.variables) else hold_geometry(size, renderer)
        skin_w = None
        if config.use_skin_mask:
            with torch.no_grad():
                if held is not None:
                    covered = held.fixed.coverage.ids >= 0
                else:
                    verts = sub(identity=var.expand(var.identity),
                                expression=var.expression if sub.n_expression else None).vertices
                    covered = renderer(verts, var.camera(f), colors=torch.ones_like(verts)).triangle_id >= 0
                skin_w = skin_mask(target, covered)
        target_descriptor = descriptor_target(target, f)
        if "albedo" in stage.variables and not has_basis and not albedo_from_photo and albedo is None:
            with torch.no_grad():  # Zhang et al.: ρ = β ρ_c + (1 − β) C_I / (Lᵀφ(n)) once geometry is fitted
                observed, weight_v, normals_v = observe(var.expand(var.identity), var.expression, var.camera())
                shading = (sh_basis(normals_v) @ var.light).clamp_min(0.05)  # (B, V_r, 3)
                ratio = (observed / shading).clamp(0, 1.5)
                current = var.expand(vertex_albedo())
                blend = torch.where(weight_v[..., None] > 0, ALBEDO_BETA * current + (1 - ALBEDO_BETA) * ratio, current)
                factor = blend / (1 + harmonics @ var.expand(var.albedo_modes)).clamp_min(0.1)
                var.albedo.copy_(factor.mean(0, keepdim=True) if var.shared else factor)
            albedo_from_photo = True
        active = {id(tensors[name][0]) for group in stage.variables for name in groups[group]}
        if held is not None:
            renderer = held
        priors = None
        if "albedo" not in stage.variables and not has_basis:  # ρ_v held: the priors are forms in the modes
            shape = torch.broadcast_shapes(var.albedo.shape[:1], var.albedo_modes.shape[:1]) + var.albedo.shape[1:]
            priors = ModeSpacePriors.build(var.albedo.detach().expand(shape), harmonics, laplacian, mirror)
        for key, (t, _) in unique.items():
            t.requires_grad_(key in active)
        best = float("inf")
        since = 0
        for step in range(n_iter):
            for group in opt.param_groups:  # linear warm-up over each variable's first steps
                t = group["params"][0]
                if t.requires_grad:
                    taken[id(t)] = taken.get(id(t), 0) + 1
                    group["lr"] = group["initial_lr"] * min(1.0, taken[id(t)] / max(config.warmup, 1))
            opt.zero_grad()
            total, step_terms, _, _ = energy(size, target, renderer, skin_w, target_descriptor=target_descriptor,
                                             priors=priors)
            total.backward()
            opt.step()
            with torch.no_grad():
                if blendshapes:
                    var.expression.clamp_(0, 1)
                var.albedo.clamp_(0, 1.5)
            step_terms["size"] = size
            history.append(step_terms)
            if on_step is not None:
                on_step(stage_index, stage, step_terms)
            if step_terms["total"] < best * (1 - config.tolerance):
                best, since = step_terms["total"], 0
            elif step >= config.warmup:  # (the energy may rise while the step sizes warm up)
                since += 1
                if since >= config.patience:
                    break
    for t, _ in unique.values():
        t.requires_grad_(True)

    displacement = None
    if config.detail_iterations > 0:
        target = _resize(images, (H, W))
        renderer = tables.renderer((H, W))
        d = torch.zeros(B, sub.n_vertices, dtype=dtype, requires_grad=True)
        opt = torch.optim.Adam([d], lr=0.05)
        for _ in range(config.detail_iterations):
            opt.zero_grad()
            _, terms, rend, e_geo = energy(max(H, W), target, renderer, None, displacement=d)
            m = (rend.alpha > 0).to(dtype)
            e = photometric_loss(rend.image, target, m, kind=config.robust) + config.mu1 * (d ** 2).mean() \
                + config.mu2 * laplacian_loss(d, laplacian, p=1) / sub.n_vertices
            if e_geo is not None:
                e = e + config.w_geo * e_geo
            e.backward()
            opt.step()
            history.append({**terms, "detail_total": e.item(), "size": max(H, W)})
        displacement = d.detach()

    with torch.no_grad():
        renderer = tables.renderer((H, W))
        _, final_terms, rend, _ = energy(max(H, W), images, renderer, None, displacement=displacement)
        ident = var.expand(var.identity).detach()
        full = model(identity=ident, expression=var.expression.detach() if model.n_expression else None).vertices
        albedo = (sub(identity=ident, albedo=var.expand(var.albedo_coeffs)).colors if has_basis
                  else var.expand(vertex_albedo())).detach()
    final_terms["initial"] = initial_terms
    camera = var.camera()
    return PhotometricFit(
        identity=ident, expression=var.expression.detach(), albedo=albedo,
        albedo_coefficients=None if not has_basis else var.expand(var.albedo_coeffs).detach(),
        light=var.light.detach(),
        camera=type(camera)(*(getattr(camera, k.name).detach() for k in fields(camera))),
        vertices=full, region_vertices=region_ids, region_triangles=tri, displacement=displacement,
        render=rend.image.detach(), alpha=rend.alpha.detach(), energies=final_terms, history=history,
    )


def photometric_error(fit_render: Tensor, images: Tensor, alpha: Tensor) -> float:
    """Mean per-pixel colour distance (L2 norm, RGB) over the rendered face pixels — the figure compared
    between the sparse and the photometric fit on real photos."""
    m = alpha > 0.5
    return float(((fit_render - images) ** 2).sum(-1).sqrt()[m].mean())


