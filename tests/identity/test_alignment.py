"""Differentiable face chips against dlib.get_face_chip; the similarity fit, pyramid and sampler against
brute force; gradients w.r.t. image and landmarks against finite differences."""
from __future__ import annotations

import dlib
import numpy as np
import pytest
import torch

from morphable.identity import alignment
from morphable.identity.alignment import (
    bilinear_sample,
    chip_template,
    extract_face_chips,
    pyramid_down,
    sample_parallelogram,
    similarity_transform,
)
from tests.conftest import data_file
from tests.identity.faces import largest_face


def _dlib_shape(points: np.ndarray) -> dlib.full_object_detection:
    parts = dlib.points()
    for x, y in points:
        parts.append(dlib.point(int(x), int(y)))
    return dlib.full_object_detection(dlib.rectangle(0, 0, 10, 10), parts)


def _ours(face, points: np.ndarray) -> np.ndarray:
    image = torch.from_numpy(np.array(face.image)).double()[None]
    return extract_face_chips(image, torch.from_numpy(points)[None])[0].numpy()


@pytest.mark.parametrize("kind", ["68", "5"])
def test_small_face_matches_dlib_exactly_up_to_truncation(kind):
    """No pyramid (face < 2x the chip): dlib truncates our real-valued chip to integers."""
    face = largest_face(data_file("deepface/tests/unit/dataset") / "img10.jpg")
    points = face.landmarks68 if kind == "68" else face.landmarks5
    theirs = dlib.get_face_chip(face.image, _dlib_shape(points), 150, 0.25).astype(np.float64)
    ours = _ours(face, points)
    assert ours.shape == (150, 150, 3)
    diff = ours - theirs
    assert diff.min() > -1e-6 and diff.max() < 1 + 1e-6  # floor(ours) == dlib, pixel by pixel
    assert np.mean(np.floor(ours + 1e-9) == theirs) > 0.999


@pytest.mark.parametrize("kind", ["68", "5"])
def test_large_face_goes_through_the_pyramid_like_dlib(kind):
    """A face many times the chip size: dlib truncates each pyramid level too, so we are brighter by
    about half a grey level per level, never darker, and the crop geometry is the same."""
    face = largest_face(data_file("deepface/tests/unit/dataset") / "img1.jpg")  # 1868 x 1382, 2 levels
    points = face.landmarks68 if kind == "68" else face.landmarks5
    theirs = dlib.get_face_chip(face.image, _dlib_shape(points), 150, 0.25).astype(np.float64)
    diff = _ours(face, points) - theirs
    assert diff.min() > -1e-6 and diff.max() < 3.0
    assert 0.5 < diff.mean() < 2.0
    # moving the crop by about one chip pixel (8 photo px here) would cost far more than the truncation
    shifted = np.abs(_ours(face, points + [8.0, 0.0]) - theirs).mean()
    assert shifted > np.abs(diff).mean() + 1.0


def test_chip_geometry_follows_dlibs_rectangle():
    """Landmarks that are an exact similarity (angle, scale, shift) of the template, on an image whose
    pixels hold their own coordinates: chip pixel (c, r) must show the image point
    T(75, 75) + k R (c - 74.5, r - 74.5), k = (150 s - 1) / 149 -- dlib's rectangle of side 150 s - 1
    spanned by the chip's 149 pixel steps, centred on the template centre's image."""
    ids, template = chip_template(68, 150, 0.25)
    angle, scale = 0.3, 1.2
    shift = torch.tensor([60.0, 45.0], dtype=torch.float64)
    rotation = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float64)
    landmarks = torch.zeros(68, 2, dtype=torch.float64)
    landmarks[ids] = template @ (scale * rotation).T + shift
    landmarks[[i for i in range(68) if i not in ids]] = 1e6  # points outside the template must not matter
    yy, xx = torch.meshgrid(torch.arange(300.0), torch.arange(300.0), indexing="ij")
    image = torch.stack([xx, yy, xx * 0], -1).double()[None]  # pixel value = its own coordinates
    chip = extract_face_chips(image, landmarks[None])[0]
    centre = torch.tensor([75.0, 75.0], dtype=torch.float64) @ (scale * rotation).T + shift
    step = (150 * scale - 1) / 149
    cells = torch.tensor([[0, 0], [149, 0], [0, 149], [149, 149], [74, 30], [20, 120]], dtype=torch.float64)
    expected = centre + step * (cells - 74.5) @ rotation.T
    seen = chip[cells[:, 1].long(), cells[:, 0].long(), :2]
    assert torch.allclose(seen, expected, atol=1e-9)


