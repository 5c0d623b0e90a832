"""Mesh Laplacians: cotangent (conformal) weights and the uniform graph Laplacian.

The cotangent weight of edge (i, j) is ``w_ij = (cot α_ij + cot β_ij) / 2`` with α, β the angles opposite the
edge in its two triangles (Pinkall & Polthier 1993; Desbrun et al. 1999). ``L = D − W`` is then the
discrete Laplace–Beltrami operator (unnormalised by area) used for conformal flattening and smoothness.
"""
from __future__ import annotations

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


def to_torch_sparse(M: sp.spmatrix, dtype: torch.dtype = torch.float32) -> Tensor:
    """A scipy sparse matrix as a torch sparse COO tensor (for ``torch.sparse.mm`` in losses)."""
    c = M.tocoo()
    idx = torch.as_tensor(np.vstack([c.row, c.col]), dtype=torch.int64)
    return torch.sparse_coo_tensor(idx, torch.as_tensor(c.data, dtype=dtype), c.shape, check_invariants=True).coalesce()
