"""The cascade stage of nets/heads.py (PointRefiner): point sampling against a brute-force bilinear
interpolation, and the refiner's start (the identity), gradients, its stages, old files' keys and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from morphable.nets.heads import PointRefiner, sample_points


def _bilinear(feature_map: np.ndarray, x: float, y: float, size: int) -> np.ndarray:
    """One point's value by hand: cell (i, j) of an h × w map covering a ``size`` px chip is centred at
    ((j + ½) size / w, (i + ½) size / h); between centres linear in each axis, beyond the outer centres constant."""
    C, h, w = feature_map.shape
    u = min(max(x * w / size - 0.5, 0.0), w - 1.0)
    v = min(max(y * h / size - 0.5, 0.0), h - 1.0)
    j0, i0 = int(np.floor(u)), int(np.floor(v))
    j1, i1 = min(j0 + 1, w - 1), min(i0 + 1, h - 1)
    a, b = u - j0, v - i0
    return ((1 - a) * (1 - b) * feature_map[:, i0, j0] + a * (1 - b) * feature_map[:, i0, j1]
            + (1 - a) * b * feature_map[:, i1, j0] + a * b * feature_map[:, i1, j1])


def test_sample_points_matches_a_hand_bilinear_interpolation():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    size = 63
    # inside, on cell centres, at the chip's edges and beyond them (the border value)
    points = torch.tensor([[[10.3, 20.7], [3.5, 4.5], [0.0, 0.0], [62.9, 30.0], [70.0, -5.0]],
                           [[31.5, 31.5], [12.25, 50.0], [5.0, 62.0], [-3.0, 40.0], [44.4, 1.1]]], dtype=torch.float64)
    got = sample_points(fmap, points, size)
    assert got.shape == (2, 5, 3)
    for b in range(2):
        for k in range(5):
            want = _bilinear(fmap[b].numpy(), float(points[b, k, 0]), float(points[b, k, 1]), size)
            np.testing.assert_allclose(got[b, k].numpy(), want, rtol=0, atol=1e-12)


def test_refiner_starts_as_the_identity_and_trains_its_own_weights_only():
    from morphable.identity import DlibFaceNet

    dlib = DlibFaceNet()
    refiner = PointRefiner(dlib, n_points=5, n_out=4, size=64, blocks=4, tune=2, hidden=8)
    assert refiner.mlps[0][0].in_features == 64 * 5 + 4  # 64 channels after 4 blocks, per point, and the estimate
    x = torch.rand(2, 64, 64, 3)
    points = 64 * torch.rand(2, 5, 2)
    estimate = torch.randn(2, 4)
    out = refiner(x, points, estimate)
    assert torch.equal(out, torch.zeros(2, 4))  # the last layer starts at zero
    torch.nn.init.normal_(refiner.mlps[0][-1].weight, std=0.1)
    refiner(x, points, estimate).square().sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in refiner.trunk.tuned.weight)
    assert refiner.mlps[0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in dlib.parameters()) and all(b.grad is None for b in dlib.buffers())
    # moving the points changes what the stage sees
    with torch.no_grad():
        assert not torch.equal(refiner(x, points, estimate), refiner(x, points + 8, estimate))
    with pytest.raises(ValueError, match="expected points"):
        refiner(x, points[:, :4], estimate)


def test_refiner_stages_share_the_map_and_read_one_stage_files():
    """Each stage has its own perceptron on the same map; a stop-32 state (one perceptron named ``mlp.``) loads
    into the first stage; fewer than one stage is refused."""
    from morphable.identity import DlibFaceNet

    dlib = DlibFaceNet()
    g = torch.Generator().manual_seed(1)
    refiner = PointRefiner(dlib, n_points=5, n_out=4, size=64, blocks=2, tune=0, hidden=8, stages=2)
    assert refiner.stages == 2
    for mlp in refiner.mlps:
        torch.nn.init.normal_(mlp[-1].weight, std=0.1, generator=g)
    x = torch.rand(2, 64, 64, 3, generator=g)
    points, estimate = 64 * torch.rand(2, 5, 2, generator=g), torch.randn(2, 4, generator=g)
    with torch.no_grad():
        fmap = refiner.feature_map(x)
        assert fmap.shape == (2, 32, 14, 14)  # 32 channels after 2 blocks (as the dlib trunk test finds at 64 px)
        first, second = refiner.correct(0, fmap, points, estimate), refiner.correct(1, fmap, points, estimate)
        assert torch.equal(refiner(x, points, estimate), first)
        assert not torch.allclose(first, second)  # two perceptrons
    one = PointRefiner(dlib, n_points=5, n_out=4, size=64, blocks=2, tune=0, hidden=8)
    old = {k.replace("mlps.0.", "mlp."): v for k, v in refiner.state_dict().items() if not k.startswith("mlps.1.")}
    assert any(k.startswith("mlp.") for k in old)
    one.load_state_dict(old)
    with torch.no_grad():
        torch.testing.assert_close(one(x, points, estimate), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="stages must be >= 1"):
        PointRefiner(dlib, n_points=5, n_out=4, size=64, blocks=2, tune=0, hidden=8, stages=0)
