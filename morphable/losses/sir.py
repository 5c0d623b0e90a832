"""Shape-identity regularisation (SIR) and the heteroscedastic confidence loss.

Jiang, Jin, Deng, Tong, Zhang, Yai & Tang, "Reconstructing Recognizable 3D Face Shapes based on 3D Morphable
Models" (arXiv 2104.03515, 2021). Shape parameters can separate people while the meshes they give do not:
the SIR loss adds two kinds of terms on the standardised shape coefficients α (DESIGN.md: N(0, I) under the
model's prior):

* an **identification term**, inter-class separation (:func:`inter_class_separation`) plus intra-class
  aggregation as a *weighted* center loss (:func:`weighted_center_loss`, centres updated by a moving average,
  :func:`update_centers`);
* a **parameter-distribution term**, the KL divergence between the batch's shape distribution and the
  model's N(0, I) (:func:`kl_to_standard_normal`). With it, the distances the identification term shapes in
  coefficient space are (up to the basis) distances between meshes: discrimination carries over to geometry.

Distances are squared Euclidean divided by the number of coefficients K, ``d(a, b) = ‖a − b‖² / K`` (the
mean squared difference per coefficient), so margins do not depend on K: two independent N(0, I) draws are
at ``E d = 2``.

Centre weighting. The paper's weighted center loss weighs each sample's pull on its centre; its released
training script multiplies every sample's gradient on its identity's centre by a per-sample weight. The
stored copies of the paper available to us (abstract and code, not the equations) do not let us quote its
exact formula, so we weight by the sample's *confidence*: the inverse of the mean σ of the confidence map
(:mod:`morphable.nets.sir`) over the face, normalised to mean 1 in the batch (blurred, occluded or
badly-lit photos pull their centre less). The functions take any weights.

The confidence map weighs the pixel and landmark losses in the heteroscedastic (aleatoric) form of Kendall &
Gal (NeurIPS 2017): ``ℓ / σ + log σ`` (:func:`heteroscedastic_loss`).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _sqdist(a: Tensor, b: Tensor) -> Tensor:
    """``d(a, b) = ‖a − b‖² / K`` over the last dim, broadcasting the others."""
    return (a - b).pow(2).mean(-1)


def inter_class_separation(shapes: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Inter-class separation with a margin: different people's shapes at least ``margin`` apart.

        L_inter = mean_{(i, j): y_i ≠ y_j} max(0, m − d(α_i, α_j)),   d(a, b) = ‖a − b‖² / K

    Args:
        shapes: ``(B, K)`` shape coefficients; labels: ``(B,)`` integer identity labels.
        margin: m (per-coefficient mean squared distance; independent N(0, I) draws are at 2).
    Returns:
        scalar; 0 when the batch holds one identity only.
    """
    if shapes.dim() != 2 or labels.shape != shapes.shape[:1]:
        raise ValueError(f"inter_class_separation: expected (B, K) shapes and (B,) labels, got "
                         f"{tuple(shapes.shape)} and {tuple(labels.shape)}")
    other = labels[:, None] != labels[None, :]  # (B, B), symmetric, false on the diagonal
    if not other.any():
        return shapes.new_zeros(())
    d = _sqdist(shapes[:, None], shapes[None, :])  # (B, B)
    return (margin - d[other]).clamp_min(0).mean()


