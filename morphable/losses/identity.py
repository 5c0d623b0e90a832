"""Identity loss and recognisability measures from face-recognition descriptors.

Genova et al. (CVPR 2018, "Unsupervised Training for 3D Morphable Model Regression", Sec. 3.3.2) score
two faces by the cosine of their recognition embeddings and train with L_id = 1 - cos(e_photo, e_render),
where the render shows the predicted face in a random pose and lighting; the *multi-view* variant uses
several random poses per face (three in the paper) and averages the terms, giving each pose its own
gradient path to the mesh. Their evaluation (Sec. 4.3 - 4.4) reports the photo-vs-render cosine
similarity and an identity-clustering recall: for each rendering, are photos of its source identity
among the k nearest photographs by cosine similarity (top-1, top-5)?

Descriptors here are any (..., D) embeddings, e.g. the 128-D output of
:class:`morphable.identity.DlibFaceNet` on face chips from
:func:`morphable.identity.extract_face_chips`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """cos(a, b) over the last dim, broadcasting the others: (..., D), (..., D) -> (...)."""
    # eps keeps the division finite (and the gradient defined) for an all-zero descriptor
    return (a * b).sum(-1) / ((a * a).sum(-1) * (b * b).sum(-1) + eps).sqrt()


def identity_loss(photo: Tensor, render: Tensor) -> Tensor:
    """Genova's L_id: mean over the batch of 1 - cos(photo_b, render_b).

    Args:
        photo: (B, D) descriptors of the photographs (usually computed without gradient).
        render: (B, D) descriptors of the renders of the predicted faces.
    Returns:
        scalar in [0, 2].
    """
    if photo.ndim != 2 or photo.shape != render.shape:
        raise ValueError(f"identity_loss: photo {tuple(photo.shape)} and render {tuple(render.shape)} must be (B, D)")
    return (1 - cosine_similarity(photo, render)).mean()


def multiview_identity_loss(photo: Tensor, renders: Tensor) -> Tensor:
    """Multi-view L_id: mean over faces b and views v of 1 - cos(photo_b, render_{b,v}).

    Args:
        photo: (B, D) photograph descriptors.
        renders: (B, V, D) descriptors of V renders (random poses / lights) of each predicted face.
    Returns:
        scalar in [0, 2]; equals :func:`identity_loss` when V = 1.
    """
    if photo.ndim != 2 or renders.ndim != 3 or renders.shape[::2] != photo.shape:
        raise ValueError(f"multiview_identity_loss: photo {tuple(photo.shape)} must be (B, D) and renders "
                         f"{tuple(renders.shape)} (B, V, D)")
    return (1 - cosine_similarity(photo[:, None], renders)).mean()


class IdentityLoss(nn.Module):
    """Multi-view identity loss on face chips through a fixed recognition network.

    ``forward(photo_chips (B, S, S, 3), render_chips (B, V, S, S, 3))``: photo descriptors are computed
    without gradient (they are the target); render descriptors keep it. Returns
    :func:`multiview_identity_loss`.

    Args:
        network: maps (N, S, S, 3) chips to (N, D) descriptors, e.g. ``DlibFaceNet()``.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, photo_chips: Tensor, render_chips: Tensor) -> Tensor:
        with torch.no_grad():
            photo = self.network(photo_chips)
        b, v = render_chips.shape[:2]
        renders = self.network(render_chips.flatten(0, 1)).reshape(b, v, -1)
        return multiview_identity_loss(photo, renders)


# ---------------------------------------------------------------------------------------------------
# evaluation


def photo_render_similarity(photo: Tensor, render: Tensor) -> Tensor:
    """Per-face cosine similarity of photo and render descriptors: (N, D), (N, D) -> (N,)."""
    return cosine_similarity(photo, render)


def identity_recall_at_k(queries: Tensor, query_ids: Sequence, gallery: Tensor, gallery_ids: Sequence,
                         ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Genova's identity-clustering recall: the fraction of queries (renders) whose k nearest gallery items
    (photographs, by cosine similarity) include one of the query's identity.

    Args:
        queries: (Q, D) render descriptors; query_ids: Q identity labels.
        gallery: (G, D) photo descriptors; gallery_ids: G identity labels.
        ks: the k values (top-1, top-5 in the paper).
    Returns:
        {k: recall in [0, 1]}. Ties in similarity are broken by gallery order.
    """
    if len(query_ids) != len(queries) or len(gallery_ids) != len(gallery):
        raise ValueError("identity_recall_at_k: one identity label per descriptor is required")
    labels = {label: i for i, label in enumerate(dict.fromkeys([*gallery_ids, *query_ids]))}
    q = torch.tensor([labels[x] for x in query_ids])
    g = torch.tensor([labels[x] for x in gallery_ids])
    similarity = cosine_similarity(queries[:, None], gallery[None])  # (Q, G)
    order = torch.sort(-similarity, dim=1, stable=True).indices.cpu()
    hits = g[order] == q[:, None]  # (Q, G): is the j-th nearest photo of the right identity
    return {k: hits[:, :k].any(dim=1).double().mean().item() for k in ks}


def pair_scores(descriptors: Tensor, ids: Sequence, metric: str = "euclidean") -> tuple[Tensor, Tensor]:
    """Scores and same-person flags of all unordered pairs i < j (higher score = more alike).

    Args:
        descriptors: (N, D). ids: N identity labels.
        metric: "euclidean" (score = -distance, dlib's metric) or "cosine" (score = cosine similarity).
    Returns:
        scores (N(N-1)/2,), same (N(N-1)/2,) bool.
    """
    if len(ids) != len(descriptors):
        raise ValueError("pair_scores: one identity label per descriptor is required")
    i, j = torch.triu_indices(len(ids), len(ids), offset=1)
    if metric == "euclidean":
        scores = -(descriptors[i] - descriptors[j]).norm(dim=-1)
    elif metric == "cosine":
        scores = cosine_similarity(descriptors[i], descriptors[j])
    else:
        raise ValueError(f"pair_scores: metric must be 'euclidean' or 'cosine', got {metric!r}")
    labels = {label: n for n, label in enumerate(dict.fromkeys(ids))}
    codes = torch.tensor([labels[x] for x in ids])
    return scores, codes[i] == codes[j]


def roc_auc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U): P(score_pos > score_neg) + P(tie) / 2.

    Args:
        scores: (P,) higher = more likely positive. positive: (P,) bool.
    """
    scores = scores.detach().double().cpu()
    positive = positive.cpu().bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both positive and negative examples")
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # average 1-based rank of each distinct value: ranks of a tie group are averaged
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    rank_sum = mean_rank[inverse][positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_auc_pairs(scores: Tensor, positive: Tensor) -> float:
    """Reference :func:`roc_auc` by counting all (positive, negative) pairs: O(P^2) memory, for tests."""
    scores = scores.detach().double().cpu()
    positive = positive.cpu().bool()
    pos, neg = scores[positive][:, None], scores[~positive][None, :]
    return ((pos > neg).double() + 0.5 * (pos == neg).double()).mean().item()


def verification_auc(descriptors: Tensor, ids: Sequence, metric: str = "euclidean") -> float:
    """Same-vs-different-person ROC AUC over all pairs of a labelled set (see :func:`pair_scores`)."""
    return roc_auc(*pair_scores(descriptors, ids, metric))
