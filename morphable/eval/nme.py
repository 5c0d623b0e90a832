"""2D landmark normalised mean error (NME) for iBUG-68 landmarks.

* **AFLW2000-3D** (Zhu et al., "Face Alignment Across Large Poses: A 3D Solution", CVPR 2016; the 3DDFA
  benchmark code): per image, the mean Euclidean distance over the 68 points divided by ``sqrt(w · h)`` of
  the ground-truth landmarks' bounding box; images are split by |yaw| into [0°, 30°], (30°, 60°],
  (60°, 90°]; the headline figure is the mean of the three bin means (so frontal faces, which dominate the
  set, do not dominate the figure). The ground truth usually compared against is the 68-point
  re-annotation ("AFLW2000-3D-Reannotated") or the original ``pt3d_68`` x, y.
* **300-W** (Sagonas et al., 2013/2016): the mean distance divided by the outer-eye-corner distance
  ``|gt[36] − gt[45]|`` (0-based iBUG ids).

Landmarks are (N, 68, 2) pixels in any consistent convention (a constant 0/1-based offset cancels only if
both sides use the same one: read files with :func:`morphable.detect.formats.read_landmarks`). A
prediction with any NaN (e.g. no face detected) is a *failure*: it is left out of the means and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

YAW_BINS_DEG: tuple[tuple[float, float], ...] = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))
OUTER_EYE_CORNERS: tuple[int, int] = (36, 45)


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None]
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[2] != 2:
        raise ValueError(f"nme: expected pred and gt of equal shape (N, L, 2), got {pred.shape} and {gt.shape}")
    if not np.isfinite(gt).all():
        raise ValueError("nme: ground truth contains non-finite values")
    return pred, gt


def bbox_size(gt: np.ndarray) -> np.ndarray:
    """``sqrt(w · h)`` of each landmark set's bounding box: (N, L, 2) -> (N,)."""
    gt = np.asarray(gt, dtype=np.float64)
    extent = gt.max(axis=1) - gt.min(axis=1)
    return np.sqrt(extent[:, 0] * extent[:, 1])


def outer_eye_distance(gt: np.ndarray) -> np.ndarray:
    """``|gt[36] − gt[45]|``: (N, 68, 2) -> (N,)."""
    gt = np.asarray(gt, dtype=np.float64)
    return np.linalg.norm(gt[:, OUTER_EYE_CORNERS[0]] - gt[:, OUTER_EYE_CORNERS[1]], axis=1)


def nme(pred: np.ndarray, gt: np.ndarray, normaliser: np.ndarray) -> np.ndarray:
    """Per-image NME: mean over points of ``|pred − gt|`` divided by ``normaliser`` (N,). NaN for failures."""
    pred, gt = _check(pred, gt)
    return np.linalg.norm(pred - gt, axis=2).mean(axis=1) / np.asarray(normaliser, dtype=np.float64)


@dataclass(frozen=True)
class NmeReport:
    """NME of a set of images.

    Attributes:
        per_image: (N,) NME (a fraction; ×100 for %), NaN for failures.
        mean: mean over the non-failed images.
        failures: number of predictions with NaN.
        bins: for AFLW2000-3D, one ``(low°, high°, count, mean)`` per yaw bin (count of non-failed images).
        headline: the protocol's figure (AFLW2000-3D: mean of the non-empty bin means; 300-W: ``mean``).
    """

    per_image: np.ndarray
    mean: float
    failures: int
    headline: float
    bins: list[tuple[float, float, int, float]] = field(default_factory=list)


def _mean(values: np.ndarray) -> float:
    ok = values[np.isfinite(values)]
    return float(ok.mean()) if len(ok) else float("nan")


def nme_300w(pred: np.ndarray, gt: np.ndarray) -> NmeReport:
    """300-W style NME (outer-eye-corner normalisation) of (N, 68, 2) predictions."""
    pred, gt = _check(pred, gt)
    per = nme(pred, gt, outer_eye_distance(gt))
    m = _mean(per)
    return NmeReport(per, m, int(np.isnan(per).sum()), m)


def nme_aflw2000(pred: np.ndarray, gt: np.ndarray, yaw_deg: np.ndarray) -> NmeReport:
    """AFLW2000-3D style NME (``sqrt(w·h)`` of the GT box) with the three |yaw| bins.

    Args:
        pred, gt: (N, 68, 2). yaw_deg: (N,) ground-truth yaw in degrees (sign ignored).
    """
    pred, gt = _check(pred, gt)
    yaw = np.abs(np.asarray(yaw_deg, dtype=np.float64).reshape(-1))
    if len(yaw) != len(gt):
        raise ValueError(f"nme_aflw2000: {len(gt)} images but {len(yaw)} yaws")
    per = nme(pred, gt, bbox_size(gt))
    bins = []
    last = len(YAW_BINS_DEG) - 1
    for i, (lo, hi) in enumerate(YAW_BINS_DEG):
        # [0, 30], (30, 60], (60, ...): the first bin keeps 0, the last keeps anything beyond 90
        inside = ((yaw > lo) | (i == 0)) & ((yaw <= hi) | (i == last))
        values = per[inside]
        bins.append((lo, hi, int(np.isfinite(values).sum()), _mean(values)))
    means = [b[3] for b in bins if b[2] > 0]
    headline = float(np.mean(means)) if means else float("nan")
    return NmeReport(per, _mean(per), int(np.isnan(per).sum()), headline, bins)
