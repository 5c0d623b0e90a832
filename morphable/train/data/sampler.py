"""P identities × K images per batch, and RingNet's rings built from such a batch.

Metric-learning batches (Hermans et al., "In Defense of the Triplet Loss", 2017): draw ``P`` distinct
identities, then ``K`` images of each, with replacement when an identity has fewer than ``K``. An image
without an identity label (or a person with one photo) is a group of its own: RingNet (Sanyal et al. 2019,
implementation details) gives such images ring mates made of random crops and scales of the same image,
which the caller provides by drawing a different crop (``variant``) for each repeat.

A ring (:func:`rings`) is one group's ``K`` images followed by one image of the next group in the batch,
the ``R = K + 1`` elements of RingNet's shape-consistency loss with ``R − 1`` images of one person and one
of another, using no image beyond the ``P × K`` drawn.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor


class IdentitySampler:
    """Draws ``(P, K)`` item indices (and crop variants) from labelled items.

    Args:
        labels: one label per item; items sharing a label form a group; ``None`` makes an item its own group.
        identities: P, distinct groups per batch (at most the number of groups).
        images: K, items per group (drawn without replacement when the group has at least K, else with).
        variants: crops prepared per item; each drawn element gets a random variant, distinct within a group
            repeat where possible, so a singleton's ring mates are different crops of it.
        weights: optional per-group sampling weight (e.g. to balance sources); uniform by default.
    """

    def __init__(self, labels: Sequence[Hashable | None], identities: int, images: int, variants: int = 1,
                 weights: Sequence[float] | None = None):
        groups: dict[Hashable, list[int]] = {}
        order: list[list[int]] = []
        for i, label in enumerate(labels):
            if label is None:
                order.append([i])
            else:
                if label not in groups:
                    groups[label] = []
                    order.append(groups[label])
                groups[label].append(i)
        self.groups = [torch.tensor(g) for g in order]
        if identities < 2 or identities > len(self.groups):
            raise ValueError(f"IdentitySampler: need 2 <= P <= {len(self.groups)} groups, got P = {identities}")
        if images < 1 or variants < 1:
            raise ValueError("IdentitySampler: K and variants must be >= 1")
        self.P, self.K, self.variants = int(identities), int(images), int(variants)
        w = torch.ones(len(self.groups)) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(self.groups),) or (w < 0).any() or int((w > 0).sum()) < self.P:
            raise ValueError(f"IdentitySampler: need {len(self.groups)} non-negative group weights, at least P positive")
        self.weights = w.double()

    @property
    def group_sizes(self) -> list[int]:
        return [len(g) for g in self.groups]

    def draw(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """One batch: item indices ``(P, K)`` and crop variants ``(P, K)`` (deterministic given ``generator``)."""
        chosen = torch.multinomial(self.weights, self.P, replacement=False, generator=generator)
        items, variants = [], []
        for g in chosen.tolist():
            members = self.groups[g]
            if len(members) >= self.K:
                pick = members[torch.randperm(len(members), generator=generator)[: self.K]]
            else:
                pick = members[torch.randint(len(members), (self.K,), generator=generator)]
            items.append(pick)
            # variants: a random permutation (cycled), so repeats of one item get different crops first
            perm = torch.randperm(self.variants, generator=generator)
            offset = torch.arange(self.K) % self.variants
            variants.append(perm[offset] if len(members) < self.K else
                            torch.randint(self.variants, (self.K,), generator=generator))
        return torch.stack(items), torch.stack(variants)


def rings(batch: Tensor) -> Tensor:
    """``(P, K, ...)`` group-major batch → ``(P, K + 1, ...)`` rings: group ``p``'s ``K`` elements, then the
    first element of group ``(p + 1) mod P`` (another person)."""
    if batch.dim() < 2 or batch.shape[0] < 2:
        raise ValueError(f"rings: expected a (P>=2, K, ...) batch, got {tuple(batch.shape)}")
    return torch.cat([batch, batch.roll(-1, dims=0)[:, :1]], dim=1)