def test_similarity_transform_recovers_a_known_one():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(2, 7, 2, dtype=torch.float64, generator=g)
    a, b = torch.tensor([1.5, -0.4], dtype=torch.float64), torch.tensor([0.3, 2.0], dtype=torch.float64)
    m = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)
    t = torch.tensor([[3.0, -1.0], [0.5, 7.0]], dtype=torch.float64)
    target = source @ m.transpose(1, 2) + t[:, None]
    fitted = similarity_transform(source, target)
    assert torch.allclose(fitted[:, :, :2], m, atol=1e-12) and torch.allclose(fitted[:, :, 2], t, atol=1e-12)
    # with noise it is the least-squares optimum: the gradient of the squared residual vanishes
    noisy = (target + 0.1 * torch.randn(target.shape, dtype=torch.float64, generator=g))
    params = similarity_transform(source, noisy).requires_grad_(True)
    residual = source @ params[:, :, :2].transpose(1, 2) + params[:, None, :, 2] - noisy
    loss = (residual ** 2).sum()  # its gradient along the similarity family (a, b, t) must vanish
    grads = torch.autograd.grad(loss, params)[0]
    assert torch.allclose(grads[:, 0, 0] + grads[:, 1, 1], torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(grads[:, 1, 0] - grads[:, 0, 1], torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(grads[:, :, 2], torch.zeros(2, 2, dtype=torch.float64), atol=1e-10)


def test_pyramid_down_against_brute_force():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(13, 16, 2, dtype=torch.float64, generator=g)
    down = pyramid_down(image)
    assert down.shape == (5, 6, 2)  # ((13 - 3) // 2, (16 - 3) // 2)
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64)
    for i in range(5):
        for j in range(6):
            window = image[2 * i:2 * i + 5, 2 * j:2 * j + 5]
            expected = (taps[:, None, None] * taps[None, :, None] * window).sum((0, 1)) / 256
            assert torch.allclose(down[i, j], expected, atol=1e-12)


def test_bilinear_sample_against_brute_force():
    g = torch.Generator().manual_seed(2)
    image = torch.rand(6, 7, 3, dtype=torch.float64, generator=g)
    points = torch.tensor([[0.0, 0.0], [2.25, 3.5], [5.999, 4.999], [6.0, 2.0], [-0.1, 1.0], [3.0, 5.0]],
                          dtype=torch.float64)
    values = bilinear_sample(image, points)
    for (x, y), value in zip(points.tolist(), values):
        left, top = int(np.floor(x)), int(np.floor(y))
        if left < 0 or top < 0 or left + 1 >= 7 or top + 1 >= 6:  # dlib: black outside
            assert torch.all(value == 0)
            continue
        fx, fy = x - left, y - top
        expected = ((1 - fx) * (1 - fy) * image[top, left] + fx * (1 - fy) * image[top, left + 1]
                    + (1 - fx) * fy * image[top + 1, left] + fx * fy * image[top + 1, left + 1])
        assert torch.allclose(value, expected, atol=1e-12)


@pytest.mark.parametrize("shift", [0.0, 9.0])  # inside the image; partly off it (dlib's black border)
def test_parallelogram_sampler_matches_the_point_sampler(shift):
    g = torch.Generator().manual_seed(4)
    image = torch.rand(30, 40, 3, dtype=torch.float64, generator=g)
    origin = torch.tensor([8.3 + shift, 2.7 + shift], dtype=torch.float64)
    x_axis, y_axis = torch.tensor([1.3, 0.4], dtype=torch.float64), torch.tensor([-0.35, 1.15], dtype=torch.float64)
    size = 17
    c, r = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="xy")
    points = origin + c.reshape(-1, 1) * x_axis + r.reshape(-1, 1) * y_axis
    expected = bilinear_sample(image, points).reshape(size, size, 3)
    ours = sample_parallelogram(image, origin, x_axis, y_axis, size)
    assert torch.allclose(ours, expected, atol=1e-12)
    black = (expected == 0).all(-1).float().mean()
    assert (black == 0) if shift == 0 else (0.1 < black < 0.9)


@pytest.mark.parametrize("size, side, span, depth", [(30, 40, 18.0, 0), (16, 120, 60.0, 2)])
def test_gradients_wrt_image_and_landmarks(size, side, span, depth, monkeypatch):
    levels = []
    monkeypatch.setattr(alignment, "pyramid_down", lambda image: levels.append(1) or pyramid_down(image))
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, side, side + 4, 3, dtype=torch.float64, generator=g).requires_grad_(True)
    _, unit = chip_template(5, 1, 0.0)
    landmarks = (unit * span + side / 2 - span / 2
                 + 0.3 * torch.randn(5, 2, dtype=torch.float64, generator=g))[None].requires_grad_(True)

    def chips(image, landmarks):
        return extract_face_chips(image, landmarks, size=size, padding=0.25)

    out = chips(image, landmarks)
    assert (out != 0).float().mean() > 0.9  # the chip lies inside the image
    assert len(levels) == depth  # pyramid levels used: none, or two
    assert torch.autograd.gradcheck(chips, (image, landmarks), eps=1e-6, atol=1e-6, rtol=1e-4,
                                    fast_mode=True)
    # the landmark gradient is not vacuous: moving the landmarks moves the chip
    weights = torch.rand(out.shape, dtype=torch.float64, generator=g)
    grad = torch.autograd.grad((out * weights).sum(), landmarks)[0]
    assert grad.abs().sum() > 1e-3


def test_bad_inputs():
    with pytest.raises(ValueError, match="68 or 5"):
        extract_face_chips(torch.zeros(1, 20, 20, 3), torch.zeros(1, 7, 2))
    with pytest.raises(ValueError, match=r"\(B, L, 2\)"):
        extract_face_chips(torch.zeros(1, 20, 20, 3), torch.zeros(68, 2))


def test_uint8_photo_gives_the_float_chip():
    """A uint8 photo is converted crop by crop: the same chip as the whole photo in [0, 1] (float32)."""
    face = largest_face(data_file("deepface/tests/unit/dataset") / "img1.jpg")  # pyramid levels too
    photo = torch.from_numpy(np.array(face.image))[None]
    landmarks = torch.from_numpy(face.landmarks68)[None]
    ours = extract_face_chips(photo, landmarks)
    reference = extract_face_chips(photo.float() / 255, landmarks.float())
    assert ours.dtype == torch.float32 and ours.shape == (1, 150, 150, 3)
    assert float(ours.std()) > 0.05  # a face, not a black chip
    assert torch.allclose(ours, reference, atol=1e-6)
