"""Compiled CPU kernels (numba) for area-weighted vertex normals and their backward pass.

:func:`~morphable.geometry.mesh.vertex_normals` runs these on CPU tensors: one loop over the triangles that
accumulates ``(v1 − v0) × (v2 − v0)`` into the three corners, then one normalisation per vertex (and the
transposed loops for the gradient), instead of about thirty tensor passes with sparse products. The
sums run in the input dtype, face by face, so results equal the sparse and index-add paths to rounding.
Compiled (IEEE division: ``error_model="numpy"``) on first use and cached on disk beside this file (numba ``cache=True``).
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor


@numba.njit(cache=True, error_model="numpy")
def _normals_forward(vertices, triangles, eps):  # pragma: no cover - compiled
    """``vertices (B, V, 3)``, ``triangles (F, 3)`` -> unit normals ``(B, V, 3)`` and the norms ``(B, V)`` of the
    unnormalised sums."""
    B, V = vertices.shape[0], vertices.shape[1]
    out = np.zeros((B, V, 3), vertices.dtype)
    norm = np.empty((B, V), vertices.dtype)
    for b in range(B):
        v, s = vertices[b], out[b]
        for f in range(triangles.shape[0]):
            i0, i1, i2 = triangles[f, 0], triangles[f, 1], triangles[f, 2]
            ax, ay, az = v[i1, 0] - v[i0, 0], v[i1, 1] - v[i0, 1], v[i1, 2] - v[i0, 2]
            bx, by, bz = v[i2, 0] - v[i0, 0], v[i2, 1] - v[i0, 1], v[i2, 2] - v[i0, 2]
            nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
            for i in (i0, i1, i2):
                s[i, 0] += nx
                s[i, 1] += ny
                s[i, 2] += nz
        for i in range(V):
            n = np.sqrt(s[i, 0] * s[i, 0] + s[i, 1] * s[i, 1] + s[i, 2] * s[i, 2])
            norm[b, i] = n
            d = max(n, eps)  # isolated vertices stay 0, no nan
            s[i, 0] /= d
            s[i, 1] /= d
            s[i, 2] /= d
    return out, norm


@numba.njit(cache=True, error_model="numpy")
def _normals_backward(vertices, triangles, out, norm, grad, eps):  # pragma: no cover - compiled
    """Gradient ``(B, V, 3)`` of ``Σ grad · out`` with respect to the vertices.

    ``d(s/|s|) = (I − n̂ n̂ᵀ) ds / |s|`` (``ds / eps`` where the clamp is active); ``n_f = a × b`` with
    ``a = v1 − v0``, ``b = v2 − v0``: ``∂/∂a = b × g``, ``∂/∂b = g × a``."""
    B, V = vertices.shape[0], vertices.shape[1]
    gv = np.zeros((B, V, 3), vertices.dtype)
    gs = np.empty((V, 3), vertices.dtype)
    for b in range(B):
        v, o, g, acc = vertices[b], out[b], grad[b], gv[b]
        for i in range(V):
            n = norm[b, i]
            if n >= eps:
                dot = g[i, 0] * o[i, 0] + g[i, 1] * o[i, 1] + g[i, 2] * o[i, 2]
                for c in range(3):
                    gs[i, c] = (g[i, c] - o[i, c] * dot) / n
            else:
                for c in range(3):
                    gs[i, c] = g[i, c] / eps
        for f in range(triangles.shape[0]):
            i0, i1, i2 = triangles[f, 0], triangles[f, 1], triangles[f, 2]
            ax, ay, az = v[i1, 0] - v[i0, 0], v[i1, 1] - v[i0, 1], v[i1, 2] - v[i0, 2]
            bx, by, bz = v[i2, 0] - v[i0, 0], v[i2, 1] - v[i0, 1], v[i2, 2] - v[i0, 2]
            gx = gs[i0, 0] + gs[i1, 0] + gs[i2, 0]
            gy = gs[i0, 1] + gs[i1, 1] + gs[i2, 1]
            gz = gs[i0, 2] + gs[i1, 2] + gs[i2, 2]
            gax, gay, gaz = by * gz - bz * gy, bz * gx - bx * gz, bx * gy - by * gx  # b × g
            gbx, gby, gbz = gy * az - gz * ay, gz * ax - gx * az, gx * ay - gy * ax  # g × a
            acc[i0, 0] -= gax + gbx
            acc[i0, 1] -= gay + gby
            acc[i0, 2] -= gaz + gbz
            acc[i1, 0] += gax
            acc[i1, 1] += gay
            acc[i1, 2] += gaz
            acc[i2, 0] += gbx
            acc[i2, 1] += gby
            acc[i2, 2] += gbz
    return gv


def vertex_normals_cpu(vertices: Tensor, triangles: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Unit area-weighted vertex normals ``(B, V, 3)`` and the norms ``(B, V)`` of the unnormalised sums (what
    :func:`vertex_normals_backward_cpu` needs). CPU tensors, float32 or float64."""
    out, norm = _normals_forward(vertices.detach().contiguous().numpy(), triangles.contiguous().numpy(), eps)
    return torch.from_numpy(out), torch.from_numpy(norm)


