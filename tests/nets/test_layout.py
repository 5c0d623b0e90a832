"""ParamLayout: named slices of a flat parameter vector."""
import pytest
import torch

from morphable.nets.layout import ParamLayout


def test_split_join_round_trip_and_slices():
    layout = ParamLayout((("identity", 4), ("albedo", 3), ("pose", 0)))
    assert layout.size == 7 and layout.names == ("identity", "albedo", "pose")
    assert layout.slice("albedo") == slice(4, 7) and layout.sizeof("identity") == 4
    y = torch.arange(14.0).reshape(2, 7)
    parts = layout.split(y)
    assert torch.equal(parts["identity"], y[:, :4]) and torch.equal(parts["albedo"], y[:, 4:])
    assert parts["pose"].shape == (2, 0)
    assert torch.equal(layout.join(parts), y)


def test_errors():
    with pytest.raises(ValueError, match="duplicate"):
        ParamLayout((("a", 1), ("a", 2)))
    layout = ParamLayout((("a", 2),))
    with pytest.raises(KeyError, match="no block 'b'"):
        layout.slice("b")
    with pytest.raises(ValueError, match="last dimension 2"):
        layout.split(torch.zeros(3, 5))
