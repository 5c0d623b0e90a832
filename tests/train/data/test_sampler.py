"""P × K identity sampler and rings: group structure, replacement, crop variants, determinism."""
import pytest
import torch

from morphable.train.data.sampler import IdentitySampler, rings


def test_batches_hold_p_distinct_groups_of_k():
    labels = ["a"] * 6 + ["b"] * 2 + [None, None] + ["c"] * 5
    s = IdentitySampler(labels, identities=3, images=4, variants=4)
    assert sorted(s.group_sizes) == [1, 1, 2, 5, 6]
    g = torch.Generator().manual_seed(0)
    seen_groups = set()
    for _ in range(200):
        items, variants = s.draw(g)
        assert items.shape == variants.shape == (3, 4)
        names = [{labels[i] if labels[i] is not None else f"solo{i}" for i in row.tolist()} for row in items]
        assert all(len(n) == 1 for n in names)  # one group per row
        assert len({next(iter(n)) for n in names}) == 3  # distinct groups
        for row, var in zip(items.tolist(), variants.tolist()):
            group = labels[row[0]]
            if group in ("a", "c"):  # enough images: drawn without replacement
                assert len(set(row)) == 4
            else:  # with replacement; repeats of one image get different crops
                assert len(set(zip(row, var))) == 4
        seen_groups |= {next(iter(n)) for n in names}
    assert seen_groups == {"a", "b", "c", "solo8", "solo9"}
    again = IdentitySampler(labels, identities=3, images=4, variants=4)
    a = s.draw(torch.Generator().manual_seed(5))
    b = again.draw(torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_weights_and_errors():
    labels = ["a", "a", "b", "c"]
    s = IdentitySampler(labels, identities=2, images=2, weights=[1.0, 0.0, 1.0])
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        items, _ = s.draw(g)
        assert 2 not in items.tolist()[0] + items.tolist()[1]  # group "b" has weight 0
    with pytest.raises(ValueError):
        IdentitySampler(labels, identities=4, images=2)
    with pytest.raises(ValueError):
        IdentitySampler(labels, identities=2, images=2, weights=[1.0, 0.0, 0.0])


def test_rings_append_the_next_groups_first_element():
    batch = torch.arange(12).reshape(3, 4)
    r = rings(batch)
    assert r.tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10, 11, 0]]
    feats = torch.randn(3, 4, 7)
    assert torch.equal(rings(feats)[2, 4], feats[0, 0])