def vertex_normals_backward_cpu(vertices: Tensor, triangles: Tensor, out: Tensor, norm: Tensor, grad: Tensor,
                                eps: float) -> Tensor:
    """Vertex gradient ``(B, V, 3)`` of the normals of :func:`vertex_normals_cpu` given ``grad`` ``(B, V, 3)``."""
    return torch.from_numpy(_normals_backward(vertices.detach().contiguous().numpy(), triangles.contiguous().numpy(),
                                              out.numpy(), norm.numpy(), grad.contiguous().numpy(), eps))


@numba.njit(cache=True, error_model="numpy")
def _rotate_forward(points, R):  # pragma: no cover - compiled
    """``out[b, n] = R[b] @ points[b, n]``: ``(B, N, 3), (B, 3, 3) -> (B, N, 3)``, in the input dtype."""
    out = np.empty_like(points)
    for b in range(points.shape[0]):
        r00, r01, r02 = R[b, 0, 0], R[b, 0, 1], R[b, 0, 2]
        r10, r11, r12 = R[b, 1, 0], R[b, 1, 1], R[b, 1, 2]
        r20, r21, r22 = R[b, 2, 0], R[b, 2, 1], R[b, 2, 2]
        for n in range(points.shape[1]):
            x, y, z = points[b, n, 0], points[b, n, 1], points[b, n, 2]
            out[b, n, 0] = r00 * x + r01 * y + r02 * z
            out[b, n, 1] = r10 * x + r11 * y + r12 * z
            out[b, n, 2] = r20 * x + r21 * y + r22 * z
    return out


@numba.njit(cache=True, error_model="numpy")
def _rotate_backward(points, R, grad, need_points, need_R):  # pragma: no cover - compiled
    """Gradients of ``Σ grad · _rotate_forward(points, R)``: ``∂/∂points = Rᵀ g`` per point ``(B, N, 3)`` and
    ``∂/∂R = Σ_n g_n p_nᵀ`` ``(B, 3, 3)`` (summed in float64, then cast); each only when asked (else empty)."""
    B, N = points.shape[0], points.shape[1]
    g_points = np.empty_like(points) if need_points else np.empty((0, 0, 3), points.dtype)
    g_R = np.zeros((B, 3, 3), R.dtype)
    for b in range(B):
        r00, r01, r02 = R[b, 0, 0], R[b, 0, 1], R[b, 0, 2]
        r10, r11, r12 = R[b, 1, 0], R[b, 1, 1], R[b, 1, 2]
        r20, r21, r22 = R[b, 2, 0], R[b, 2, 1], R[b, 2, 2]
        s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = 0.0
        for n in range(N):
            g0, g1, g2 = grad[b, n, 0], grad[b, n, 1], grad[b, n, 2]
            if need_points:
                g_points[b, n, 0] = r00 * g0 + r10 * g1 + r20 * g2
                g_points[b, n, 1] = r01 * g0 + r11 * g1 + r21 * g2
                g_points[b, n, 2] = r02 * g0 + r12 * g1 + r22 * g2
            if need_R:
                x, y, z = np.float64(points[b, n, 0]), np.float64(points[b, n, 1]), np.float64(points[b, n, 2])
                s00 += g0 * x
                s01 += g0 * y
                s02 += g0 * z
                s10 += g1 * x
                s11 += g1 * y
                s12 += g1 * z
                s20 += g2 * x
                s21 += g2 * y
                s22 += g2 * z
        g_R[b, 0, 0], g_R[b, 0, 1], g_R[b, 0, 2] = s00, s01, s02
        g_R[b, 1, 0], g_R[b, 1, 1], g_R[b, 1, 2] = s10, s11, s12
        g_R[b, 2, 0], g_R[b, 2, 1], g_R[b, 2, 2] = s20, s21, s22
    return g_points, g_R
