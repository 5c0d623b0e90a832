"""Identity consistency: do reconstructions of the same person agree more than those of different people?

For N photos with identity labels, every unordered pair (i, j) gets a distance between its two
reconstructions; the same/different ROC AUC (:func:`morphable.losses.identity.roc_auc`, the Mann-Whitney
statistic) is the probability that a same-person pair is closer than a different-person pair (0.5 =
chance, 1 = perfect separation). Two distances between fits of a linear model:

* **coefficients**: ``‖α_i − α_j‖`` between the standardised identity coefficient vectors;
* **meshes**: the RMS vertex distance between the two *neutral face-region meshes*
  ``mean + B_id α`` (expression zero, restricted to the model's ``"face"`` region) after the rigid
  transform (rotation + translation, **no scale**) that minimises it — so a different face size counts,
  a different head pose cannot (there is none in a neutral mesh, but a model may place identities
  differently in space).

The rigid Procrustes distance has a closed form (Umeyama 1991 / Kabsch): with centred meshes ``A, B``
(V, 3) and ``Σ = Bᵀ A = U D Vᵀ``,
``min_R,t Σ_v |R a_v + t − b_v|² = |A|² + |B|² − 2 (d₁ + d₂ + s d₃)``,
``s = sign(det U det V)`` (no reflections). :func:`rigid_distance_matrix` evaluates it for all pairs at
once; :func:`rigid_rms_distance` is the slow reference through :func:`morphable.geometry.align.umeyama`.
Used by ``benchmarks/identity_consistency.py`` (see ``docs/fidelity.md``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from morphable.geometry.align import Similarity, umeyama
from morphable.losses.identity import roc_auc
from morphable.models.base import MorphableModel


def neutral_face_meshes(model: MorphableModel, identity: Tensor, region: str = "face") -> Tensor:
    """Neutral meshes of identity coefficients, restricted to a region.

    Args:
        identity: (N, K) standardised identity coefficients (K ≤ the model's count).
        region: a name in ``model.regions`` (all vertices when absent: :meth:`MorphableModel.region_ids`).
    Returns:
        (N, R, 3) mm, model space: ``model(identity=identity, expression=None)`` on the region.
    """
    if identity.dim() != 2:
        raise ValueError(f"neutral_face_meshes: identity must be (N, K), got {tuple(identity.shape)}")
    with torch.no_grad():
        vertices = model(identity=identity.to(model.mean.dtype), expression=None).vertices
    return vertices[:, model.region_ids(region)]


def rigid_align(source: np.ndarray, target: np.ndarray) -> Similarity:
    """The rotation + translation (scale 1) moving ``source`` (V, 3) closest to ``target`` (V, 3)."""
    return umeyama(source, target, scale=False)


def rigid_rms_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Reference: RMS vertex distance (mm) of ``a`` (V, 3) rigidly aligned onto ``b`` (V, 3), via Umeyama."""
    aligned = rigid_align(a, b).apply(a)
    return float(np.sqrt(((aligned - np.asarray(b, np.float64)) ** 2).sum(axis=1).mean()))


def rigid_distance_matrix(meshes: Tensor) -> Tensor:
    """All pairwise rigid-Procrustes RMS distances (closed form, see the module docstring).

    Args:
        meshes: (N, V, 3) meshes with corresponding vertices, mm.
    Returns:
        (N, N) float64 symmetric, zero diagonal: ``D[i, j] = min_{R, t} RMS_v |R x_i,v + t − x_j,v|`` (mm).
        The difference of squares loses precision near zero: two meshes ~100 mm across that are rigid
        copies of each other come out ~1e-6 mm apart instead of 0 (far below any face difference).
    """
    if meshes.dim() != 3 or meshes.shape[-1] != 3:
        raise ValueError(f"rigid_distance_matrix: expected meshes (N, V, 3), got {tuple(meshes.shape)}")
    x = meshes.detach().double()
    x = x - x.mean(dim=1, keepdim=True)
    sq = (x * x).sum(dim=(1, 2))                                   # |A|² per mesh
    cov = torch.einsum("jvc,ivd->ijcd", x, x)                       # Σ_ij = X_jᵀ X_i  (3 × 3 per pair)
    u, d, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))   # −1 where the best fit would reflect
    trace = d[..., 0] + d[..., 1] + sign * d[..., 2]
    # clamp: rounding can make the (non-negative) residual slightly negative for identical meshes
    residual = (sq[:, None] + sq[None, :] - 2 * trace).clamp_min(0.0)
    distances = (residual / x.shape[1]).sqrt()
    distances.fill_diagonal_(0.0)
    return 0.5 * (distances + distances.T)                          # exactly symmetric


