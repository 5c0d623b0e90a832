"""RGB-D fitting: identity, expression and a rigid pose from 68 landmarks and a depth image (E_geo).

The geometry term of Zhang's group's RGB-D tracker (seed ``zhang-deep-3d-face-modeling``; Guo et al.,
"Self-supervised CNN for Unconstrained 3D Facial Performance Capture from an RGB-D Camera", arXiv
1808.05323), here minimised by Gauss–Newton instead of learnt:

    E(χ) = E_geo + w_lan E_lan + E_reg,
    E_geo = Σ_p (n_q · (R X_p(α, β) + t − q_p))² / σ_geo²       (point-to-plane, mm),
    E_lan = Σ_l ‖R X_l(α, β) + t − Q_l‖² / σ_lan²                  (landmarks lifted to 3D by the depth),
    E_reg = λ_id ‖α‖² + λ_exp ‖β‖²                                  (standardised coefficients).

``q_p`` is the back-projected depth map, bilinearly sampled where model vertex ``p`` projects under the
sensor's pinhole intrinsics (projective data association, as in KinectFusion — Newcombe et al., ISMAR
2011), ``n_q`` the depth map's normal there (central differences). Pairs farther apart than
``max_distance_mm``, vertices facing away, samples next to a hole (NaN, 0 or inf) and samples across a
depth edge (a silhouette or an occlusion: without this, the few vertices hidden behind the nose or the
eyelids pull the fit off the true shape) are left out, and so, once the fit is close, are vertices lying
behind the seen surface (hidden by it); sensor holes only remove terms. The pose starts from the rigid
(Kabsch) alignment of the model's landmarks to the lifted ones. The camera is metric (scale 1): a depth
sensor gives millimetres.

Not here: the seed's refined basis ``A′`` and its regulariser ``E_regA`` (the basis stays the model's),
and the photometric term (E_col); :func:`fit_rgbd` is the geometric counterpart of the RGB-only landmark
fit, which the tests compare it with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from morphable.fitting.landmarks import fit_terms
from morphable.fitting.shape import solve_coefficients
from morphable.geometry.align import umeyama
from morphable.geometry.camera import Perspective
from morphable.geometry.mesh import vertex_normals
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from morphable.models.base import MorphableModel


@dataclass(frozen=True)
class RGBDFit:
    """Result of :func:`fit_rgbd` (float64).

    Attributes:
        identity: ``(K,)``; expression: ``(Ke,)`` standardised coefficients / blendshape weights.
        camera: :class:`Perspective` (batch 1): the sensor's intrinsics and the fitted model → camera pose.
        vertices: ``(V, 3)`` mm, model space.
        rms_geo_mm: RMS point-to-plane distance over the final depth pairs; pairs: their number.
    """

    identity: Tensor
    expression: Tensor
    camera: Perspective
    vertices: Tensor
    rms_geo_mm: float
    pairs: int


def back_project(depth: Tensor, focal: float, principal_point: tuple[float, float]) -> Tensor:
    """``(H, W)`` depth (mm along the viewing axis; NaN/0/inf = hole) → ``(H, W, 3)`` camera-frame points
    (mm; the camera looks along −z, as :class:`Perspective`), NaN at holes."""
    H, W = depth.shape
    hole = torch.tensor(float("nan"), dtype=torch.float64)
    d = torch.where(torch.isfinite(depth) & (depth > 0), depth.double(), hole)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return torch.stack([(u - principal_point[0]) * d / focal, -(v - principal_point[1]) * d / focal, -d], -1)


def depth_normals(points: Tensor, step: int = 1) -> Tensor:
    """``(H, W, 3)`` unit normals of a back-projected depth map (central differences over ``±step`` pixels:
    a longer baseline averages the sensor noise; NaN where a neighbour is a hole), oriented towards the camera."""
    k = int(step)
    P = torch.nn.functional.pad(points.permute(2, 0, 1)[None], (k, k, k, k), value=float("nan"))[0].permute(1, 2, 0)
    H, W = points.shape[:2]
    dx = P[k:k + H, 2 * k:] - P[k:k + H, :W]
    dy = P[2 * k:, k:k + W] - P[:H, k:k + W]
    n = torch.cross(dx, dy, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True)
    flip = (n * points).sum(-1, keepdim=True) > 0  # facing the camera at the origin: n · X < 0
    return torch.where(flip, -n, n)


def _sample_depth(points: Tensor, normals: Tensor, uv: Tensor, edge_mm: float) -> tuple[Tensor, Tensor]:
    """Bilinear samples of the back-projected points and their normals at ``uv (M, 2)`` px: ``(M, 3)`` each,
    the weights renormalised over the corner pixels that have both (holes skipped); NaN outside the image,
    with no such corner, or across a depth edge (the corners' depths spread more than ``edge_mm``: a
    silhouette or an occlusion, where no surface point lies between them)."""
    H, W = points.shape[:2]
    x0, y0 = torch.floor(uv[:, 0]), torch.floor(uv[:, 1])
    fx, fy = uv[:, 0] - x0, uv[:, 1] - y0
    x0, y0 = x0.long(), y0.long()
    inside = (x0 >= 0) & (x0 < W - 1) & (y0 >= 0) & (y0 < H - 1)
    x0, y0 = x0.clamp(0, W - 2), y0.clamp(0, H - 2)
    corners = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]
    p = torch.stack([points[yy, xx] for yy, xx in corners], 1)  # (M, 4, 3)
    n = torch.stack([normals[yy, xx] for yy, xx in corners], 1)
    w = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)  # (M, 4)
    valid = torch.isfinite(p).all(-1) & torch.isfinite(n).all(-1)
    w = torch.where(valid, w, torch.zeros_like(w))
    total = w.sum(1, keepdim=True)
    q = (w[..., None] * torch.nan_to_num(p)).sum(1) / total
    n = (w[..., None] * torch.nan_to_num(n)).sum(1)
    n = n / n.norm(dim=-1, keepdim=True)
    z = p[..., 2]
    spread = torch.where(valid, z, -torch.inf).amax(1) - torch.where(valid, z, torch.inf).amin(1)
    bad = ~inside | (total[:, 0] < 1e-6) | (spread > edge_mm)
    nan = torch.tensor(float("nan"), dtype=q.dtype)
    return torch.where(bad[:, None], nan, q), torch.where(bad[:, None], nan, n)


def fit_rgbd(model: MorphableModel, depth: Tensor, focal: float, principal_point: tuple[float, float],
             landmarks: Tensor, *, iterations: int = 8, sigma_geo_mm: float = 1.0, sigma_landmark_mm: float = 4.0,
             lambda_identity: float = 1.0, lambda_expression: float = 1.0, max_distance_mm: float = 10.0,
             max_points: int = 4000, normal_step: int = 2,
             edge_mm: float = 5.0, occlusion_mm: float = 2.0) -> RGBDFit:
    """Fit the model to a depth image and its 68 landmarks (module docstring).

    Args:
        depth: ``(H, W)`` mm (NaN, 0 or inf for holes); focal, principal_point: the depth camera's pinhole
            intrinsics in its pixels (the landmarks must be in the same pixels, i.e. registered RGB-D).
        landmarks: ``(68, 2)`` px (NaN = missing); the jawline is not used (its depth lies on the outline).
        iterations: Gauss–Newton steps (each re-associates the depth pairs).
        sigma_geo_mm / sigma_landmark_mm: noise σ of the two terms; lambda_*: prior precisions.
        max_distance_mm: pairs farther apart are outliers.
        max_points: model vertices used for E_geo (the ``face`` region, sub-sampled with a fixed seed).
        normal_step: the depth normals' half baseline in pixels (:func:`depth_normals`).
        edge_mm: depth steps between neighbouring pixels above this are edges, not surface (no pairs there).
        occlusion_mm: in the second half of the steps, a vertex farther than the depth sample by more than
            this is hidden behind another surface (eyelashes, the nose) and has no pair.
    Returns:
        :class:`RGBDFit`.
    Raises:
        ValueError: fewer than 4 landmarks with depth.
    """
    f64 = torch.float64
    terms = fit_terms(model)
    K, Ke = model.n_identity, model.n_expression
    points = back_project(depth, focal, principal_point)
    normals = depth_normals(points, normal_step)
    H, W = depth.shape
    # landmarks lifted to 3D (fixed ones only)
    lm = torch.as_tensor(landmarks, dtype=f64)
    pix = torch.round(torch.nan_to_num(lm, nan=-1.0)).long()
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < W) & (pix[:, 1] >= 0) & (pix[:, 1] < H)
    Q = torch.full((68, 3), float("nan"), dtype=f64)
    Q[inside] = points[pix[inside, 1], pix[inside, 0]]
    use_lm = terms.landmark_mask.clone()
    use_lm[list(range(17))] = False
    use_lm &= torch.isfinite(Q).all(-1) & torch.isfinite(lm).all(-1)
    if int(use_lm.sum()) < 4:
        raise ValueError(f"fit_rgbd: {int(use_lm.sum())} landmarks have depth (need at least 4)")
    lm_mean, lm_basis, Q = terms.landmark_mean[use_lm], terms.landmark_basis[use_lm], Q[use_lm]
    # E_geo vertices
    ids = model.regions.get("face")
    ids = torch.arange(model.n_vertices) if ids is None else torch.as_tensor(ids, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    ids = ids[torch.randperm(ids.numel(), generator=g)[:max_points]]
    basis = torch.cat([model.identity_basis, model.expression_basis], -1) if Ke else model.identity_basis
    v_mean, v_basis = model.mean.to(f64)[ids], basis.to(f64)[ids]  # (M, 3), (M, 3, P)
    mean_normals = vertex_normals(model.mean.to(f64)[None], model.triangles)[0][ids]
    # start: rigid alignment of the mean's landmarks to the lifted ones
    start = umeyama(lm_mean.numpy(), Q.numpy(), scale=False)
    R = torch.as_tensor(start.rotation, dtype=f64)
    t = torch.as_tensor(start.translation, dtype=f64)
    P = K + Ke
    c = torch.zeros(P, dtype=f64)
    prior = torch.tensor([lambda_identity] * K + [lambda_expression] * Ke, dtype=f64)
    inf = float("inf")
    lo_e, hi_e = (0.0, 1.0) if model.expression_kind == "blendshapes" else (-inf, inf)
    lower = torch.tensor([-inf] * 6 + [-inf] * K + [lo_e] * Ke, dtype=f64)
    upper = torch.tensor([inf] * 6 + [inf] * K + [hi_e] * Ke, dtype=f64)
    rms, n_pairs = float("nan"), 0
    for step in range(iterations + 1):
        X = v_mean + v_basis @ c  # (M, 3) model space
        RX = X @ R.T
        Xc = RX + t
        z = -Xc[:, 2]
        uv = torch.stack([focal * Xc[:, 0] / z + principal_point[0], -focal * Xc[:, 1] / z + principal_point[1]], 1)
        q, n = _sample_depth(points, normals, uv, edge_mm)
        r = (n * (Xc - q)).sum(-1)  # (M,) point-to-plane, mm
        facing = ((mean_normals @ R.T) * -Xc).sum(-1) > 0
        ok = (z > 0) & torch.isfinite(r) & ((Xc - q).norm(dim=-1) < max_distance_mm) & facing
        if step >= iterations // 2:  # once close: a vertex behind the seen surface is hidden by it
            ok &= Xc[:, 2] - q[:, 2] > -occlusion_mm
        n_pairs = int(ok.sum())
        rms = float(r[ok].pow(2).mean().sqrt()) if n_pairs else float("nan")
        if step == iterations:
            break
        # E_geo rows: ∂r/∂ω = (R X) × n, ∂r/∂t = n, ∂r/∂c = nᵀ R B
        n_ok = n[ok]
        J_geo = torch.cat([torch.cross(RX[ok], n_ok, dim=-1), n_ok,
                           torch.einsum("mi,ij,mjp->mp", n_ok, R, v_basis[ok])], 1)  # (m, 6 + P)
        # E_lan rows (3 per landmark): ∂/∂ω = −[R X]_×, ∂/∂t = I, ∂/∂c = R B
        XL = lm_mean + lm_basis @ c
        RXL = XL @ R.T
        res_l = (RXL + t - Q).reshape(-1)
        skew = torch.zeros(len(XL), 3, 3, dtype=f64)
        skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -RXL[:, 2], RXL[:, 1], -RXL[:, 0]
        skew = skew - skew.transpose(1, 2)
        J_lan = torch.cat([-skew, torch.eye(3, dtype=f64).expand(len(XL), 3, 3), R @ lm_basis], -1).reshape(-1, 6 + P)
        Hm = J_geo.T @ J_geo / sigma_geo_mm**2 + J_lan.T @ J_lan / sigma_landmark_mm**2
        gv = -(J_geo.T @ r[ok]) / sigma_geo_mm**2 - (J_lan.T @ res_l) / sigma_landmark_mm**2
        Hm[6:, 6:] += torch.diag(prior)
        Hm[:6, :6] += 1e-9 * torch.eye(6, dtype=f64)
        gv[6:] -= prior * c
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
    return RGBDFit(identity=identity, expression=expression, camera=camera, vertices=vertices, rms_geo_mm=rms,
                   pairs=n_pairs)
