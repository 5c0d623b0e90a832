"""Cameras: hand-checked projections, frame conventions, batching, gradients, serialisation."""
import math

import pytest
import torch

from morphable.geometry.camera import Perspective, ScaledOrthographic, camera_from_dict
from morphable.geometry.rotation import axis_angle_to_matrix, euler_to_matrix, matrix_to_axis_angle

D = torch.float64


def ortho(scale=2.0, rotation=(0.0, 0.0, 0.0), translation=(10.0, 20.0)) -> ScaledOrthographic:
    return ScaledOrthographic(torch.tensor([scale], dtype=D), torch.tensor([rotation], dtype=D),
                              torch.tensor([translation], dtype=D))


def persp(focal=1000.0, pp=(320.0, 240.0), rotation=(0.0, 0.0, 0.0), translation=(0.0, 0.0, -500.0)) -> Perspective:
    return Perspective(torch.tensor([focal], dtype=D), torch.tensor([pp], dtype=D), torch.tensor([rotation], dtype=D),
                       torch.tensor([translation], dtype=D))


class TestScaledOrthographic:
    def test_hand_example(self):
        # +x goes right, model +y goes up = image v down, +z is depth-only
        pts = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 5]]], dtype=D)
        out = ortho().project_with_depth(pts)
        expected = torch.tensor([[[10.0, 20, 0], [12, 20, 0], [10, 18, 0], [10, 20, -5]]], dtype=D)
        torch.testing.assert_close(out, expected)

    def test_depth_larger_is_farther(self):
        # the viewer looks along −z: the nose tip (larger z) is nearer, so it has the smaller depth
        d = ortho().project_with_depth(torch.tensor([[[0.0, 0, 10], [0, 0, -10]]], dtype=D))[..., 2]
        assert d[0, 0] < d[0, 1]

    def test_rotation_applied_before_projection(self):
        yaw = 0.4
        cam = ortho(scale=1.0, rotation=(0.0, yaw, 0.0), translation=(0.0, 0.0))
        nose = torch.tensor([[[0.0, 0.0, 100.0]]], dtype=D)
        # a positive rotation about +y takes the face's front (+z) towards +x = image right
        torch.testing.assert_close(cam.project(nose)[0, 0], torch.tensor([100 * math.sin(yaw), 0.0], dtype=D))

    def test_matches_formula(self):
        g = torch.Generator().manual_seed(0)
        B, N = 4, 7
        cam = ScaledOrthographic(torch.rand(B, generator=g, dtype=D) + 0.5, torch.randn(B, 3, generator=g, dtype=D),
                                 torch.randn(B, 2, generator=g, dtype=D) * 100)
        X = torch.randn(B, N, 3, generator=g, dtype=D) * 50
        R = axis_angle_to_matrix(cam.rotation)
        for b in range(B):
            for n in range(N):
                v = R[b] @ X[b, n]
                u_ = cam.scale[b] * v[0] + cam.translation[b, 0]
                v_ = -cam.scale[b] * v[1] + cam.translation[b, 1]
                torch.testing.assert_close(cam.project(X)[b, n], torch.stack([u_, v_]))
        torch.testing.assert_close(cam.transform(X), X @ R.transpose(1, 2))

    def test_gradcheck(self):
        g = torch.Generator().manual_seed(1)
        s = torch.tensor([1.5], dtype=D, requires_grad=True)
        r = torch.tensor([[0.2, -0.1, 0.3]], dtype=D, requires_grad=True)
        t = torch.tensor([[5.0, 6.0]], dtype=D, requires_grad=True)
        X = torch.randn(1, 5, 3, generator=g, dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s, r, t, X: ScaledOrthographic(s, r, t).project_with_depth(X), (s, r, t, X))

    def test_dict_round_trip(self):
        cam = ortho(1.25, (0.1, 0.2, 0.3), (4.0, 5.0))
        d = cam.to_dict()
        assert d["type"] == "scaled_orthographic"
        back = camera_from_dict(d, dtype=D)
        assert isinstance(back, ScaledOrthographic)
        X = torch.randn(1, 5, 3, dtype=D)
        torch.testing.assert_close(back.project(X), cam.project(X))

    @pytest.mark.parametrize("kw", [dict(scale=torch.ones(1, 1)), dict(rotation=torch.zeros(1, 4)),
                                    dict(translation=torch.zeros(1, 3))])
    def test_shape_checks(self, kw):
        args = dict(scale=torch.ones(1), rotation=torch.zeros(1, 3), translation=torch.zeros(1, 2)) | kw
        with pytest.raises(ValueError, match="expected shape"):
            ScaledOrthographic(**args)

    def test_points_shape_check(self):
        with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
            ortho().project(torch.zeros(5, 3, dtype=D))