def euclidean_distance_matrix(vectors: Tensor) -> Tensor:
    """(N, D) -> (N, N) float64 Euclidean distances."""
    if vectors.dim() != 2:
        raise ValueError(f"euclidean_distance_matrix: expected (N, D), got {tuple(vectors.shape)}")
    v = vectors.detach().double()
    return (v[:, None] - v[None]).norm(dim=-1)


def same_different_auc(distances: Tensor, ids: Sequence) -> float:
    """ROC AUC of same-person vs different-person pairs from a distance matrix (smaller = more alike).

    Args:
        distances: (N, N) pairwise distances (only the upper triangle i < j is read).
        ids: N identity labels.
    Returns:
        AUC in [0, 1] over the N(N−1)/2 pairs; ties count ½. Raises ValueError without both kinds of pair.
    """
    n = len(ids)
    if distances.shape != (n, n):
        raise ValueError(f"same_different_auc: distances {tuple(distances.shape)} do not match {n} labels")
    i, j = torch.triu_indices(n, n, offset=1)
    codes = {label: k for k, label in enumerate(dict.fromkeys(ids))}
    labels = torch.tensor([codes[x] for x in ids])
    return roc_auc(-distances[i, j], labels[i] == labels[j])


@dataclass(frozen=True)
class ConsistencyReport:
    """Same/different AUCs of a set of fits (see the module docstring).

    Attributes:
        n_items, n_ids: photos and identities. n_same, n_different: pair counts.
        auc_coeff: from Euclidean distances between identity coefficient vectors.
        auc_mesh: from rigid-Procrustes RMS distances between neutral face-region meshes.
        auc_descriptor: from Euclidean distances between face-recognition descriptors (None if not given).
        same_mesh_mm, different_mesh_mm: median mesh distance of same / different pairs (mm).
    """

    n_items: int
    n_ids: int
    n_same: int
    n_different: int
    auc_coeff: float
    auc_mesh: float
    auc_descriptor: float | None
    same_mesh_mm: float
    different_mesh_mm: float


def identity_consistency(model: MorphableModel, identity: Tensor, ids: Sequence, *,
                         descriptors: Tensor | None = None, region: str = "face") -> ConsistencyReport:
    """The three AUCs of ``benchmarks/identity_consistency.py`` for fitted identities.

    Args:
        identity: (N, K) fitted identity coefficients, one row per photo. ids: N identity labels.
        descriptors: optional (N, D) face-recognition descriptors of the same photos (the ceiling).
        region: model region of the meshes.
    """
    if len(ids) != len(identity):
        raise ValueError(f"identity_consistency: {len(identity)} fits but {len(ids)} labels")
    mesh_d = rigid_distance_matrix(neutral_face_meshes(model, identity, region))
    n = len(ids)
    i, j = torch.triu_indices(n, n, offset=1)
    codes = {label: k for k, label in enumerate(dict.fromkeys(ids))}
    labels = torch.tensor([codes[x] for x in ids])
    same = labels[i] == labels[j]
    pair_mesh = mesh_d[i, j]
    return ConsistencyReport(
        n_items=n, n_ids=len(codes), n_same=int(same.sum()), n_different=int((~same).sum()),
        auc_coeff=same_different_auc(euclidean_distance_matrix(identity), ids),
        auc_mesh=same_different_auc(mesh_d, ids),
        auc_descriptor=None if descriptors is None else same_different_auc(euclidean_distance_matrix(descriptors), ids),
        same_mesh_mm=float(pair_mesh[same].median()) if same.any() else float("nan"),
        different_mesh_mm=float(pair_mesh[~same].median()) if (~same).any() else float("nan"))
