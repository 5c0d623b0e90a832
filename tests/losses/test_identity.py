"""Identity loss (single and multi-view), recall@k and ROC AUC against brute force; same-vs-different
person AUC of DlibFaceNet on the deepface identities."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from morphable.losses.identity import (
    IdentityLoss,
    cosine_similarity,
    identity_loss,
    identity_recall_at_k,
    multiview_identity_loss,
    pair_scores,
    photo_render_similarity,
    roc_auc,
    roc_auc_pairs,
    verification_auc,
)


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_cosine_similarity_matches_torch():
    a, b = _randn(4, 3, 16), _randn(4, 3, 16, seed=1)
    assert torch.allclose(cosine_similarity(a, b), nn.functional.cosine_similarity(a, b, dim=-1), atol=1e-12)
    assert torch.allclose(photo_render_similarity(a[:, 0], b[:, 0]), cosine_similarity(a[:, 0], b[:, 0]))
    assert cosine_similarity(torch.zeros(3), torch.ones(3)) == 0  # finite for an all-zero descriptor


def test_identity_losses_values():
    photo = _randn(5, 8)
    assert identity_loss(photo, 3 * photo).item() == pytest.approx(0.0, abs=1e-12)
    assert identity_loss(photo, -photo).item() == pytest.approx(2.0, abs=1e-12)
    renders = _randn(5, 3, 8, seed=1)
    per_view = [identity_loss(photo, renders[:, v]) for v in range(3)]
    assert multiview_identity_loss(photo, renders).item() == pytest.approx(float(sum(per_view) / 3), abs=1e-12)
    assert multiview_identity_loss(photo, renders[:, :1]).item() == pytest.approx(per_view[0].item(), abs=1e-12)
    with pytest.raises(ValueError, match=r"\(B, V, D\)"):
        multiview_identity_loss(photo, renders[:4])
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        identity_loss(photo, renders)


def test_identity_loss_gradients():
    photo, renders = _randn(3, 6), _randn(3, 2, 6, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: multiview_identity_loss(photo, r), (renders,))


def test_identity_loss_module_keeps_gradients_on_the_renders_only():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 3, 8)).double()
    photo_chips = torch.rand(2, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    render_chips = torch.rand(2, 3, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    loss = IdentityLoss(network)(photo_chips, render_chips)
    with torch.no_grad():
        expected = multiview_identity_loss(network(photo_chips), network(render_chips.flatten(0, 1)).reshape(2, 3, 8))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    loss.backward()
    assert photo_chips.grad is None and render_chips.grad.abs().sum() > 0


def _recall_brute_force(queries, query_ids, gallery, gallery_ids, k):
    hits = 0
    for q, qid in zip(queries, query_ids):
        sims = [float(cosine_similarity(q, g)) for g in gallery]
        order = sorted(range(len(gallery)), key=lambda j: -sims[j])  # stable: ties keep gallery order
        hits += any(gallery_ids[j] == qid for j in order[:k])
    return hits / len(queries)


def test_recall_at_k_against_brute_force():
    gallery, queries = _randn(30, 5), _randn(12, 5, seed=1)
    gallery_ids = [i % 7 for i in range(30)]
    query_ids = [(3 * i) % 7 for i in range(12)]
    recall = identity_recall_at_k(queries, query_ids, gallery, gallery_ids, ks=(1, 3, 5))
    for k in (1, 3, 5):
        assert recall[k] == pytest.approx(_recall_brute_force(queries, query_ids, gallery, gallery_ids, k))
    # renders that are slightly perturbed copies of their own photos are all recalled at rank 1
    near = gallery[::3] + 0.01 * _randn(10, 5, seed=2)
    assert identity_recall_at_k(near, gallery_ids[::3], gallery, gallery_ids, ks=(1,)) == {1: 1.0}
    with pytest.raises(ValueError, match="one identity label"):
        identity_recall_at_k(queries, query_ids[:3], gallery, gallery_ids)


def test_roc_auc_sort_based_equals_pair_counting():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (200,), generator=g).double()  # many ties
    positive = torch.rand(200, generator=g) < 0.3 + 0.1 * scores
    assert roc_auc(scores, positive) == pytest.approx(roc_auc_pairs(scores, positive), abs=1e-12)
    continuous = scores + torch.rand(200, dtype=torch.float64, generator=g)
    assert roc_auc(continuous, positive) == pytest.approx(roc_auc_pairs(continuous, positive), abs=1e-12)
    labels = torch.tensor([False, False, True, True])
    assert roc_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert roc_auc(torch.tensor([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(torch.ones(4), labels) == 0.5
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(torch.ones(3), torch.ones(3, dtype=torch.bool))


def test_pair_scores_metrics():
    d = torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    scores, same = pair_scores(d, ["a", "a", "b"])  # pairs (0,1), (0,2), (1,2)
    assert same.tolist() == [True, False, False]
    assert torch.allclose(scores, -torch.tensor([1.0, 2 ** 0.5, 5 ** 0.5], dtype=torch.float64))
    cosine, _ = pair_scores(d, ["a", "a", "b"], metric="cosine")
    assert torch.allclose(cosine, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert verification_auc(d, ["a", "a", "b"]) == 1.0
    with pytest.raises(ValueError, match="metric"):
        pair_scores(d, ["a", "a", "b"], metric="manhattan")
    with pytest.raises(ValueError, match="one identity label"):
        pair_scores(d, ["a", "b"])


def test_dlib_net_separates_the_deepface_identities():
    """Real data: one face per photo of the 13 deepface identities (61 photos), our descriptors of dlib's
    chips; same-person pairs must score above different-person pairs (ROC AUC)."""
    from morphable.identity import DlibFaceNet
    from tests.conftest import data_file
    from tests.identity.faces import DEEPFACE_IDENTITIES, largest_face

    folder = data_file("deepface/tests/unit/dataset")
    chips, ids = [], []
    for label, group in enumerate(DEEPFACE_IDENTITIES):
        for number in group:
            face = largest_face(folder / f"img{number}.jpg")
            if face is not None:
                chips.append(face.chip)
                ids.append(label)
    assert len(chips) >= 55 and len(set(ids)) == 13
    with torch.no_grad():
        descriptors = DlibFaceNet()(torch.from_numpy(np.stack(chips)).float() / 255).double()
    auc = verification_auc(descriptors, ids)
    print(f"same/different-person ROC AUC on {len(chips)} deepface photos, 13 identities: {auc:.4f}")
    assert auc > 0.97
    assert verification_auc(descriptors, ids, metric="cosine") > 0.97
    # Genova's clustering recall with the first photo of each person as the query, the rest as gallery
    first = [ids.index(label) for label in range(13)]
    rest = [i for i in range(len(ids)) if i not in first]
    recall = identity_recall_at_k(descriptors[first], list(range(13)), descriptors[rest],
                                  [ids[i] for i in rest], ks=(1, 5))
    print(f"identity recall@1 {recall[1]:.3f}, @5 {recall[5]:.3f} (13 queries, {len(rest)} gallery photos)")
    assert recall[1] >= 12 / 13
