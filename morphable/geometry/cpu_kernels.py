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
