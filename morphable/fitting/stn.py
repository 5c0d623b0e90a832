"""Fitting θ = (r, t, log s, α[, e]) of a 3DMM spatial transformer to one photo by gradient descent through the
geometric layers — the "simple gradient descent" demo of 3DMM-STN (Bas et al. 2017) — and averaging the
flattened textures of several photos of one person (the paper's mean flattened images).

Energy: ``w_lmk · E_landmark + w_prior · (‖α‖² + ‖e‖²) + w_sym · E_symmetry`` with the Euclidean landmark loss
over the fixed (non-jawline) iBUG points, the statistical prior on standardised α (and on the expression e
when θ has one; blendshape weights are kept in [0, 1] by projection), and the bilateral symmetry of the
flattened texture over the pixels visible on both sides (``losses/``). θ starts from the linear
scaled-orthographic landmark fit (``fitting/landmarks.py``), which the descent then refines.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from morphable.fitting.landmarks import fit_landmarks
from morphable.losses.landmark import landmark_loss
from morphable.losses.prior import prior_loss
from morphable.losses.symmetry import symmetry_loss
from morphable.render.stn import SpatialTransformer3DMM, STNOutput, Theta

FIXED_LANDMARKS = slice(17, 68)
"""iBUG points used by the landmark loss: the jawline (0–16) moves with pose and is left out."""


@dataclass(frozen=True)
class STNWeights:
    """Energy weights: landmark (per px of mean distance), prior (per unit ‖α‖²), symmetry (per intensity²)."""

    landmark: float = 1.0
    prior: float = 0.01
    symmetry: float = 20.0


@dataclass(frozen=True)
class STNFit:
    """Result of :func:`fit_stn`: the fitted ``theta``, the transformer's ``output`` at θ, and the energy
    ``history`` (one dict of named terms per iteration)."""

    theta: Theta
    output: STNOutput
    history: list[dict[str, float]]


def initial_theta(stn: SpatialTransformer3DMM, landmarks: Tensor, n_shape: int, expression: bool = False) -> Theta:
    """θ from the linear landmark fit: pose + first ``n_shape`` identity components (+ all the model's
    expression components with ``expression``)."""
    fit = fit_landmarks(stn.model, landmarks, iterations=3, contour=False, identity_components=n_shape,
                        expression=expression)
    cam = fit.camera
    return Theta(cam.rotation.detach().clone(), cam.translation.detach().clone(),
                 cam.scale.log().detach().clone(), fit.identity[:, :n_shape].detach().clone(),
                 fit.expression.detach().clone() if expression else None)


def stn_energy(stn: SpatialTransformer3DMM, image: Tensor, landmarks: Tensor, theta: Theta,
               weights: STNWeights) -> tuple[Tensor, dict[str, float], STNOutput]:
    """Total energy, its named terms and the transformer output at θ."""
    out = stn(image, theta)
    defined = stn.model.landmark_mask[FIXED_LANDMARKS]
    e_lmk = landmark_loss(out.landmarks[:, FIXED_LANDMARKS][:, defined], landmarks[:, FIXED_LANDMARKS][:, defined])
    e_prior = prior_loss(theta.alpha) + (0 if theta.expression is None else prior_loss(theta.expression))
    e_sym = symmetry_loss(out.texture, out.mask)
    total = weights.landmark * e_lmk + weights.prior * e_prior + weights.symmetry * e_sym
    terms = {"total": total.item(), "landmark_px": e_lmk.item(), "prior": e_prior.item(), "symmetry": e_sym.item()}
    return total, terms, out


def fit_stn(stn: SpatialTransformer3DMM, image: Tensor, landmarks: Tensor, *, n_shape: int = 10,
            iterations: int = 100, weights: STNWeights = STNWeights(), init: Theta | None = None) -> STNFit:
    """Gradient-descent fit of θ through the spatial-transformer layers.

    Args:
        stn: the transformer (model + UV grid).
        image: ``(B, H, W, C)`` photos in [0, 1].
        landmarks: ``(B, 68, 2)`` observed iBUG points (px, nan = missing).
        n_shape: identity components in α.
        iterations: Adam steps.
        weights: energy weights.
        init: starting θ (default: :func:`initial_theta`, neutral); an ``init`` with an expression fits it too.
    Returns:
        :class:`STNFit`.
    """
    if image.dim() != 4 or landmarks.shape != (image.shape[0], 68, 2):
        raise ValueError(f"fit_stn: expected image (B, H, W, C) and landmarks (B, 68, 2), got "
                         f"{tuple(image.shape)} and {tuple(landmarks.shape)}")
    theta0 = init if init is not None else initial_theta(stn, landmarks, n_shape)
    fields = [theta0.rotation, theta0.translation, theta0.log_scale, theta0.alpha]
    fields += [] if theta0.expression is None else [theta0.expression]
    params = [t.detach().clone().requires_grad_(True) for t in fields]
    # per-group steps in natural units: radians, pixels, log-scale, standard deviations (expression: weights)
    opt = torch.optim.Adam([{"params": [p], "lr": lr} for p, lr in zip(params, (0.005, 0.3, 0.003, 0.03, 0.02))])
    bounded = theta0.expression is not None and stn.model.expression_kind == "blendshapes"  # weights in [0, 1]
    history = []
    for _ in range(iterations):
        opt.zero_grad()
        total, terms, _ = stn_energy(stn, image, landmarks, Theta(*params), weights)
        total.backward()
        opt.step()
        if bounded:
            with torch.no_grad():
                params[4].clamp_(0.0, 1.0)
        history.append(terms)
    theta = Theta(*(p.detach() for p in params))
    with torch.no_grad():
        _, terms, out = stn_energy(stn, image, landmarks, theta, weights)
    history.append(terms)
    return STNFit(theta, out, history)


def mean_flattened(textures: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Visibility-weighted mean of flattened textures of one person.

    Args:
        textures: ``(N, H', W', C)``; masks: ``(N, H', W')`` in [0, 1].
    Returns:
        ``(H', W', C)`` mean texture (0 where no photo sees the point) and ``(H', W')`` coverage count.
    """
    m = masks.to(textures.dtype)
    count = m.sum(0)
    mean = (textures * m[..., None]).sum(0) / count.clamp_min(1e-12)[..., None]
    return mean, count