class TestPerspective:
    def test_hand_example(self):
        cam = persp()
        pts = torch.tensor([[[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 100]]], dtype=D)
        out = cam.project_with_depth(pts)
        expected = torch.tensor([[[320.0, 240, 500], [340, 240, 500], [320, 220, 500], [320, 240, 400]]], dtype=D)
        torch.testing.assert_close(out, expected)

    def test_far_away_limit_is_scaled_orthographic(self):
        # with the face at distance d, perspective ≈ scaled orthographic with s = f / d
        d, f = 1e8, 2e8  # relative error ≈ z/d
        rot = (0.1, -0.3, 0.2)
        p = persp(focal=f, pp=(100.0, 50.0), rotation=rot, translation=(0.0, 0.0, -d))
        o = ortho(scale=f / d, rotation=rot, translation=(100.0, 50.0))
        X = torch.randn(1, 20, 3, dtype=D) * 50
        torch.testing.assert_close(p.project(X), o.project(X), atol=1e-3, rtol=0)

    def test_translation_in_camera_frame(self):
        # t moves the model after rotating it: +x translation moves the image point right by f·t/d
        cam = persp(rotation=(0.0, 0.5, 0.0), translation=(10.0, 0.0, -500.0))
        torch.testing.assert_close(cam.project(torch.zeros(1, 1, 3, dtype=D))[0, 0],
                                   torch.tensor([340.0, 240.0], dtype=D))

    def test_batch_independent(self):
        g = torch.Generator().manual_seed(2)
        B = 3
        cam = Perspective(torch.rand(B, generator=g, dtype=D) * 500 + 500, torch.rand(B, 2, generator=g, dtype=D) * 100,
                          torch.randn(B, 3, generator=g, dtype=D) * 0.3,
                          torch.tensor([[0.0, 0, -400], [10, -5, -600], [0, 3, -800]], dtype=D))
        X = torch.randn(B, 6, 3, generator=g, dtype=D) * 30
        out = cam.project_with_depth(X)
        for b in range(B):
            one = Perspective(cam.focal[b:b + 1], cam.principal_point[b:b + 1], cam.rotation[b:b + 1],
                              cam.translation[b:b + 1])
            torch.testing.assert_close(out[b:b + 1], one.project_with_depth(X[b:b + 1]))

    def test_gradcheck(self):
        g = torch.Generator().manual_seed(3)
        f = torch.tensor([800.0], dtype=D, requires_grad=True)
        c = torch.tensor([[100.0, 120.0]], dtype=D, requires_grad=True)
        r = torch.tensor([[0.1, 0.2, -0.1]], dtype=D, requires_grad=True)
        t = torch.tensor([[3.0, -2.0, -450.0]], dtype=D, requires_grad=True)
        X = torch.randn(1, 4, 3, generator=g, dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(lambda f, c, r, t, X: Perspective(f, c, r, t).project_with_depth(X),
                                        (f, c, r, t, X))

    def test_dict_round_trip(self):
        cam = persp(900.0, (10.0, 20.0), (0.1, 0.2, 0.3), (1.0, 2.0, -300.0))
        back = camera_from_dict(cam.to_dict(), dtype=D)
        assert isinstance(back, Perspective)
        X = torch.randn(1, 5, 3, dtype=D)
        torch.testing.assert_close(back.project(X), cam.project(X))

    def test_rotation_matrix_property(self):
        cam = persp(rotation=(0.3, -0.2, 0.1))
        ypr = torch.tensor([0.3, -0.2, 0.1], dtype=D)
        R = euler_to_matrix(ypr)
        cam2 = persp(rotation=tuple(matrix_to_axis_angle(R).tolist()))
        torch.testing.assert_close(cam2.rotation_matrix[0], R)
        assert cam.rotation_matrix.shape == (1, 3, 3)


def test_unknown_camera_type():
    with pytest.raises(ValueError, match="unknown camera type"):
        camera_from_dict({"type": "fisheye"})


@pytest.mark.parametrize("make", [ortho, persp])
def test_rescaled_maps_the_image_edges_onto_the_resized_edges(make):
    """A 4-px-wide image doubled is 8 px wide: its left edge (x = −½) stays at −½, its right edge (3.5)
    moves to 7.5, and every projected point keeps its place relative to the image."""
    from morphable.geometry.camera import rescale_pixels

    torch.testing.assert_close(rescale_pixels(torch.tensor([-0.5, 3.5, 1.5], dtype=D), 2.0),
                               torch.tensor([-0.5, 7.5, 3.5], dtype=D))
    cam = make()
    X = torch.randn(1, 9, 3, generator=torch.Generator().manual_seed(3), dtype=D) * 40
    for factor in (2.0, 0.3):
        big = cam.rescaled(factor).project(X)
        W = 640
        # the fraction of the image width left of each point is the same in both images
        torch.testing.assert_close((big[..., 0] + 0.5) / (W * factor), (cam.project(X)[..., 0] + 0.5) / W)
        torch.testing.assert_close(cam.rescaled(factor).rescaled(1 / factor).project(X), cam.project(X))
    assert type(cam.rescaled(2.0)) is type(cam)
