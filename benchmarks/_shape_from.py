"""Where the fidelity benchmarks take a face's identity from: ``--shape-from landmarks|regressor|coarse``.

* ``landmarks``: the plain landmark fit, ``fit_landmarks(model, landmarks)`` (identity prior N(0, I)).
* ``regressor``: Genova et al.'s regressor (``morphable.nets.genova``) predicts the identity ``μ`` from the
  photo's face-recognition features; the landmark fit then solves pose, expression and contour with the
  identity prior centred at ``μ`` with precision ``λ`` (``reg.prior_precision``, or ``--lambda-identity``).
  ``--regressor PATH`` evaluates any trained weights file instead of the shipped ones.
* ``coarse``: Zhang et al.'s CoarseNet (``morphable.nets.coarse``) predicts the identity from the face's chip;
  the landmark fit then runs with its prior centred there (precision ``--lambda-identity``, default 1), as
  ``morphable fit --method coarse+fit``. ``--coarse PATH`` evaluates a trained file instead of the shipped one.

The default is ``regressor`` when shipped weights exist for the model (or ``--regressor`` is given), else
``landmarks``.

``--perspective`` refines each landmark fit with a pinhole camera (:func:`morphable.fitting.refine_perspective`,
the identity prior kept where it is centred), as ``morphable fit --perspective`` does: focal ``--focal`` px,
default the photo's longer side.
"""
from __future__ import annotations

import argparse

import torch

from morphable.errors import MorphableError
from morphable.nets.genova import has_regressor, load_regressor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape-from", choices=("regressor", "landmarks", "coarse"), default=None,
                        help="identity source (default: regressor when one is available, else landmarks)")
    parser.add_argument("--regressor", default=None, help="regressor weights file (default: the shipped ones)")
    parser.add_argument("--lambda-identity", type=float, default=None,
                        help="identity prior precision around the regressed identity (default: the regressor's; "
                             "coarse: 1)")
    parser.add_argument("--perspective", action="store_true",
                        help="refine each landmark fit with a pinhole camera (as morphable fit --perspective)")
    parser.add_argument("--focal", type=float, default=None,
                        help="--perspective's focal length, px (default: the photo's longer side)")
    parser.add_argument("--coarse", default=None,
                        help="CoarseNet weights file for --shape-from coarse (default: the shipped coarse-<model>)")


class ShapeSource:
    """Fits faces the way ``args`` asks. ``label`` names the setting in the benchmark's output."""

    def __init__(self, model, args: argparse.Namespace):
        self.model = model
        self.regressor = self.coarse = None
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
        if mode == "coarse":
            from morphable.nets.coarse import load_coarse, shipped_coarse

            self.coarse = load_coarse(args.coarse) if args.coarse is not None else shipped_coarse(model.name)
            if self.coarse.model_name != model.name:
                raise MorphableError(f"CoarseNet {args.coarse} predicts {self.coarse.model_name} coefficients, "
                                     f"not {model.name}'s (pass --model {self.coarse.model_name})")
            if self.lambda_identity is None:
                self.lambda_identity = 1.0
        self.mode = mode
        self.perspective, self.focal = args.perspective, args.focal
        if self.focal is not None and not self.perspective:
            raise MorphableError("--focal is --perspective's focal length: pass --perspective too")
        weights = args.coarse if mode == "coarse" else args.regressor
        self.label = "landmarks" if mode == "landmarks" else (
            f"{mode} (lambda {self.lambda_identity:g}, weights {weights or 'shipped'})")
        if self.perspective:
            self.label += f", perspective (focal {'the longer side' if self.focal is None else f'{self.focal:g} px'})"

    def predict(self, image: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor | None:
        """The regressor's identity ``(1, K)`` for one photo ``(1, H, W, 3)`` in [0, 1] with its landmarks
        ``(1, 68, 2)`` px; None in ``landmarks`` mode."""
        if self.coarse is not None:
            from morphable.nets.coarse import photo_chips

            chips, _ = photo_chips(self.coarse, self.model, image, landmarks)
            with torch.no_grad():
                return self.coarse.predict(chips).identity.to(torch.float64)
        if self.regressor is None:
            return None
        with torch.no_grad():
            return self.regressor.predict_identity(image, landmarks).detach().to(torch.float64)

    def fit_identity(self, landmarks: torch.Tensor, prior_mean: torch.Tensor | None,
                     image_sizes: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """The identity ``(B, K)`` of the landmark fit of ``(B, 68, 2)`` landmarks, with the identity prior centred
        at ``prior_mean`` ``(B, K)`` in ``regressor`` and ``coarse`` modes; with ``--perspective``, each fit refined
        with a pinhole camera in its photo of size ``image_sizes[b]`` ``(H, W)``."""
        from morphable.fitting import fit_landmarks, refine_perspective

        kwargs = {} if prior_mean is None else {"identity_prior_mean": prior_mean,
                                                "lambda_identity": self.lambda_identity}
        if not self.perspective:
            return fit_landmarks(self.model, landmarks, **kwargs).identity
        if image_sizes is None or len(image_sizes) != landmarks.shape[0]:
            raise ValueError("ShapeSource.fit_identity: --perspective needs each photo's size")
        identities = []
        for b, size in enumerate(image_sizes):  # one at a time: photos differ in size (principal point, focal)
            one = {**kwargs, "identity_prior_mean": prior_mean[b:b + 1]} if kwargs else {}
            fit = fit_landmarks(self.model, landmarks[b:b + 1], **one)
            identities.append(refine_perspective(self.model, fit, landmarks[b:b + 1], size, focal=self.focal,
                                                 **one).identity)
        return torch.cat(identities)
