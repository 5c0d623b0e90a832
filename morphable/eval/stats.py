"""Summary statistics shared by the 3D protocols' results."""
from __future__ import annotations

import numpy as np


class DistanceStats:
    """Median / mean / population std (mm) of a result's ``distances`` array (as ``numpy.std``)."""

    distances: np.ndarray

    @property
    def median_mm(self) -> float:
        return float(np.median(self.distances))

    @property
    def mean_mm(self) -> float:
        return float(np.mean(self.distances))

    @property
    def std_mm(self) -> float:
        return float(np.std(self.distances))
