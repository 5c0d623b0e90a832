"""Turntable views: a left-right symmetric mesh looks mirrored at ±yaw and symmetric at yaw 0; the mesh's
bounding-box centre is at the view centre."""
from __future__ import annotations

import numpy as np
import torch

from morphable.viz.turntable import turntable, turntable_views


def _half_sphere(n: int = 24):
    """A hemisphere facing +z (radius 50 mm), symmetric in x, with a nose bump so that turning shows."""
    theta, phi = np.meshgrid(np.linspace(0, np.pi / 2, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False),
                             indexing="ij")
    r = 50 + 15 * np.exp(-(theta / 0.3) ** 2)
    v = np.stack([r * np.sin(theta) * np.cos(phi), r * np.sin(theta) * np.sin(phi), r * np.cos(theta)], -1).reshape(-1, 3)
    idx = np.arange(n * 2 * n).reshape(n, 2 * n)
    a, b = idx[:-1], np.roll(idx, -1, 1)[:-1]
    c, d = idx[1:], np.roll(idx, -1, 1)[1:]
    tri = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    return torch.tensor(v), torch.tensor(tri)


def test_views_mirror_and_centre():
    v, f = _half_sphere()
    images, covered = turntable_views(v, f, yaws_degrees=(-40, 0, 40), size=64)
    assert images.shape == (3, 64, 64, 3) and images.dtype == np.uint8
    left, front, right = covered
    assert (left == right[:, ::-1]).mean() > 0.98  # ±40° are mirror images
    assert (front == front[:, ::-1]).mean() > 0.98
    ys, xs = np.nonzero(front)
    assert abs((xs.min() + xs.max()) / 2 - 31.5) <= 1 and abs((ys.min() + ys.max()) / 2 - 31.5) <= 1
    assert (images[0][~left] == 255).all() and images[1][front].mean() < 250  # white background, shaded face
    assert (left != front).any()
    strip = turntable(v, f, yaws_degrees=(-40, 0, 40), size=64)
    assert strip.shape == (64, 192, 3) and (strip[:, 64:128] == images[1]).all()
