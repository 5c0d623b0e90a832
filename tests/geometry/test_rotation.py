"""Rotation conversions: conventions, round trips against scipy, gradients near 0 and π."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from morphable.geometry.rotation import (axis_angle_to_matrix, axis_angle_to_quaternion, euler_to_matrix,
                                         matrix_to_axis_angle, matrix_to_euler, matrix_to_quaternion,
                                         matrix_to_sixd, nearest_rotation, quaternion_to_axis_angle,
                                         quaternion_to_matrix, sixd_to_matrix, skew)

D = torch.float64


def random_axis_angle(n: int, seed: int = 0, max_angle: float = math.pi) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    axis = torch.randn(n, 3, generator=g, dtype=D)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    return axis * torch.rand(n, 1, generator=g, dtype=D) * max_angle


def assert_rotation(R: torch.Tensor) -> None:
    eye = torch.eye(3, dtype=R.dtype).expand(R.shape)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=1e-10, rtol=0)


class TestAxisAngle:
    def test_matches_scipy(self):
        r = random_axis_angle(50)
        expected = torch.tensor(Rotation.from_rotvec(r.numpy()).as_matrix())
        torch.testing.assert_close(axis_angle_to_matrix(r), expected, atol=1e-12, rtol=0)

    def test_zero_and_tiny_angles(self):
        torch.testing.assert_close(axis_angle_to_matrix(torch.zeros(3, dtype=D)), torch.eye(3, dtype=D))
        r = torch.tensor([[1e-5, -2e-5, 3e-6], [1e-9, 0.0, 0.0]], dtype=D)
        expected = torch.tensor(Rotation.from_rotvec(r.numpy()).as_matrix())
        torch.testing.assert_close(axis_angle_to_matrix(r), expected, atol=1e-15, rtol=0)

    def test_convention_column_vectors_right_hand(self):
        # a positive quarter turn about +z takes +x to +y (R acts on column vectors)
        R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=D))
        torch.testing.assert_close(R @ torch.tensor([1.0, 0, 0], dtype=D), torch.tensor([0.0, 1, 0], dtype=D),
                                   atol=1e-15, rtol=0)

    def test_any_leading_shape(self):
        r = random_axis_angle(24).reshape(2, 3, 4, 3)
        R = axis_angle_to_matrix(r)
        assert R.shape == (2, 3, 4, 3, 3)
        assert_rotation(R)

    @pytest.mark.parametrize("max_angle", [1e-3, 1.0, math.pi - 1e-3])
    def test_round_trip(self, max_angle):
        r = random_axis_angle(100, seed=1, max_angle=max_angle)
        torch.testing.assert_close(matrix_to_axis_angle(axis_angle_to_matrix(r)), r, atol=1e-9, rtol=0)

    def test_round_trip_at_pi(self):
        # at exactly π the axis sign is ambiguous: compare the rotations, and the angle
        r = random_axis_angle(20, seed=2)
        r = r / r.norm(dim=-1, keepdim=True) * math.pi
        back = matrix_to_axis_angle(axis_angle_to_matrix(r))
        torch.testing.assert_close(back.norm(dim=-1), torch.full((20,), math.pi, dtype=D), atol=1e-9, rtol=0)
        torch.testing.assert_close(axis_angle_to_matrix(back), axis_angle_to_matrix(r), atol=1e-9, rtol=0)

    def test_angle_range(self):
        # a rotation by 3π/2 about +x comes back as π/2 about −x
        R = axis_angle_to_matrix(torch.tensor([1.5 * math.pi, 0, 0], dtype=D))
        torch.testing.assert_close(matrix_to_axis_angle(R), torch.tensor([-math.pi / 2, 0, 0], dtype=D),
                                   atol=1e-12, rtol=0)

    @pytest.mark.parametrize("r", [[1e-7, -2e-7, 5e-8], [0.0, 0.0, 0.0], [0.3, -0.2, 0.5],
                                   [math.pi - 1e-3, 0.0, 0.0], [0.0, 2.0, 2.2]])
    def test_gradcheck(self, r):
        x = torch.tensor(r, dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(axis_angle_to_matrix, (x,), eps=1e-7, atol=1e-6)

    @pytest.mark.parametrize("r", [[1e-4, -2e-4, 5e-5], [0.3, -0.2, 0.5], [0.0, math.pi - 1e-2, 0.0],
                                   [1.9, 1.2, 0.4]])
    def test_gradcheck_inverse(self, r):
        R = axis_angle_to_matrix(torch.tensor(r, dtype=D)).requires_grad_(True)
        assert torch.autograd.gradcheck(matrix_to_axis_angle, (R,), eps=1e-7, atol=1e-6)

    def test_gradient_finite_at_zero(self):
        x = torch.zeros(3, dtype=D, requires_grad=True)
        axis_angle_to_matrix(x).sum().backward()
        assert torch.isfinite(x.grad).all()
        # dR/dr at 0 is the skew generator: d/dr_z of sum(R) = sum(skew(e_z)) = 0, d/dr_x R[2,1] = 1
        y = torch.zeros(3, dtype=D, requires_grad=True)
        axis_angle_to_matrix(y)[2, 1].backward()
        torch.testing.assert_close(y.grad, torch.tensor([1.0, 0, 0], dtype=D))


class TestQuaternion:
    def test_matches_scipy(self):
        r = random_axis_angle(50, seed=3)
        q = axis_angle_to_quaternion(r)
        xyzw = Rotation.from_rotvec(r.numpy()).as_quat()  # scipy is scalar-last
        expected = torch.tensor(np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1))
        expected = torch.where(expected[:, :1] < 0, -expected, expected)
        torch.testing.assert_close(q, expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(quaternion_to_matrix(q), axis_angle_to_matrix(r), atol=1e-12, rtol=0)

    def test_matrix_round_trip_w_nonnegative(self):
        R = axis_angle_to_matrix(random_axis_angle(200, seed=4))
        q = matrix_to_quaternion(R)
        assert (q[:, 0] >= 0).all()
        torch.testing.assert_close(q.norm(dim=-1), torch.ones(200, dtype=D))
        torch.testing.assert_close(quaternion_to_matrix(q), R, atol=1e-12, rtol=0)

    def test_near_180_degrees(self):
        # Shepperd's method stays accurate where 1 + trace ≈ 0
        axis = torch.tensor([0.6, 0.0, 0.8], dtype=D)
        R = axis_angle_to_matrix(axis * (math.pi - 1e-9))
        torch.testing.assert_close(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-12, rtol=0)

    def test_unnormalised_input(self):
        q = torch.tensor([2.0, 0.0, 0.0, 2.0], dtype=D)  # 90° about z, scaled
        torch.testing.assert_close(quaternion_to_axis_angle(q), torch.tensor([0, 0, math.pi / 2], dtype=D))
        torch.testing.assert_close(quaternion_to_matrix(q), axis_angle_to_matrix(torch.tensor([0, 0, math.pi / 2], dtype=D)))

    def test_negated_quaternion_same_rotation(self):
        r = random_axis_angle(20, seed=5, max_angle=3.0)
        q = axis_angle_to_quaternion(r)
        torch.testing.assert_close(quaternion_to_axis_angle(-q), r, atol=1e-12, rtol=0)

    @pytest.mark.parametrize("max_angle", [1e-5, 1.0, 3.1])
    def test_axis_angle_round_trip(self, max_angle):
        r = random_axis_angle(50, seed=6, max_angle=max_angle)
        torch.testing.assert_close(quaternion_to_axis_angle(axis_angle_to_quaternion(r)), r, atol=1e-12, rtol=0)

    @pytest.mark.parametrize("r", [[1e-6, 2e-6, -1e-6], [0.4, 0.1, -0.3], [0.0, 0.0, math.pi - 1e-3]])
    def test_gradcheck(self, r):
        x = torch.tensor(r, dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(axis_angle_to_quaternion, (x,), eps=1e-7, atol=1e-6)
        q = axis_angle_to_quaternion(torch.tensor(r, dtype=D)).requires_grad_(True)
        assert torch.autograd.gradcheck(quaternion_to_axis_angle, (q,), eps=1e-7, atol=1e-6)


class TestEuler:
    def test_convention(self):
        yaw, pitch, roll = 0.3, -0.2, 0.1
        R = euler_to_matrix(torch.tensor([yaw, pitch, roll], dtype=D))
        # R = R_y(yaw) R_x(pitch) R_z(roll) = scipy's intrinsic "YXZ"
        expected = Rotation.from_euler("YXZ", [yaw, pitch, roll]).as_matrix()
        torch.testing.assert_close(R, torch.tensor(expected), atol=1e-12, rtol=0)

    def test_positive_yaw_turns_face_to_plus_x(self):
        R = euler_to_matrix(torch.tensor([0.5, 0.0, 0.0], dtype=D))
        front = R @ torch.tensor([0.0, 0.0, 1.0], dtype=D)
        assert front[0] > 0.4

    def test_round_trip(self):
        g = torch.Generator().manual_seed(7)
        ypr = (torch.rand(200, 3, generator=g, dtype=D) * 2 - 1) * torch.tensor([math.pi, math.pi / 2 - 1e-3, math.pi], dtype=D)
        torch.testing.assert_close(matrix_to_euler(euler_to_matrix(ypr)), ypr, atol=1e-9, rtol=0)

    @pytest.mark.parametrize("pitch", [math.pi / 2, -math.pi / 2])
    def test_gimbal_lock_gives_the_same_rotation(self, pitch):
        ypr = torch.tensor([[0.4, pitch, 0.0], [0.4, pitch, 0.7], [-1.2, pitch, 0.3]], dtype=D)
        R = euler_to_matrix(ypr)
        back = matrix_to_euler(R)
        torch.testing.assert_close(back[:, 2], torch.zeros(3, dtype=D), atol=1e-9, rtol=0)  # roll set to 0
        torch.testing.assert_close(euler_to_matrix(back), R, atol=1e-9, rtol=0)

    def test_gradcheck(self):
        x = torch.tensor([0.3, -0.4, 1.1], dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(euler_to_matrix, (x,))
        R = euler_to_matrix(torch.tensor([0.3, -0.4, 1.1], dtype=D)).requires_grad_(True)
        assert torch.autograd.gradcheck(matrix_to_euler, (R,))


class TestSixD:
    def test_round_trip(self):
        R = axis_angle_to_matrix(random_axis_angle(50, seed=8))
        torch.testing.assert_close(sixd_to_matrix(matrix_to_sixd(R)), R, atol=1e-12, rtol=0)

    def test_gram_schmidt(self):
        g = torch.Generator().manual_seed(9)
        d6 = torch.randn(30, 6, generator=g, dtype=D)
        R = sixd_to_matrix(d6)
        assert_rotation(R)
        # first column is the normalised first input; the second lies in the span of both inputs
        torch.testing.assert_close(R[:, :, 0], d6[:, :3] / d6[:, :3].norm(dim=-1, keepdim=True))
        n = torch.cross(d6[:, :3], d6[:, 3:], dim=-1)
        torch.testing.assert_close((R[:, :, 1] * n).sum(-1), torch.zeros(30, dtype=D), atol=1e-12, rtol=0)

    def test_gradcheck(self):
        x = torch.tensor([1.0, 0.2, -0.3, 0.1, 0.9, 0.4], dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(sixd_to_matrix, (x,))


class TestNearestRotation:
    def test_rotation_is_fixed_point(self):
        R = axis_angle_to_matrix(random_axis_angle(20, seed=10))
        torch.testing.assert_close(nearest_rotation(R), R, atol=1e-12, rtol=0)

    def test_matches_polar_decomposition(self):
        from scipy.linalg import polar

        g = torch.Generator().manual_seed(11)
        R = axis_angle_to_matrix(random_axis_angle(20, seed=11))
        M = R + 0.1 * torch.randn(20, 3, 3, generator=g, dtype=D)
        out = nearest_rotation(M)
        assert_rotation(out)
        for m, o in zip(M, out):
            U, _ = polar(m.numpy())  # orthogonal factor = nearest orthogonal matrix (det > 0 here)
            np.testing.assert_allclose(o.numpy(), U, atol=1e-10)

    def test_reflection_gives_proper_rotation(self):
        M = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=D))
        out = nearest_rotation(M + 1e-3 * torch.eye(3, dtype=D))
        assert_rotation(out)


def test_skew_is_cross_product():
    g = torch.Generator().manual_seed(12)
    v, u = torch.randn(10, 3, generator=g, dtype=D), torch.randn(10, 3, generator=g, dtype=D)
    torch.testing.assert_close((skew(v) @ u[..., None])[..., 0], torch.cross(v, u, dim=-1))
    torch.testing.assert_close(skew(v), -skew(v).transpose(-1, -2))


@pytest.mark.parametrize("fn,shape", [(axis_angle_to_matrix, (4,)), (quaternion_to_matrix, (3,)),
                                      (matrix_to_quaternion, (3, 4)), (euler_to_matrix, (2,)),
                                      (sixd_to_matrix, (5,)), (nearest_rotation, (2, 3))])
def test_shape_errors(fn, shape):
    with pytest.raises(ValueError, match="expected shape"):
        fn(torch.zeros(shape))


@pytest.mark.parametrize("scale", [0.0, 1e-6, 1e-3, 1.0, 3.1])
def test_axis_angle_closed_form_gradient_equals_autograd_of_the_formula(scale):
    """The CPU path's closed-form gradient against autograd through the textbook formula and finite
    differences, from r = 0 (Taylor branch) to near π; float32 inputs give float32 outputs."""
    from morphable.geometry.rotation import axis_angle_to_matrix_reference

    g = torch.Generator().manual_seed(7)
    r = (scale * torch.nn.functional.normalize(torch.randn(2, 4, 3, dtype=D, generator=g), dim=-1)).requires_grad_(True)
    G = torch.randn(2, 4, 3, 3, dtype=D, generator=g)
    fast, ref = axis_angle_to_matrix(r), axis_angle_to_matrix_reference(r)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=0)
    (g_fast,) = torch.autograd.grad((fast * G).sum(), r)
    (g_ref,) = torch.autograd.grad((ref * G).sum(), r)
    torch.testing.assert_close(g_fast, g_ref, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (r,))
    assert axis_angle_to_matrix(r.detach().float()).dtype == torch.float32



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotate_points_equals_the_matrix_product_with_its_gradients(dtype):
    """``(R Xᵀ)ᵀ`` against ``X Rᵀ`` under autograd: values, and the gradients of R (through the axis-angle) and
    of the points."""
    from morphable.geometry.rotation import rotate_points

    g = torch.Generator().manual_seed(4)
    p = (50 * torch.randn(2, 5000, 3, generator=g, dtype=D)).to(dtype).requires_grad_(True)
    r = random_axis_angle(2, seed=5).to(dtype).requires_grad_(True)
    w = torch.randn(2, 5000, 3, generator=g, dtype=D).to(dtype)
    R = axis_angle_to_matrix(r)
    out = rotate_points(p, R)
    ref = p @ R.transpose(-1, -2)
    assert out.shape == ref.shape
    tol = dict(rtol=1e-5, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(out, ref, **tol)
    got = torch.autograd.grad((out * w).sum(), (p, r))
    want = torch.autograd.grad((ref * w).sum(), (p, r))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=0)
