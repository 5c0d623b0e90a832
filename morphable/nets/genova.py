"""Genova et al., "Unsupervised Training for 3D Morphable Model Regression" (CVPR 2018): a decoder from
face-recognition features to identity (shape) and albedo coefficients.

Architecture (Sec. 3.1–3.2): a frozen recognition encoder — here our port of dlib's ResNet
(:class:`~morphable.nets.encoders.DlibEncoder`), its 256-D pooled pre-fc features standing in for
FaceNet's 1024-D avgpool layer — and a decoder of two 1024-unit fully connected + ReLU layers followed by
a linear regression layer onto the parameter vector laid out by :class:`~morphable.nets.layout.ParamLayout`
(``identity``: the model's standardised identity coefficients; ``albedo``: the model's albedo
coefficients, or for models without an albedo basis the standardised low-frequency albedo of
:mod:`~morphable.fitting.albedo`). The decoder's weights are regularised toward zero (weight decay in
training). Expression is not predicted (the paper predicts neutral faces).

Use: ``reg = load_regressor("ict")``; ``mu = reg.predict_identity(images, landmarks)``; then
``fit_landmarks(model, landmarks, identity_prior_mean=mu, lambda_identity=reg.prior_precision)``:
the landmark fit solves pose, expression and contour around the regressed identity.
Training: :mod:`morphable.train.recipes.genova` (``morphable train genova``).
"""
from __future__ import annotations

from functools import lru_cache
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor, nn

from morphable.errors import ModelFileError
from morphable.nets import weights
from morphable.nets.encoders import POOLED_DIM, DlibEncoder
from morphable.nets.layout import ParamLayout
from morphable.nets.weights import SHIPPED, load_net, save_net, shipped_path

FORMAT = "morphable-genova"
VERSION = 1
DEFAULT_PRIOR_PRECISION = 1.0


def genova_layout(n_identity: int, n_albedo: int) -> ParamLayout:
    """The decoder's output: ``identity`` (K) then ``albedo`` (A)."""
    return ParamLayout((("identity", n_identity), ("albedo", n_albedo)))


class GenovaDecoder(nn.Module):
    """Features ``(B, D)`` → parameters ``(B, layout.size)``: standardise the input with fixed statistics
    (buffers set from the training features), FC-1024 + ReLU, FC-1024 + ReLU, linear.

    Args:
        layout: output layout; in_dim: feature size (256 for dlib); hidden: 1024 in the paper.
        dropout: dropout after each hidden layer during training (0 in the paper; ours learns from a few
            thousand synthetic faces and over-fits without it).
    """

    def __init__(self, layout: ParamLayout, in_dim: int = POOLED_DIM, hidden: int = 1024, dropout: float = 0.0):
        super().__init__()
        self.layout = layout
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_std", torch.ones(in_dim))
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, layout.size))

    def set_feature_statistics(self, features: Tensor) -> None:
        """Fix the input standardisation from training features ``(N, D)``."""
        with torch.no_grad():
            self.feature_mean.copy_(features.mean(0))
            self.feature_std.copy_(features.std(0).clamp_min(1e-6))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """``(B, D)`` → ``{"identity": (B, K), "albedo": (B, A)}``."""
        x = (features - self.feature_mean) / self.feature_std
        return self.layout.split(self.mlp(x))