def weighted_center_loss(shapes: Tensor, centers: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
    """Intra-class aggregation: the weighted center loss (Wen et al., ECCV 2016, with per-sample weights).

        L_center = Σ_i w_i d(α_i, c_{y_i}) / Σ_i w_i

    Args:
        shapes: ``(B, K)``; centers: ``(C, K)`` one centre per identity (a buffer: no gradient reaches it);
        labels: ``(B,)`` indices into ``centers``; weights: ``(B,)`` non-negative (default 1).
    Returns:
        scalar.
    """
    if shapes.dim() != 2 or centers.dim() != 2 or centers.shape[1] != shapes.shape[1] \
            or labels.shape != shapes.shape[:1]:
        raise ValueError(f"weighted_center_loss: expected (B, K) shapes, (C, K) centers and (B,) labels, got "
                         f"{tuple(shapes.shape)}, {tuple(centers.shape)}, {tuple(labels.shape)}")
    w = shapes.new_ones(len(shapes)) if weights is None else weights.to(shapes)
    d = _sqdist(shapes, centers.detach()[labels])
    return (w * d).sum() / w.sum().clamp_min(1e-12)


@torch.no_grad()
def update_centers(centers: Tensor, shapes: Tensor, labels: Tensor, weights: Tensor | None = None,
                   rate: float = 0.5) -> Tensor:
    """Moving-average centre update (in place; Wen et al. 2016, Eq. 4, with per-sample weights):

        c_j ← c_j + γ · Σ_{i: y_i = j} w_i (α_i − c_j) / (1 + Σ_{i: y_i = j} w_i)

    Identities absent from the batch keep their centre. Returns ``centers``.

    Args:
        centers: ``(C, K)``; shapes: ``(B, K)`` (detached); labels: ``(B,)``; weights: ``(B,)`` (default 1);
        rate: γ (the centre learning rate α of Wen et al.; 0.5 there).
    """
    w = torch.ones(len(shapes), dtype=centers.dtype, device=centers.device) if weights is None \
        else weights.detach().to(centers)
    diff = w[:, None] * (centers[labels] - shapes.detach().to(centers))  # (B, K): w_i (c_{y_i} − α_i)
    num = torch.zeros_like(centers).index_add_(0, labels, diff)
    den = torch.ones(len(centers), dtype=centers.dtype, device=centers.device).index_add_(0, labels, w)
    centers -= rate * num / den[:, None]
    return centers


def kl_to_standard_normal(shapes: Tensor, eps: float = 1e-6) -> Tensor:
    """KL divergence between the batch's shape distribution and the model's prior N(0, I).

    The batch is summarised per coefficient k by its mean μ_k and (biased) variance σ_k² over the B samples,
    a diagonal Gaussian; then

        KL(N(μ, diag σ²) ‖ N(0, I)) / K = (1/K) Σ_k ½ (σ_k² + μ_k² − 1 − ln σ_k²)

    (per coefficient, so the weight does not depend on K). It is 0 exactly when every coefficient has zero
    batch mean and unit batch variance.

    Args:
        shapes: ``(B, K)``, B ≥ 2; eps: floor of σ_k² inside the log.
    Returns:
        scalar ≥ 0.
    """
    if shapes.dim() != 2 or shapes.shape[0] < 2:
        raise ValueError(f"kl_to_standard_normal: expected (B >= 2, K) shapes, got {tuple(shapes.shape)}")
    mu = shapes.mean(0)
    var = shapes.var(0, unbiased=False)
    return 0.5 * (var + mu * mu - 1 - torch.log(var.clamp_min(eps))).mean()


def heteroscedastic_loss(residual: Tensor, log_sigma: Tensor, weights: Tensor | None = None) -> Tensor:
    """Aleatoric-uncertainty weighting of a per-element loss (Kendall & Gal 2017): ``ℓ / σ + log σ``.

        L = Σ_p w_p (ℓ_p e^{−s_p} + s_p) / Σ_p w_p,   s_p = log σ_p

    For a fixed ℓ_p > 0 the minimum over σ_p is at σ_p = ℓ_p (value 1 + log ℓ_p): the network lowers σ where
    it is accurate and raises it where the data cannot be explained (occlusions, hair, wrong labels).

    Args:
        residual: ``(...)`` non-negative per-element losses ℓ (e.g. per-pixel L1, per-landmark distance).
        log_sigma: ``(...)`` log σ, same shape.
        weights: optional ``(...)`` non-negative weights (masks, label validity), broadcastable.
    Returns:
        scalar.
    """
    if residual.shape != log_sigma.shape:
        raise ValueError(f"heteroscedastic_loss: residual {tuple(residual.shape)} and log_sigma "
                         f"{tuple(log_sigma.shape)} must match")
    per = residual * torch.exp(-log_sigma) + log_sigma
    if weights is None:
        return per.mean()
    w = weights.to(per).expand_as(per)
    return (w * per).sum() / w.sum().clamp_min(1e-12)
