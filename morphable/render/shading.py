"""Shading: spherical-harmonics Lambertian lighting and Phong point lights with colour temperature.

Conventions:

* **Normals** are unit vectors in the *view frame* (the frame ``camera.transform`` returns: x right,
  +y up, +z towards the viewer), as interpolated per pixel by the renderer; they need not be
  renormalised by the caller (:func:`sh_shade` and :func:`phong_shade` normalise them).
* **Colours** are linear RGB, nominally in [0, 1], unclamped (clamp or gamma-encode for display).
* **SH lighting** (Ramamoorthi & Hanrahan 2001, "An efficient representation for irradiance environment
  maps"; the model used by Zhang et al. and Deep3DFaceRecon): ``C = ρ · Lᵀ φ(n)`` per colour channel, with
  ``L`` the ``(9, 3)`` SH coefficients of the incoming *radiance*, ordered ``(l, m)`` = (0,0), (1,−1),
  (1,0), (1,1), (2,−2), (2,−1), (2,0), (2,1), (2,2), and ``φ_lm(n) = (Â_l / π) Y_lm(n)``: the real SH
  basis times the Lambertian kernel's band factors ``Â = (π, 2π/3, π/4)``, divided by π for the
  ρ/π Lambertian BRDF. So a white light from direction ω with irradiance ``I`` (``L_lm = I Y_lm(ω)``)
  shades ``C ≈ ρ I max(0, n·ω) / π``, and the constant ``L_00 = 1 / Y_00 = 2√π`` gives ``C = ρ``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# real SH normalisation constants (Ramamoorthi & Hanrahan 2001, eq. 3)
_C0 = 0.5 / math.sqrt(math.pi)  # Y_00
_C1 = math.sqrt(3.0) / (2.0 * math.sqrt(math.pi))  # Y_1m / (x, y, z)
_C2 = math.sqrt(15.0) / (2.0 * math.sqrt(math.pi))  # Y_2-2, Y_2-1, Y_21 / (xy, yz, xz)
_C3 = math.sqrt(5.0) / (4.0 * math.sqrt(math.pi))  # Y_20 / (3z² − 1)
_C4 = math.sqrt(15.0) / (4.0 * math.sqrt(math.pi))  # Y_22 / (x² − y²)
# Lambertian kernel band factors Â_l divided by π (ρ/π BRDF): 1, 2/3, 1/4
_K0, _K1, _K2 = 1.0, 2.0 / 3.0, 0.25
SH_AMBIENT = 1.0 / _C0  # L_00 giving C = ρ


def _unit(v: Tensor, eps: float = 1e-12) -> Tensor:
    # clamp: zero vectors (background, degenerate) stay 0 instead of nan
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def sh_basis(normals: Tensor) -> Tensor:
    """Irradiance SH basis ``φ(n)`` (see module docstring). ``(..., 3)`` unit normals -> ``(..., 9)``."""
    if normals.shape[-1] != 3:
        raise ValueError(f"sh_basis: expected normals (..., 3), got {tuple(normals.shape)}")
    x, y, z = normals.unbind(-1)
    return torch.stack([
        torch.full_like(x, _K0 * _C0),
        _K1 * _C1 * y,
        _K1 * _C1 * z,
        _K1 * _C1 * x,
        _K2 * _C2 * x * y,
        _K2 * _C2 * y * z,
        _K2 * _C3 * (3.0 * z * z - 1.0),
        _K2 * _C2 * x * z,
        _K2 * _C4 * (x * x - y * y),
    ], dim=-1)


def sh_shade(normals: Tensor, albedo: Tensor, sh: Tensor) -> Tensor:
    """SH Lambertian shading ``C = ρ ⊙ (Lᵀ φ(n))``.

    Args:
        normals: ``(B, ..., 3)`` view-frame normals (normalised here).
        albedo: ``(B, ..., 3)`` linear RGB reflectance ρ.
        sh: ``(B, 9, 3)`` radiance SH coefficients per colour channel.
    Returns:
        ``(B, ..., 3)`` linear RGB.
    """
    if sh.dim() != 3 or sh.shape[1:] != (9, 3):
        raise ValueError(f"sh_shade: expected sh of shape (B, 9, 3), got {tuple(sh.shape)}")
    phi = sh_basis(_unit(normals))  # (B, ..., 9)
    B = phi.shape[0]
    shading = (phi.reshape(B, -1, 9) @ sh).reshape(*phi.shape[:-1], 3)  # out[b,p,c] = Σ_k φ[b,p,k] L[b,k,c]
    return albedo * shading


def sh_directional(direction: Tensor, irradiance: Tensor, ambient: Tensor | float = 0.0) -> Tensor:
    """SH coefficients ``(B, 9, 3)`` of a distant light from unit ``direction`` ``(B, 3)`` (view frame,
    pointing towards the light) with RGB ``irradiance`` ``(B, 3)``, plus an ambient term giving
    ``C = ambient · ρ``."""
    Y = sh_basis(_unit(direction)) / torch.tensor([_K0] + [_K1] * 3 + [_K2] * 5, dtype=direction.dtype,
                                                  device=direction.device)  # plain Y_lm(ω)
    L = Y[:, :, None] * irradiance[:, None, :]
    e0 = torch.zeros(9, dtype=direction.dtype, device=direction.device)
    e0[0] = SH_AMBIENT
    ambient = torch.as_tensor(ambient, dtype=direction.dtype, device=direction.device)
    return L + e0[None, :, None] * ambient.reshape(-1, 1, 1)


# ---------------------------------------------------------------------------------------------------
# Phong with point lights (Genova et al. 2018, §3.2.1)
# ---------------------------------------------------------------------------------------------------

def _cmf(wavelength_nm: Tensor) -> Tensor:
    """CIE 1931 2° colour-matching functions, multi-lobe Gaussian fit of Wyman, Sloan & Shirley (2013,
    JCGT 2(2), "Simple analytic approximations to the CIE XYZ color matching functions"). ``(N,) -> (N, 3)``."""
    lam = wavelength_nm

    def g(mu: float, s1: float, s2: float) -> Tensor:
        t = (lam - mu) / torch.where(lam < mu, torch.full_like(lam, s1), torch.full_like(lam, s2))
        return torch.exp(-0.5 * t * t)

    xb = 1.056 * g(599.8, 37.9, 31.0) + 0.362 * g(442.0, 16.0, 26.7) - 0.065 * g(501.1, 20.4, 26.2)
    yb = 0.821 * g(568.8, 46.9, 40.5) + 0.286 * g(530.9, 16.3, 31.1)
    zb = 1.217 * g(437.0, 11.8, 36.0) + 0.681 * g(459.0, 26.0, 13.8)
    return torch.stack([xb, yb, zb], dim=-1)


_XYZ_TO_LINEAR_SRGB = [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]]


def color_temperature_rgb(kelvin: Tensor) -> Tensor:
    """Linear-sRGB colour of a black body at ``kelvin`` ``(B,)`` K, scaled so its largest channel is 1.

    Planck's law integrated against the CIE 1931 colour-matching functions (380–780 nm, 5 nm steps), then
    XYZ → linear sRGB (IEC 61966-2-1 matrix), clamped at 0 (very low temperatures fall outside sRGB).
    Typical lights: candle 1900 K, tungsten 2700–3200 K, daylight 5500–6500 K, overcast sky 7000+ K.
    """
    kelvin = torch.as_tensor(kelvin, dtype=torch.float64).reshape(-1)
    lam = torch.arange(380.0, 781.0, 5.0, dtype=torch.float64)
    lam_m = lam * 1e-9
    h, c, k = 6.62607015e-34, 2.99792458e8, 1.380649e-23
    spectrum = 1.0 / (lam_m[None] ** 5 * torch.expm1(h * c / (lam_m[None] * k * kelvin[:, None])))  # Planck, ∝
    xyz = spectrum @ _cmf(lam)  # (B, 3)
    rgb = (xyz @ torch.tensor(_XYZ_TO_LINEAR_SRGB, dtype=torch.float64).t()).clamp_min(0)
    return (rgb / rgb.amax(dim=-1, keepdim=True)).float()


def phong_shade(normals: Tensor, positions: Tensor, albedo: Tensor, light_positions: Tensor,
                light_colors: Tensor, *, ambient: Tensor | float = 0.0, specular: Tensor | float = 0.0,
                shininess: float = 20.0, eye: Tensor | None = None) -> Tensor:
    """Phong reflection with point lights:
    ``C = a ρ + Σ_l I_l [ρ max(0, n·l̂) + k_s max(0, r̂·v̂)^α]`` with ``r̂ = 2 (n·l̂) n − l̂``.

    Args:
        normals: ``(B, P, 3)`` view-frame normals (normalised here).
        positions: ``(B, P, 3)`` view-frame surface points (mm).
        albedo: ``(B, P, 3)`` diffuse colour ρ.
        light_positions: ``(B, L, 3)`` view-frame light positions (mm); Genova places two lights a few
            metres from the face.
        light_colors: ``(B, L, 3)`` RGB intensities (e.g. ``color_temperature_rgb(K) · power``).
        ambient: ambient factor ``a`` (scalar or ``(B, 1, 3)``).
        specular: specular colour ``k_s`` (scalar, ``(B, 1, 3)`` or per point ``(B, P, 3)``).
        shininess: Phong exponent α.
        eye: ``(B, 3)`` viewer position (perspective camera: the origin); ``None`` = orthographic viewer
            looking along −z, i.e. ``v̂ = +z`` everywhere.
    Returns:
        ``(B, P, 3)`` linear RGB.
    """
    n = _unit(normals)
    to_light = light_positions[:, None, :, :] - positions[:, :, None, :]  # (B, P, L, 3)
    l_hat = _unit(to_light)
    ndotl = (n[:, :, None, :] * l_hat).sum(-1, keepdim=True)  # (B, P, L, 1)
    diffuse = (ndotl.clamp_min(0) * light_colors[:, None]).sum(2) * albedo
    color = ambient * albedo + diffuse
    if not (isinstance(specular, float) and specular == 0.0):
        if eye is None:
            v_hat = torch.zeros_like(n)
            v_hat[..., 2] = 1.0
        else:
            v_hat = _unit(eye[:, None, :] - positions)
        r_hat = 2.0 * ndotl * n[:, :, None, :] - l_hat
        rdotv = (r_hat * v_hat[:, :, None, :]).sum(-1, keepdim=True).clamp_min(0)
        lit = (ndotl > 0).to(rdotv.dtype)  # no highlight from lights behind the surface
        color = color + specular * (lit * rdotv.pow(shininess) * light_colors[:, None]).sum(2)
    return color