class GenovaRegressor(nn.Module):
    """Encoder + decoder, the inference object of the method.

    Args:
        model_name: the morphable model the output refers to (e.g. ``"ict"``).
        n_identity, n_albedo: output sizes; hidden: decoder width.
        prior_precision: λ for the landmark fit's identity prior centred at the prediction
            (``fit_landmarks(..., identity_prior_mean=mu, lambda_identity=λ)``), chosen on held-out data.
        albedo_modes: harmonic modes of the low-frequency albedo (0 when the model has an albedo basis).
        dropout: the decoder's training dropout (inactive in ``eval()`` mode and in :meth:`predict`).
        encoder: a :class:`DlibEncoder` to share (default: a new one).
    """

    def __init__(self, model_name: str, n_identity: int, n_albedo: int, *, hidden: int = 1024,
                 prior_precision: float = DEFAULT_PRIOR_PRECISION, albedo_modes: int = 0, dropout: float = 0.0,
                 encoder: DlibEncoder | None = None):
        super().__init__()
        self.model_name = model_name
        self.prior_precision = float(prior_precision)
        self.albedo_modes = int(albedo_modes)
        self.hidden = int(hidden)
        self.decoder = GenovaDecoder(genova_layout(n_identity, n_albedo), hidden=hidden, dropout=dropout)
        self._encoder = [encoder]  # a list: the frozen encoder is not a submodule (not in state_dict)

    @property
    def encoder(self) -> DlibEncoder:
        if self._encoder[0] is None:
            self._encoder[0] = DlibEncoder()
        return self._encoder[0]

    @property
    def layout(self) -> ParamLayout:
        return self.decoder.layout

    def forward(self, pooled: Tensor) -> dict[str, Tensor]:
        """Pooled encoder features ``(B, 256)`` → ``{"identity", "albedo"}``."""
        return self.decoder(pooled)

    def predict(self, images: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
        """Photos ``(B, H, W, 3)`` (float in [0, 1], or uint8) and their 68 landmarks ``(B, 68, 2)`` px →
        ``{"identity", "albedo"}``. Pass uint8 photos as read: only each face's crop is converted."""
        images = torch.as_tensor(images)
        images = images if images.dtype == torch.uint8 else images.to(torch.float32)
        landmarks = torch.as_tensor(landmarks, dtype=torch.float32)
        if images.dim() != 4 or landmarks.shape != (images.shape[0], 68, 2):
            raise ValueError(f"GenovaRegressor: expected images (B, H, W, 3) and landmarks (B, 68, 2), got "
                             f"{tuple(images.shape)} and {tuple(landmarks.shape)}")
        was = self.training
        self.eval()
        encoder = self.encoder  # built (lazily) outside inference mode: its buffers must stay ordinary tensors
        try:
            with torch.inference_mode():  # ~0.5 ms less per face than no_grad (no version counters)
                out = self.decoder(encoder.encode_photos(images, landmarks).pooled)
        finally:
            self.train(was)
        return {k: v.clone() for k, v in out.items()}  # ordinary tensors (the caller may need autograd)

    def predict_identity(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """``(B, K)`` standardised identity coefficients (see :meth:`predict`)."""
        return self.predict(images, landmarks)["identity"]


def save_regressor(regressor: GenovaRegressor, path: str | PathLike, meta: dict | None = None) -> None:
    """Write ``regressor`` atomically; weights stored as float16 (package data stays small), buffers as float32."""
    save_net(regressor, path, FORMAT, VERSION,
             {"model_name": regressor.model_name, "n_identity": regressor.layout.sizeof("identity"),
              "n_albedo": regressor.layout.sizeof("albedo"), "hidden": regressor.hidden,
              "prior_precision": regressor.prior_precision, "albedo_modes": regressor.albedo_modes}, meta,
             half=lambda k, v: k.startswith("decoder.mlp"))


def _load(name_or_path: str) -> GenovaRegressor:
    """A :class:`GenovaRegressor` from :func:`save_regressor`'s file (or a shipped name)."""
    return load_net(name_or_path, FORMAT, VERSION, "Genova regressor",
                    lambda data: GenovaRegressor(str(data["model_name"]), int(data["n_identity"]),
                                                 int(data["n_albedo"]), hidden=int(data["hidden"]),
                                                 prior_precision=float(data["prior_precision"]),
                                                 albedo_modes=int(data["albedo_modes"])))


def has_regressor(model_name: str) -> bool:
    """Whether a trained Genova regressor ships for model ``model_name`` (e.g. ``"ict"``)."""
    return shipped_path(f"genova-{model_name}") is not None


@lru_cache(maxsize=None)
def _shipped_regressor(key: str, entry: tuple[str, str], folder: str) -> GenovaRegressor:
    """One instance per shipped entry (name, file, sha256, folder) and process: ``morphable fit`` over many
    photos checks the sha256, reads the file and builds dlib's network once, not once per photo."""
    return _load(key)


def load_regressor(name_or_path: str | PathLike = "ict") -> GenovaRegressor:
    """The shipped regressor of a model (``"ict"``, ``"sfm"``, or ``"genova-ict"``; one shared instance per
    process, do not modify it), or a new one from a file.

    Raises:
        ModelFileError: no such shipped regressor or file, checksum mismatch, or a corrupt file.
    """
    text = str(name_or_path)
    key = text if text in SHIPPED else f"genova-{text}"
    if key in SHIPPED:
        return _shipped_regressor(key, SHIPPED[key], str(weights.WEIGHTS_DIR))
    if Path(text).suffix == "" and not Path(text).exists():
        known = ", ".join(k.removeprefix("genova-") for k in sorted(SHIPPED) if k.startswith("genova-")) or "none"
        raise ModelFileError(text, f"no shipped Genova regressor for this model (shipped: {known})")
    return _load(text)
