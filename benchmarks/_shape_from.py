"""Where the fidelity benchmarks take a face's identity from: ``--shape-from landmarks|regressor``.

* ``landmarks``: the plain landmark fit, ``fit_landmarks(model, landmarks)`` (identity prior N(0, I)).
* ``regressor``: Genova et al.'s regressor (``morphable.nets.genova``) predicts the identity ``μ`` from the
  photo's face-recognition features; the landmark fit then solves pose, expression and contour with the
  identity prior centred at ``μ`` with precision ``λ`` (``reg.prior_precision``, or ``--lambda-identity``).
  ``--regressor PATH`` evaluates any trained weights file instead of the shipped ones.

The default is ``regressor`` when shipped weights exist for the model (or ``--regressor`` is given), else
``landmarks``.
"""
from __future__ import annotations

import argparse

import torch

from morphable.errors import MorphableError
from morphable.nets.genova import has_regressor, load_regressor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape-from", choices=("regressor", "landmarks"), default=None,
                        help="identity source (default: regressor when one is available, else landmarks)")
    parser.add_argument("--regressor", default=None, help="regressor weights file (default: the shipped ones)")
    parser.add_argument("--lambda-identity", type=float, default=None,
                        help="identity prior precision around the regressed identity (default: the regressor's)")


class ShapeSource:
    """Fits faces the way ``args`` asks. ``label`` names the setting in the benchmark's output."""

    def __init__(self, model, args: argparse.Namespace):
        self.model = model
        self.regressor = None
        self.lambda_identity = args.lambda_identity
        mode = args.shape_from
        if mode is None:
            mode = "regressor" if args.regressor is not None or has_regressor(model.name) else "landmarks"
        if mode == "regressor":
            if args.regressor is None and not has_regressor(model.name):
                raise MorphableError(f"--shape-from regressor: no shipped regressor for model {model.name}; "
                                     "pass --regressor PATH")
            self.regressor = load_regressor(args.regressor if args.regressor is not None else model.name)
            if getattr(self.regressor, "model_name", model.name) != model.name:
                raise MorphableError(f"regressor {args.regressor} predicts {self.regressor.model_name} "
                                     f"coefficients, not {model.name}'s (pass --model {self.regressor.model_name})")
            if self.lambda_identity is None:
                self.lambda_identity = float(self.regressor.prior_precision)
        self.mode = mode
        self.label = "landmarks" if mode == "landmarks" else (
            f"regressor (lambda {self.lambda_identity:g}, weights {args.regressor or 'shipped'})")

    def predict(self, image: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor | None:
        """The regressor's identity ``(1, K)`` for one photo ``(1, H, W, 3)`` in [0, 1] with its landmarks
        ``(1, 68, 2)`` px; None in ``landmarks`` mode."""
        if self.regressor is None:
            return None
        with torch.no_grad():
            return self.regressor.predict_identity(image, landmarks).detach().to(torch.float64)

    def fit(self, landmarks: torch.Tensor, prior_mean: torch.Tensor | None):
        """The landmark fit of ``(B, 68, 2)`` landmarks, with the identity prior centred at ``prior_mean``
        ``(B, K)`` in ``regressor`` mode."""
        from morphable.fitting import fit_landmarks

        if self.regressor is None:
            return fit_landmarks(self.model, landmarks)
        return fit_landmarks(self.model, landmarks, identity_prior_mean=prior_mean,
                             lambda_identity=self.lambda_identity)
