"""Issue 16: torch's sparse-CSR notices ("beta state", "invariant checks implicitly disabled") no longer
print when the Laplacian operator is built (they printed on every photometric fit)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import scipy.sparse as sp
import torch

from morphable.geometry.laplacian import SparseOperator

SCRIPT = """
import warnings, numpy as np, torch
warnings.simplefilter("always")
from morphable.geometry.laplacian import SparseOperator, uniform_laplacian
from morphable.geometry.mesh import VertexFaceIncidence
faces = np.array([[0, 1, 2], [0, 2, 3]])
op = SparseOperator(uniform_laplacian(faces, 4))
VertexFaceIncidence(torch.as_tensor(faces), 4).corners  # the CSR matrices are built on first use
print(float((op @ torch.ones(4, 1)).abs().sum()))
"""


def test_building_the_operators_prints_no_sparse_warning():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Sparse" not in run.stderr and "Warning" not in run.stderr, run.stderr
    assert float(run.stdout) < 1e-6  # the uniform Laplacian of a constant is zero (float32)


def test_operator_matches_the_dense_product_and_its_transpose_gradient():
    rng = np.random.default_rng(0)
    M = sp.random(7, 5, density=0.5, random_state=1, format="csr")
    op = SparseOperator(M, torch.float64)
    x = torch.tensor(rng.normal(size=(5, 2)), requires_grad=True)
    y = op @ x
    assert torch.allclose(y, torch.as_tensor(M.toarray()) @ x.detach())
    g = torch.tensor(rng.normal(size=(7, 2)))
    y.backward(g)
    assert torch.allclose(x.grad, torch.as_tensor(M.toarray().T) @ g)
