"""Optimisation: fitting face models to landmarks (linear, eos-style; perspective refinement; multi-image).

Entry points: :func:`fit_landmarks` (one or many faces, one photo each), :func:`fit_landmarks_multi`
(several photos of one person), :func:`refine_perspective` (pinhole camera), :func:`fit_points`
(arbitrary vertex correspondences).
"""
from morphable.fitting.landmarks import LandmarkFit, fit_landmarks, fit_points
from morphable.fitting.multi import fit_landmarks_multi
from morphable.fitting.perspective import PerspectiveFit, refine_perspective

__all__ = ["LandmarkFit", "PerspectiveFit", "fit_landmarks", "fit_landmarks_multi", "fit_points", "refine_perspective"]
