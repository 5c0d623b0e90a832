"""Evaluation protocols: NoW scan-to-mesh error, MICC/Genova point-to-plane error, 2D landmark NME; identity
consistency (same/different AUC of fits) and render-and-recover against a scan (``docs/fidelity.md``).

See ``docs/evaluation.md`` for each protocol's source and the conventions that are easy to get wrong.
"""
from morphable.eval.consistency import ConsistencyReport, identity_consistency, rigid_distance_matrix
from morphable.eval.micc import MiccResult, micc_errors
from morphable.eval.nme import NmeReport, nme_300w, nme_aflw2000
from morphable.eval.now import NOW_LANDMARK_NAMES, NOW_LANDMARKS_IBUG68, NowResult, now_errors
from morphable.eval.scan_recover import Scan, fit_identity_to_scan, load_scan, score_identity

__all__ = ["ConsistencyReport", "identity_consistency", "rigid_distance_matrix", "Scan", "fit_identity_to_scan",
           "load_scan", "score_identity", "MiccResult", "micc_errors", "NmeReport", "nme_300w", "nme_aflw2000",
           "NOW_LANDMARK_NAMES", "NOW_LANDMARKS_IBUG68", "NowResult", "now_errors"]
