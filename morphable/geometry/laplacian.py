"""Mesh Laplacians: cotangent (conformal) weights and the uniform graph Laplacian.

The cotangent weight of edge (i, j) is ``w_ij = (cot α_ij + cot β_ij) / 2`` with α, β the angles opposite the
edge in its two triangles (Pinkall & Polthier 1993; Desbrun et al. 1999). ``L = D − W`` is then the
discrete Laplace–Beltrami operator (unnormalised by area) used for conformal flattening and smoothness.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def cotangent_weights(vertices: np.ndarray, faces: np.ndarray) -> sp.csr_matrix:
    """Symmetric sparse matrix of cotangent edge weights. ``(V, 3), (F, 3) -> (V, V)``.

    Boundary edges get only their one cotangent / 2. Weights can be negative on obtuse configurations.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    V = len(v)
    rows, cols, vals = [], [], []
    for k in range(3):  # the angle at corner k is opposite the edge (k+1, k+2)
        i, j, o = f[:, (k + 1) % 3], f[:, (k + 2) % 3], f[:, k]
        a, b = v[i] - v[o], v[j] - v[o]
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        cot = (a * b).sum(1) / np.maximum(cross, 1e-12)
        rows += [i, j]
        cols += [j, i]
        vals += [cot / 2, cot / 2]
    W = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(V, V))
    return W.tocsr()


def cotangent_laplacian(vertices: np.ndarray, faces: np.ndarray) -> sp.csr_matrix:
    """``L = D − W`` with cotangent weights ``W``; rows sum to zero. ``(V, V)`` sparse."""
    W = cotangent_weights(vertices, faces)
    return (sp.diags(np.asarray(W.sum(1)).ravel()) - W).tocsr()


def uniform_laplacian(faces: np.ndarray, n_vertices: int) -> sp.csr_matrix:
    """Graph Laplacian ``L = I − D⁻¹A`` (each row: vertex minus the mean of its neighbours). ``(V, V)``."""
    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    A = sp.coo_matrix((np.ones(len(e) * 2), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])),
                      shape=(n_vertices, n_vertices)).tocsr()
    A.data[:] = 1.0  # duplicate edges (shared by two triangles) count once
    deg = np.asarray(A.sum(1)).ravel()
    return (sp.eye(n_vertices) - sp.diags(1.0 / np.maximum(deg, 1)) @ A).tocsr()


class _SparseMatmul(torch.autograd.Function):
    """``A @ x`` for a fixed CSR matrix, with the backward ``Aᵀ @ g`` from a stored CSR transpose (torch's own
    sparse backward converts layouts on every call)."""

    @staticmethod
    def forward(ctx, x: Tensor, A: Tensor, At: Tensor) -> Tensor:
        ctx.save_for_backward(At)
        return A @ x

    @staticmethod
    def backward(ctx, g: Tensor):
        (At,) = ctx.saved_tensors
        return At @ g, None, None


class SparseOperator:
    """A fixed sparse matrix ``(N, M)`` applied to dense ``(M, K)`` tensors, differentiable in the dense side.

    Built once from a scipy matrix; ``op @ x`` and ``op.to(dtype)`` like a tensor.
    """

    def __init__(self, M: sp.spmatrix, dtype: torch.dtype = torch.float32):
        self.scipy = M.tocsr()
        self.dtype = dtype
        self._A = self._csr(self.scipy, dtype)
        self._At = self._csr(self.scipy.T.tocsr(), dtype)

    @staticmethod
    def _csr(M: sp.csr_matrix, dtype: torch.dtype) -> Tensor:
        """The torch CSR tensor of ``M``. Its invariants are checked once here (``check_invariants=True``, which
        also opts out of torch's "checks are implicitly disabled" warning); torch's one-time "sparse CSR is
        in beta" notice is silenced: the CSR @ dense product used here is stable, and users saw the notice
        on every fit."""
        M.sort_indices()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
            return torch.sparse_csr_tensor(torch.as_tensor(M.indptr, dtype=torch.int64),
                                           torch.as_tensor(M.indices, dtype=torch.int64),
                                           torch.as_tensor(M.data, dtype=dtype), M.shape, check_invariants=True)

    @property
    def shape(self) -> tuple[int, int]:
        return self.scipy.shape

    def to(self, dtype: torch.dtype) -> "SparseOperator":
        return self if dtype == self.dtype else SparseOperator(self.scipy, dtype)

    def __matmul__(self, x: Tensor) -> Tensor:
        return _SparseMatmul.apply(x, self._A, self._At)

    def dense(self) -> Tensor:
        return torch.as_tensor(self.scipy.toarray(), dtype=self.dtype)
