"""RGB-D fitting: identity, expression and a rigid pose from 68 landmarks and a depth image (E_geo), and the
seed's refined basis ``A′`` regularised by ``E_regA``.

The geometry term of Zhang's group's RGB-D tracker (seed ``zhang-deep-3d-face-modeling``; Guo et al.,
"Self-supervised CNN for Unconstrained 3D Facial Performance Capture from an RGB-D Camera", arXiv
1808.05323), here minimised by Gauss–Newton instead of learnt:

    E(χ) = E_geo + E_lan + E_reg,
    E_geo = Σ_x ρ(n_x · (X_x(χ) − q_x)) / σ_geo²       (point-to-plane over depth pixels x, mm),
    E_lan = Σ_l ‖Pr(R X_l + t) − u_l‖² (d_l / f)² / σ_lan²   (2-D landmarks, px scaled to mm at the face),
    E_reg = λ_id ‖α‖² + λ_exp ‖β‖²                          (standardised coefficients).

**Association, per depth pixel** (model-to-frame, as in dense RGB-D registration): the current face mesh
(the model's ``face`` region) is rasterised into the depth camera (:func:`~morphable.render.rasterize.rasterize`,
perspective-correct, back faces culled, so the model's own occlusions are resolved); every covered pixel
``x`` with a depth sample pairs the sensor point ``q_x`` (the back-projected depth) with the mesh point
``X_x = Σ_i b_i X_{v_i}`` hit by that pixel's ray, and ``n_x`` is the mesh's interpolated vertex normal
there. Using every pixel rather than one depth sample per vertex, and the model's normals rather than
normals differentiated from the noisy depth, halves the error on synthetic ICT faces (0.5 mm noise: the
vertex-sampled fit's minimum lies 0.4–0.5 mm from the truth when started *at* the truth, this one's
0.16–0.25 mm; ``docs/tracking.md``). Pairs farther apart than ``max_distance_mm`` are dropped and the
rest weighted by Geman–McClure, ``w = 1 / (1 + (r/s)²)²`` (IRLS): depth of things the model does not
have (eyelashes, hair, the eyeballs seen through the lids' gap) and silhouette pixels that hit the
background surface are outliers, not noise.

**Schedule.** The pose starts from the rigid (Kabsch) alignment of the mean face's landmarks to the
landmarks lifted by the depth; the prior precisions start ``prior_start`` times higher and fall ×10 every
3 steps to their values (continuation): the first steps move the pose and the dominant modes only, so the
projective association is not chased by 150 free coefficients from a pose a few degrees off.

**Refined basis** (:func:`refine_basis`): the seed's ``E(A′_r, χ)`` with
``E_regA(A′) = w_Areg ‖A′ − A‖² + w_Asmo ‖Δ(A′ − A)‖²``, after the coefficient fit, for one depth frame.

Not here: the photometric term (E_col); :func:`fit_rgbd` is the geometric counterpart of the RGB-only
landmark fit, which the tests and ``benchmarks/rgbd_bench.py`` compare it with. Everything runs in float64
on the CPU (the sparse Jacobians and the refinement's solve are scipy's).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import Tensor

from morphable.fitting.landmarks import SIGMA_MM, fit_terms
from morphable.fitting.shape import solve_coefficients
from morphable.geometry.align import umeyama
from morphable.geometry.camera import Perspective
from morphable.geometry.laplacian import uniform_laplacian
from morphable.geometry.mesh import submesh, vertex_normals
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle, skew
from morphable.models.base import MorphableModel
from morphable.render.rasterize import rasterize


@dataclass(frozen=True)
class RGBDFit:
    """Result of :func:`fit_rgbd` (float64).

    Attributes:
        identity: ``(K,)``; expression: ``(Ke,)`` standardised coefficients / blendshape weights.
        camera: :class:`Perspective` (batch 1): the sensor's intrinsics and the fitted model → camera pose.
        vertices: ``(V, 3)`` mm, model space.
        rms_geo_mm: RMS point-to-plane distance over the final depth pairs (mm; outliers included);
        pairs: their number.
    """

    identity: Tensor
    expression: Tensor
    camera: Perspective
    vertices: Tensor
    rms_geo_mm: float
    pairs: int


@dataclass(frozen=True)
class DepthPairs:
    """Per-pixel E_geo correspondences (:func:`depth_pairs`), float64.

    Attributes:
        corners: ``(N, 3)`` int64 vertices (of the rasterised mesh) of the triangle each pixel's ray hits.
        barycentric: ``(N, 3)`` perspective-correct barycentrics of the hit point in that triangle.
        points: ``(N, 3)`` back-projected sensor points ``q`` (camera frame, mm).
        normals: ``(N, 3)`` unit mesh normals at the hit points (camera frame).
        residual: ``(N,)`` mm, ``n · (X − q)`` (positive: the mesh lies in front of the sensor's surface).
    """

    corners: Tensor
    barycentric: Tensor
    points: Tensor
    normals: Tensor
    residual: Tensor


@dataclass(frozen=True)
class RegisteredDepth:
    """Depth images registered with photos: the same pixel grid and the same pinhole camera (an RGB-D
    sensor's depth aligned to its colour camera), for :func:`~morphable.fitting.photometric.fit_photometric`'s
    E_geo.

    Attributes:
        depth: ``(B, H, W)`` mm along the viewing axis (NaN, 0 or inf = hole).
        focal: px; principal_point: ``(c_x, c_y)`` px.
    """

    depth: Tensor
    focal: float
    principal_point: tuple[float, float]


def back_project(depth: Tensor, focal: float, principal_point: tuple[float, float]) -> Tensor:
    """``(H, W)`` depth (mm along the viewing axis; NaN/0/inf = hole) → ``(H, W, 3)`` camera-frame points
    (mm; the camera looks along −z, as :class:`Perspective`), NaN at holes."""
    H, W = depth.shape
    hole = torch.tensor(float("nan"), dtype=torch.float64)
    d = torch.where(torch.isfinite(depth) & (depth > 0), depth.double(), hole)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return torch.stack([(u - principal_point[0]) * d / focal, -(v - principal_point[1]) * d / focal, -d], -1)


def _project(Xc: Tensor, focal: float, principal_point: tuple[float, float]) -> Tensor:
    """Camera-frame points ``(N, 3)`` → ``(N, 3)`` of ``(u px, v px, depth mm)``: :meth:`Perspective.project_view`
    of the intrinsics."""
    zero = Xc.new_zeros(1, 3)
    return Perspective(Xc.new_tensor([focal]), Xc.new_tensor([principal_point]), zero, zero).project_view(Xc[None])[0]


def depth_pairs(vertices: Tensor, triangles: Tensor, points: Tensor, focal: float,
                principal_point: tuple[float, float], *, max_distance_mm: float = 10.0, max_pixels: int | None = None,
                generator: torch.Generator | None = None) -> DepthPairs:
    """Pair every depth pixel the mesh covers with the mesh point its ray hits (module docstring).

    Args:
        vertices: ``(V, 3)`` mesh in the camera frame (mm; the camera at the origin looking along −z).
        triangles: ``(F, 3)`` int64, counter-clockwise seen from outside (back faces are culled).
        points: ``(H, W, 3)`` back-projected depth (:func:`back_project`; NaN at holes).
        max_distance_mm: pairs with ``‖X − q‖`` above this are dropped.
        max_pixels: keep at most this many pairs (a random subset drawn with ``generator``); None: all.
    Returns:
        :class:`DepthPairs`.
    """
    H, W = points.shape[:2]
    with torch.no_grad():
        frags = rasterize(_project(vertices, focal, principal_point)[None], triangles, (H, W), cull_backfaces=True,
                          perspective=True)
    tid = frags.triangle_id[0].reshape(-1)
    flat = points.reshape(-1, 3)
    pix = torch.nonzero((tid >= 0) & torch.isfinite(flat).all(-1))[:, 0]
    b = frags.barycentric[0].reshape(-1, 3)[pix].to(torch.float64)
    corners = triangles[tid[pix]]
    q = flat[pix]
    X = (b[..., None] * vertices[corners]).sum(1)  # out[n] = Σ_i b[n,i] · V[corners[n,i]]
    vn = vertex_normals(vertices[None], triangles)[0]
    n = (b[..., None] * vn[corners]).sum(1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # clamp: a degenerate corner fan gives no nan
    keep = torch.nonzero((X - q).norm(dim=-1) < max_distance_mm)[:, 0]
    if max_pixels is not None and keep.numel() > max_pixels:
        keep = keep[torch.randperm(keep.numel(), generator=generator)[:max_pixels]]
    r = (n[keep] * (X[keep] - q[keep])).sum(-1)
    return DepthPairs(corners[keep], b[keep], q[keep], n[keep], r)


def geman_mcclure_weights(residual: Tensor, scale: float) -> Tensor:
    """IRLS weights of the Geman–McClure loss ``ρ(r) = (r²/2) / (1 + r²/s²)``: ``w = ρ′(r)/r = 1 / (1 + r²/s²)²``
    (``(N,)`` → ``(N,)``; 1 at r = 0, 1/4 at r = s, → 0 for outliers)."""
    return 1.0 / (1.0 + (residual / scale) ** 2) ** 2


def point_to_plane_energy(vertices: Tensor, triangles: Tensor, points: Tensor, focal: float,
                          principal_point: tuple[float, float], *, robust_scale_mm: float = 1.0,
                          max_distance_mm: float = 10.0, max_pixels: int | None = None,
                          generator: torch.Generator | None = None) -> Tensor:
    """E_geo of one mesh as a differentiable scalar (mm²), for gradient-based fits:
    ``Σ_x w_x r_x² / Σ_x w_x`` with ``r_x = n_x · (X_x − q_x)``.

    The pairs (:func:`depth_pairs`: triangle, barycentrics, sensor point ``q_x``, normal ``n_x``) and the
    Geman–McClure weights ``w_x`` (:func:`geman_mcclure_weights`) are taken at the current mesh and held
    fixed; ``X_x`` is the barycentric combination of the differentiable ``vertices``. With ``w`` fixed, the
    gradient of ``½ Σ w r²`` is that of ``Σ ρ(r)`` (``ρ′(r) = w r``): an IRLS step's energy.

    Args:
        vertices: ``(V, 3)`` mesh in the camera frame (mm), any float dtype, may require grad.
        triangles, points, focal, principal_point, max_distance_mm, max_pixels, generator: as :func:`depth_pairs`.
        robust_scale_mm: the Geman–McClure scale ``s``.
    Returns:
        ``()`` in ``vertices``' dtype; 0 (with a zero gradient) when no pixel pairs.
    """
    pairs = depth_pairs(vertices.detach().double(), triangles, points, focal, principal_point,
                        max_distance_mm=max_distance_mm, max_pixels=max_pixels, generator=generator)
    if pairs.residual.numel() == 0:
        return vertices.sum() * 0
    dtype = vertices.dtype
    X = (pairs.barycentric.to(dtype)[..., None] * vertices[pairs.corners]).sum(1)  # out[n] = Σ_i b[n,i] · V[corners[n,i]]
    r = (pairs.normals.to(dtype) * (X - pairs.points.to(dtype))).sum(-1)
    w = geman_mcclure_weights(pairs.residual, robust_scale_mm).to(dtype)
    return (w * r**2).sum() / w.sum().clamp_min(1e-12)


def pixel_matrix(pairs: DepthPairs, rotation: Tensor, n_vertices: int) -> sp.csr_matrix:
    """``(N, 3V)`` sparse ``M`` with ``(M δ)_x = n_xᵀ R Σ_i b_i δ_{v_i}``: the rows of ∂r/∂(vertex positions) for a
    model-space displacement ``δ`` flattened as ``[x₀ y₀ z₀ x₁ …]`` (``M @ B`` is ∂r/∂c for a basis ``B (3V, P)``).

    Args:
        pairs: :class:`DepthPairs` of a mesh with ``n_vertices`` vertices; rotation: ``(3, 3)`` model → camera.
    """
    N = pairs.residual.numel()
    nR = (pairs.normals @ rotation).numpy()  # (N, 3): rows (Rᵀ n)ᵀ, so nᵀ R δ = (Rᵀ n) · δ
    rows = np.repeat(np.arange(N), 9)
    cols = (pairs.corners.numpy()[:, :, None] * 3 + np.arange(3)[None, None, :]).reshape(-1)
    vals = (pairs.barycentric.numpy()[:, :, None] * nR[:, None, :]).reshape(-1)
    return sp.csr_matrix((vals, (rows, cols)), shape=(N, n_vertices * 3))


def geo_jacobian(pairs: DepthPairs, rotated: Tensor, rotation: Tensor, basis: Tensor) -> Tensor:
    """``(N, 6 + P)`` Jacobian of the E_geo residuals ``r_x = n_xᵀ (R Σ_i b_i X_{v_i}(c) + t) − n_xᵀ q_x`` with the
    pairs held fixed, in (left rotation increment ω, translation t, coefficients c):
    ``∂r/∂ω = (R X_x) × n_x``, ``∂r/∂t = n_x``, ``∂r/∂c = n_xᵀ R Σ_i b_i B_{v_i}``.

    Args:
        pairs: :class:`DepthPairs`; rotated: ``(V, 3)`` the model-space mesh rotated (``X Rᵀ``, no translation);
        rotation: ``(3, 3)``; basis: ``(3V, P)`` the flattened basis rows of the same vertices.
    """
    RXx = (pairs.barycentric[..., None] * rotated[pairs.corners]).sum(1)  # out[n] = Σ_i b[n,i] · RX[corners[n,i]]
    Jc = torch.from_numpy(pixel_matrix(pairs, rotation, len(rotated)) @ basis.numpy())
    return torch.cat([torch.cross(RXx, pairs.normals, dim=-1), pairs.normals, Jc], 1)


def landmark_jacobian(model_points: Tensor, rotation: Tensor, translation: Tensor, basis: Tensor, focal: float,
                      principal_point: tuple[float, float], landmarks: Tensor) -> tuple[Tensor, Tensor]:
    """E_lan's residuals and Jacobian: pinhole reprojection error of model points, in px × ``d/f`` (mm at each
    point's depth ``d``, the factor held fixed), in (ω, t, c) as :func:`geo_jacobian`.

    Args:
        model_points: ``(L, 3)`` model-space points ``X_l(c)``; basis: ``(L, 3, P)`` their basis rows;
        rotation ``(3, 3)``, translation ``(3,)``: model → camera; landmarks: ``(L, 2)`` px.
    Returns:
        residuals ``(2L,)`` (x, y interleaved) and Jacobian ``(2L, 6 + P)``.
    """
    RX = model_points @ rotation.T
    Xc = RX + translation
    uvd = _project(Xc, focal, principal_point)
    d = uvd[:, 2]
    mm = d / focal  # mm per px at each point's depth
    res = ((uvd[:, :2] - landmarks) * mm[:, None]).reshape(-1)
    Jp = torch.zeros(len(Xc), 2, 3, dtype=Xc.dtype)  # ∂(u, v)/∂X_c of the pinhole, d = −z_c
    Jp[:, 0, 0], Jp[:, 0, 2] = focal / d, focal * Xc[:, 0] / d**2
    Jp[:, 1, 1], Jp[:, 1, 2] = -focal / d, -focal * Xc[:, 1] / d**2
    # ∂X_c/∂(ω, t, c) = [−[R X]_×, I, R B]
    JX = torch.cat([-skew(RX), torch.eye(3, dtype=Xc.dtype).expand(len(Xc), 3, 3), rotation @ basis], -1)
    return res, ((Jp @ JX) * mm[:, None, None]).reshape(-1, JX.shape[-1])


def _face_mesh(model: MorphableModel):
    """The ``face`` region as a submesh (all vertices when the model has no such region)."""
    return submesh(model.triangles, model.region_ids("face"), model.n_vertices)


def fit_rgbd(model: MorphableModel, depth: Tensor, focal: float, principal_point: tuple[float, float],
             landmarks: Tensor, *, iterations: int = 10, sigma_geo_mm: float = 1.0, robust_scale_mm: float = 1.0,
             sigma_landmark_mm: float = SIGMA_MM, lambda_identity: float = 1.0, lambda_expression: float = 1.0,
             prior_start: float = 100.0, max_distance_mm: float = 10.0, max_pixels: int = 30000) -> RGBDFit:
    """Fit the model to a registered depth image and its 68 landmarks (module docstring).

    Args:
        depth: ``(H, W)`` mm (NaN, 0 or inf for holes); focal, principal_point: the depth camera's pinhole
            intrinsics in its pixels (the landmarks must be in the same pixels, i.e. registered RGB-D).
        landmarks: ``(68, 2)`` px (NaN = missing); the jawline is not used (it lies on the outline, where
            dlib's points slide).
        iterations: Gauss–Newton steps (each re-rasterises and re-associates the depth pairs).
        sigma_geo_mm: E_geo's noise σ; robust_scale_mm: its Geman–McClure scale ``s``.
        sigma_landmark_mm: E_lan's σ, in mm at the face (the landmark fit's :data:`SIGMA_MM`).
        lambda_identity, lambda_expression: prior precisions (1: the standardised prior).
        prior_start: the prior's factor at the first step (falls ×10 every 3 steps to 1).
        max_distance_mm: depth pairs farther apart are outliers; max_pixels: most depth pairs per step.
    Returns:
        :class:`RGBDFit`.
    Raises:
        ValueError: a depth image that is not 2-D, landmarks not ``(68, 2)``, or fewer than 4 non-jaw
            landmarks with depth.
    """
    if depth.dim() != 2:
        raise ValueError(f"fit_rgbd: expected depth (H, W), got {tuple(depth.shape)}")
    if tuple(landmarks.shape) != (68, 2):
        raise ValueError(f"fit_rgbd: expected landmarks (68, 2), got {tuple(landmarks.shape)}")
    f64 = torch.float64
    terms = fit_terms(model)
    K, Ke = model.n_identity, model.n_expression
    points = back_project(depth, focal, principal_point)
    H, W = depth.shape
    lm = torch.as_tensor(landmarks, dtype=f64)
    use = terms.landmark_mask.clone()
    use[:17] = False
    use &= torch.isfinite(lm).all(-1)
    # landmarks lifted to 3D, for the starting pose only
    pix = torch.round(torch.nan_to_num(lm, nan=-1.0)).long()
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < W) & (pix[:, 1] >= 0) & (pix[:, 1] < H)
    Q = torch.full((68, 3), float("nan"), dtype=f64)
    Q[inside] = points[pix[inside, 1], pix[inside, 0]]
    lifted = use & torch.isfinite(Q).all(-1)
    if int(lifted.sum()) < 4:
        raise ValueError(f"fit_rgbd: {int(lifted.sum())} landmarks have depth (need at least 4)")
    lm_mean, lm_basis = terms.landmark_mean[use], terms.landmark_basis[use]
    start = umeyama(terms.landmark_mean[lifted].numpy(), Q[lifted].numpy(), scale=False)
    R = torch.as_tensor(start.rotation, dtype=f64)
    t = torch.as_tensor(start.translation, dtype=f64)
    # E_geo over the face mesh
    face = _face_mesh(model)
    basis = torch.cat([model.identity_basis, model.expression_basis], -1) if Ke else model.identity_basis
    P = K + Ke
    v_mean, v_basis = model.mean.to(f64)[face.vertex_ids], basis.to(f64)[face.vertex_ids]  # (Vf, 3), (Vf, 3, P)
    B_flat = v_basis.reshape(-1, P)
    c = torch.zeros(P, dtype=f64)
    prior = torch.tensor([lambda_identity] * K + [lambda_expression] * Ke, dtype=f64)
    inf = float("inf")
    lo_e, hi_e = (0.0, 1.0) if model.expression_kind == "blendshapes" else (-inf, inf)
    lower = torch.tensor([-inf] * (6 + K) + [lo_e] * Ke, dtype=f64)
    upper = torch.tensor([inf] * (6 + K) + [hi_e] * Ke, dtype=f64)
    gen = torch.Generator().manual_seed(0)
    for step in range(iterations + 1):
        X = v_mean + v_basis @ c  # (Vf, 3) model space
        RX = X @ R.T
        pairs = depth_pairs(RX + t, face.triangles, points, focal, principal_point, max_distance_mm=max_distance_mm,
                            max_pixels=max_pixels, generator=gen)
        if step == iterations:
            break
        r = pairs.residual
        w = geman_mcclure_weights(r, robust_scale_mm) / sigma_geo_mm**2
        J = geo_jacobian(pairs, RX, R, B_flat)
        Hm = (J.T * w) @ J
        gv = -(J.T @ (w * r))
        res, JL = landmark_jacobian(lm_mean + lm_basis @ c, R, t, lm_basis, focal, principal_point, lm[use])
        Hm += JL.T @ JL / sigma_landmark_mm**2
        gv -= JL.T @ res / sigma_landmark_mm**2
        # E_reg, with the continuation factor
        lam = prior * max(1.0, prior_start * 10.0 ** (-step / 3))
        Hm[6:, 6:] += torch.diag(lam)
        gv[6:] -= lam * c
        Hm[:6, :6] += 1e-9 * torch.eye(6, dtype=f64)
        x = torch.cat([torch.zeros(6, dtype=f64), c])
        delta = solve_coefficients(Hm[None], gv[None], (lower - x)[None], (upper - x)[None])[0]
        R = axis_angle_to_matrix(delta[None, :3])[0] @ R
        t = t + delta[3:6]
        c = torch.maximum(torch.minimum(c + delta[6:], upper[6:]), lower[6:])
    identity, expression = c[:K], c[K:]
    with torch.no_grad():
        vertices = model(identity=identity[None].to(model.mean.dtype),
                         expression=expression[None].to(model.mean.dtype) if Ke else None).vertices[0].double()
    camera = Perspective(torch.tensor([float(focal)], dtype=f64), torch.tensor([list(principal_point)], dtype=f64),
                         matrix_to_axis_angle(R[None]), t[None])
    r = pairs.residual
    return RGBDFit(identity=identity, expression=expression, camera=camera, vertices=vertices,
                   rms_geo_mm=float(r.pow(2).mean().sqrt()) if r.numel() else float("nan"), pairs=int(r.numel()))


def basis_regulariser(basis_change: Tensor, laplacian: Tensor, w_reg: float, w_smooth: float) -> Tensor:
    """The seed's ``E_regA(A′) = w_Areg ‖A′ − A‖² + w_Asmo ‖Δ(A′ − A)‖²`` (scalar).

    Args:
        basis_change: ``(V, 3, P)`` ``A′ − A`` (mm per unit coefficient).
        laplacian: ``(V, V)`` mesh Laplacian Δ (dense or sparse), applied to every coordinate and column.
    """
    V = basis_change.shape[0]
    smooth = laplacian @ basis_change.reshape(V, -1)  # (V, 3P): Δ on each coordinate of each column
    return w_reg * basis_change.pow(2).sum() + w_smooth * smooth.pow(2).sum()


@dataclass(frozen=True)
class RefinedBasis:
    """Result of :func:`refine_basis`: the refined basis ``A′ = A + δ cᵀ / ‖c‖²`` of one depth frame (float64).

    Attributes:
        offset: ``(V, 3)`` mm, ``δ = (A′ − A) c`` (zero off the ``face`` region): the fitted face is
            ``vertices = model(c) + offset``.
        coefficients: ``(P,)`` the fit's ``c = [α; β]`` that ``A′`` is refined for.
        vertices: ``(V, 3)`` mm, model space, the refined face.
        rms_geo_mm: RMS point-to-plane distance over the final depth pairs; pairs: their number.
    """

    offset: Tensor
    coefficients: Tensor
    vertices: Tensor
    rms_geo_mm: float
    pairs: int

    def basis_change(self) -> Tensor:
        """``(V, 3, P)`` ``A′ − A = δ cᵀ / ‖c‖²`` (add it to ``cat([identity_basis, expression_basis], −1)``)."""
        c = self.coefficients
        return torch.einsum("vk,p->vkp", self.offset, c / c.pow(2).sum())  # out[v,k,p] = δ[v,k] c[p] / ‖c‖²


def refine_basis(model: MorphableModel, fit: RGBDFit, depth: Tensor, *, w_reg: float = 1.0, w_smooth: float = 100.0,
                 iterations: int = 3, sigma_geo_mm: float = 1.0, robust_scale_mm: float = 1.0,
                 max_distance_mm: float = 10.0) -> RefinedBasis:
    """Refine the basis against the depth after :func:`fit_rgbd`: ``min_{A′} E_geo(A′, χ) + E_regA(A′)`` with the
    fit's pose and coefficients ``c`` held (the seed's "refined basis", E_regA by :func:`basis_regulariser`).

    For one frame the depth sees ``A′`` only through ``δ = (A′ − A) c``, and among all ``A′`` with a given ``δ``
    the one closest to ``A`` (smallest E_regA: both of its terms are squared norms of a linear map of ``A′ − A``,
    row by row minimised by the minimum-norm solution) is ``A′ = A + δ cᵀ / ‖c‖²``, where
    ``E_regA = (w_Areg ‖δ‖² + w_Asmo ‖Δδ‖²) / ‖c‖²``. ``δ = N s`` is restricted to the fitted face's unit
    vertex normals ``N (3V_face, V_face)`` (free 3-D offsets slide vertices tangentially, which depth cannot
    see), so the refinement is a sparse linear least-squares problem in ``s (V_face,)`` mm, re-linearised
    ``iterations`` times (each re-rasterises the pairs):
    ``(NᵀMᵀWMN + (w_Areg I + w_Asmo (ΔN)ᵀΔN) / ‖c‖²) s = NᵀMᵀW (M N s₀ − r)`` with ``M`` = :func:`pixel_matrix`,
    ``W`` the Geman–McClure weights over σ_geo², ``r`` the residuals at ``s₀``; Δ is the face mesh's uniform graph
    Laplacian (:func:`~morphable.geometry.laplacian.uniform_laplacian`: each vertex minus the mean of its
    neighbours). Vertices the depth does not see keep ``s`` from the smoothness term alone (decaying away from
    the seen part).

    Args:
        fit: the coefficient fit (:func:`fit_rgbd`) of the same ``depth`` and camera.
        w_reg, w_smooth: ``w_Areg``, ``w_Asmo`` (per unit coefficient norm: the prior on ``δ`` is divided by ``‖c‖²``).
        iterations, sigma_geo_mm, robust_scale_mm, max_distance_mm: as in :func:`fit_rgbd`.
    Returns:
        :class:`RefinedBasis`.
    Raises:
        ValueError: ``c = 0`` (the mean face: no basis to refine).
    """
    f64 = torch.float64
    c = torch.cat([fit.identity, fit.expression]).to(f64)
    c2 = float(c.pow(2).sum())
    if c2 == 0.0:
        raise ValueError("refine_basis: the fit's coefficients are all 0 (no basis direction to refine)")
    cam = fit.camera
    focal, principal_point = float(cam.focal[0]), (float(cam.principal_point[0, 0]), float(cam.principal_point[0, 1]))
    R, t = cam.rotation_matrix[0].to(f64), cam.translation[0].to(f64)
    points = back_project(depth, focal, principal_point)
    face = _face_mesh(model)
    Vf = face.vertex_ids.numel()
    base = fit.vertices.to(f64)[face.vertex_ids]
    L = uniform_laplacian(face.triangles.numpy(), Vf)
    L3 = sp.kron(L, sp.eye(3)).tocsr()  # Δ on each coordinate of the flattened [x₀ y₀ z₀ x₁ …]
    normals = vertex_normals(base[None], face.triangles)[0].numpy()
    Nm = sp.csr_matrix((normals.reshape(-1), (np.arange(3 * Vf), np.repeat(np.arange(Vf), 3))), shape=(3 * Vf, Vf))
    LN = L3 @ Nm
    prior = ((w_reg * sp.eye(Vf) + w_smooth * (LN.T @ LN)) / c2).tocsc()  # ‖N s‖² = ‖s‖² (unit normals)
    s = np.zeros(Vf)
    for step in range(iterations + 1):
        X = base + torch.from_numpy(Nm @ s).reshape(Vf, 3)
        pairs = depth_pairs(X @ R.T + t, face.triangles, points, focal, principal_point,
                            max_distance_mm=max_distance_mm)
        if step == iterations:
            break
        M = pixel_matrix(pairs, R, Vf) @ Nm
        w = (geman_mcclure_weights(pairs.residual, robust_scale_mm) / sigma_geo_mm**2).numpy()
        MtW = M.T.multiply(w[None, :]).tocsr()
        s = spla.spsolve((MtW @ M + prior).tocsc(), MtW @ (M @ s - pairs.residual.numpy()))
    delta = Nm @ s
    offset = torch.zeros(model.n_vertices, 3, dtype=f64)
    offset[face.vertex_ids] = torch.from_numpy(delta).reshape(Vf, 3)
    r = pairs.residual
    return RefinedBasis(offset=offset, coefficients=c, vertices=fit.vertices.to(f64) + offset,
                        rms_geo_mm=float(r.pow(2).mean().sqrt()) if r.numel() else float("nan"), pairs=int(r.numel()))
