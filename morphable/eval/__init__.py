"""Evaluation protocols: NoW scan-to-mesh error, MICC/Genova point-to-plane error, 2D landmark NME.

See ``docs/evaluation.md`` for each protocol's source and the conventions that are easy to get wrong.
"""
from morphable.eval.micc import MiccResult, micc_errors
from morphable.eval.nme import NmeReport, nme_300w, nme_aflw2000
from morphable.eval.now import NOW_LANDMARK_NAMES, NOW_LANDMARKS_IBUG68, NowResult, now_errors

__all__ = ["MiccResult", "micc_errors", "NmeReport", "nme_300w", "nme_aflw2000", "NOW_LANDMARK_NAMES",
           "NOW_LANDMARKS_IBUG68", "NowResult", "now_errors"]
