"""A standardised low-dimensional albedo space for models without an albedo basis (ICT, SFM).

The photometric fit (:mod:`~morphable.fitting.photometric`) models per-vertex albedo as a base colour
times ``1 + Σ_k c_k h_k`` over left-right symmetric manifold harmonics ``h_k`` (the smoothest symmetric
functions on the mesh). Regressors need the same space with an N(0, I) prior, so that the
batch-distribution loss and the parameter loss of Genova et al. apply to albedo as to shape:

    ρ(v) = clamp( ρ̄ · exp(σ_lum z_0 + σ_rb z_1 · (1, 0, −1) + σ_g z_2 · (0, 1, 0))
                   · (1 + σ_h Σ_k h_k(v) z_{3+k,c}),  0.02, 1 )

with ``z ~ N(0, I)``: a luminance factor (skin tone, σ_lum = 0.35 in log units, i.e. ×0.5–×2 at ±2σ), a
red–blue and a green balance (σ = 0.08, 0.05) and ``K`` harmonic modes per channel (σ_h = 0.06, i.e.
±6 % low-frequency variation per mode). ``ρ̄`` is :data:`SKIN_RGB`. Models with a PCA albedo basis
use that instead.
"""
from __future__ import annotations

import torch
from torch import Tensor

from morphable.fitting.photometric import symmetric_harmonics

SKIN_RGB = (0.72, 0.53, 0.43)
"""Mean skin albedo (linear RGB)."""
SIGMA_LUMINANCE, SIGMA_RED_BLUE, SIGMA_GREEN, SIGMA_MODE = 0.35, 0.08, 0.05, 0.06


class LowFrequencyAlbedo:
    """The albedo space above on one mesh.

    Args:
        vertices: ``(V, 3)`` mesh (e.g. the model mean, mm); triangles: ``(F, 3)``.
        mirror: ``(V,)`` left-right vertex pairs (−1 = unpaired), or ``None`` (then the harmonics are
            not symmetrised).
        modes: number of harmonic modes ``K`` (per channel).
    Attributes:
        harmonics: ``(V, K)``; ``size``: ``3 + 3K`` coefficients.
    """

    def __init__(self, vertices: Tensor, triangles: Tensor, mirror: Tensor | None, modes: int = 8):
        if mirror is None:
            mirror = torch.full((len(vertices),), -1, dtype=torch.int64)
        self.harmonics = symmetric_harmonics(vertices.double(), triangles, mirror.cpu(), modes).float()
        self.modes = modes

    @property
    def size(self) -> int:
        return 3 + 3 * self.modes

    def __call__(self, z: Tensor) -> Tensor:
        """Coefficients ``(B, 3 + 3K)`` → per-vertex albedo ``(B, V, 3)`` in [0.02, 1]."""
        if z.shape[-1] != self.size:
            raise ValueError(f"LowFrequencyAlbedo: expected (B, {self.size}) coefficients, got {tuple(z.shape)}")
        lum, rb, g = z[:, 0:1], z[:, 1:2], z[:, 2:3]
        log_tint = SIGMA_LUMINANCE * lum + SIGMA_RED_BLUE * rb * z.new_tensor([1.0, 0.0, -1.0]) \
            + SIGMA_GREEN * g * z.new_tensor([0.0, 1.0, 0.0])
        base = z.new_tensor(SKIN_RGB) * torch.exp(log_tint)  # (B, 3)
        modes = z[:, 3:].reshape(len(z), self.modes, 3)
        H = self.harmonics.to(z)
        field = 1 + SIGMA_MODE * torch.einsum("vk,bkc->bvc", H, modes)  # field[b,v,c] = 1 + σ Σ_k H[v,k] z[b,k,c]
        return (base[:, None, :] * field).clamp(0.02, 1.0)
