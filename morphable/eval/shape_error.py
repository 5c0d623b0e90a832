"""Shape error with pose and size factored out: the distance of each vertex of a reconstruction to its
ground-truth position after the similarity (rotation, translation, scale) that best maps the reconstruction
onto the truth (Umeyama 1991, :func:`morphable.geometry.align.umeyama`). The metric of the synthetic
benchmarks (``photometric_bench.py``, ``rgbd_bench.py``, ``coarse_bench.py``) and of CoarseNet's validation,
where the true vertices are known.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from morphable.geometry.align import umeyama


def aligned_distances(predicted: Tensor | np.ndarray, truth: Tensor | np.ndarray) -> np.ndarray:
    """Per-vertex distances ``(V,)`` (the input unit, mm for model meshes) of ``predicted`` ``(V, 3)`` to
    ``truth`` ``(V, 3)`` after the best similarity alignment of the one onto the other (float64)."""
    p = predicted.detach().double().cpu().numpy() if isinstance(predicted, Tensor) else np.asarray(predicted, np.float64)
    t = truth.detach().double().cpu().numpy() if isinstance(truth, Tensor) else np.asarray(truth, np.float64)
    return np.linalg.norm(umeyama(p, t).apply(p) - t, axis=1)


def aligned_error(predicted: Tensor, truth: Tensor) -> Tensor:
    """Mean aligned vertex distance per mesh: ``(B, V, 3), (B, V, 3) -> (B,)`` float64."""
    return torch.tensor([aligned_distances(p, t).mean() for p, t in zip(predicted, truth)], dtype=torch.float64)
