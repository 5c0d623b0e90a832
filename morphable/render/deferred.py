"""Fused deferred SH shading of packed pixels: barycentrics → interpolation → SH Lambertian, one autograd node.

For each packed pixel ``p`` (batch ``b``, triangle ``f``, pixel centre ``(px, py)``):

1. barycentrics ``λ`` of the pixel centre in the screen-space triangle (Genova et al. 2018, §3.2; valid
   outside the triangle too), perspective-correct when asked
   (:func:`~morphable.render.rasterize.barycentric_at`);
2. interpolated view-frame normal ``n = Σ λ_i N_i``, unit ``m = n / |n|``, and albedo ``ρ = Σ λ_i ρ_i``;
3. SH Lambertian shading ``c = ρ ⊙ (Lᵀ φ(m))`` (Ramamoorthi & Hanrahan 2001;
   :func:`~morphable.render.shading.sh_basis`).

:func:`sh_shade_packed` does all of it in one ``torch.autograd.Function`` whose hand-written backward
accumulates the screen-vertex, normal and colour gradients of the three corners with a single
``index_add`` (autograd would record ~100 small gathers, products and scatters over the packed pixels:
the CPU renderer's main cost). :func:`sh_shade_packed_reference` is the same computation in plain
differentiable tensor ops, kept to test it against.
"""
from __future__ import annotations

import torch
from torch import Tensor

from morphable.render.rasterize import barycentric_at
from morphable.render.shading import _C0, _C1, _C2, _C3, _C4, _K0, _K1, _K2, sh_basis

_A0, _A1, _A2, _A3, _A4 = _K0 * _C0, _K1 * _C1, _K2 * _C2, _K2 * _C3, _K2 * _C4  # φ(m) coefficients
_EPS = 1e-12  # normal-length clamp, as in the reference (zero normals shade as 0, no nan)


def sh_shade_packed_reference(screen: Tensor, normals: Tensor, colors: Tensor | None, sh: Tensor, triangles: Tensor,
                              batch: Tensor, face: Tensor, centres: Tensor, perspective: bool) -> Tensor:
    """Autograd reference of :func:`sh_shade_packed` (same arguments and result)."""
    bary, _ = barycentric_at(screen, triangles, batch, face, centres, perspective)
    B, V = screen.shape[:2]
    corner = triangles.index_select(0, face) + (batch * V)[:, None]  # (P, 3) flat vertex ids

    def interp(attr: Tensor) -> Tensor:
        flat = attr.reshape(B * V, 3)
        return sum(flat.index_select(0, corner[:, i]) * bary[:, i:i + 1] for i in range(3))

    n = interp(normals)
    m = n / n.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    rho = interp(colors) if colors is not None else torch.ones_like(m)
    return rho * torch.einsum("pk,pkc->pc", sh_basis(m), sh.expand(B, 9, 3).index_select(0, batch))


def sh_shade_packed(screen: Tensor, normals: Tensor, colors: Tensor | None, sh: Tensor, triangles: Tensor,
                    batch: Tensor, face: Tensor, centres: Tensor, perspective: bool) -> Tensor:
    """SH-shaded colour of packed pixels (see module docstring), differentiable in the first four arguments.

    Args:
        screen: ``(B, V, 3)`` screen-space vertices ``(u px, v px, depth mm)``.
        normals: ``(B, V, 3)`` unit view-frame vertex normals.
        colors: ``(B, V, 3)`` per-vertex albedo, or ``None`` (white).
        sh: ``(B, 9, 3)`` SH radiance coefficients.
        triangles: ``(F, 3)`` int64.
        batch, face: ``(P,)`` int64 batch index and triangle id of each pixel.
        centres: ``(P, 2)`` pixel centres ``(x, y)``.
        perspective: perspective-correct barycentrics.
    Returns:
        ``(P, 3)`` linear RGB.
    """
    if colors is None:
        colors = torch.ones_like(normals)  # white albedo: its gradient is never asked for
    return _ShadePacked.apply(screen, normals, colors, sh, triangles, batch, face, centres, perspective)


def _image_bounds(batch: Tensor, B: int) -> list[int] | None:
    """Where each image's pixels start and end, ``[0, n_0, n_0 + n_1, …, P]``, when ``batch`` ``(P,)`` is
    non-decreasing (packed pixels in flat order, as the renderer makes them); ``None`` otherwise."""
    if batch.numel() > 1 and not bool((batch[1:] >= batch[:-1]).all()):
        return None
    return [0] + torch.bincount(batch, minlength=B).cumsum(0).tolist()


class _ShadePacked(torch.autograd.Function):
    """Forward and hand-written backward of :func:`sh_shade_packed`. Work arrays are rows ``(P,)``
    (contiguous 1-D vectors, stacked along dim 0: the fastest layout for elementwise ops and small matrix
    products on CPU; ``stack(..., dim=-1)`` and ``(P, 9) @ (9, 3)`` products are several times slower)."""

    @staticmethod
    def forward(ctx, screen, normals, colors, sh, triangles, batch, face, centres, perspective):  # type: ignore[override]
        B, V = screen.shape[:2]
        dtype = screen.dtype
        corner = (triangles.index_select(0, face) + (batch * V)[:, None]).t().contiguous()  # (3, P)
        # the 9 attributes of every vertex as rows (9, B·V): x, y, d, N (3), ρ (3); per corner i: (9, P)
        table = torch.cat([t.to(dtype).reshape(B * V, 3).t() for t in (screen, normals, colors)])  # one copy
        at = [table.index_select(1, corner[i]) for i in range(3)]
        x, y, d = [a[0] for a in at], [a[1] for a in at], [a[2] for a in at]
        c = centres.t().to(dtype)
        px, py = c[0].contiguous(), c[1].contiguous()
        w = [(x[(i + 2) % 3] - x[(i + 1) % 3]) * (py - y[(i + 1) % 3])
             - (y[(i + 2) % 3] - y[(i + 1) % 3]) * (px - x[(i + 1) % 3]) for i in range(3)]
        area2 = w[0] + w[1] + w[2]
        if perspective:
            q = [w[i] / (area2 * d[i]) for i in range(3)]
            inv = q[0] + q[1] + q[2]
            lam = [qi / inv for qi in q]
        else:
            q, inv = None, None
            lam = [wi / area2 for wi in w]
        n_rho = lam[0] * at[0][3:9] + lam[1] * at[1][3:9] + lam[2] * at[2][3:9]  # (6, P): normal, albedo
        n, rho = n_rho[:3], n_rho[3:]
        length = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt()
        scale = 1.0 / length.clamp_min(_EPS)
        mx, my, mz = (n * scale).unbind(0)
        phi = torch.stack([torch.full_like(mx, _A0), _A1 * my, _A1 * mz, _A1 * mx, _A2 * mx * my, _A2 * my * mz,
                           _A3 * (3.0 * mz * mz - 1.0), _A2 * mx * mz, _A4 * (mx * mx - my * my)])  # (9, P) = φ(m)
        L = sh.to(dtype)
        bounds = None
        if B == 1 or sh.shape[0] == 1:
            s = L[0].t() @ phi  # (3, P)
        else:
            bounds = _image_bounds(batch, B)
            if bounds is not None:  # one (3, 9) @ (9, P_b) product per image
                s = torch.cat([L[b].t() @ phi[:, bounds[b]:bounds[b + 1]] for b in range(B)], dim=1)
            else:
                s = (L.index_select(0, batch).permute(1, 2, 0) * phi[:, None]).sum(0)  # Σ_k L[b(p), k, c] φ_k(p)
        ctx.save_for_backward(sh, batch, corner, px, py, s, rho, phi, length, scale, area2, *lam, *at)
        ctx.q, ctx.inv, ctx.bounds = q, inv, bounds
        ctx.perspective, ctx.shape, ctx.dtypes = perspective, (B, V), (screen.dtype, normals.dtype, colors.dtype)
        return (rho * s).t()  # (P, 3) view

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        sh, batch, corner, px, py, s, rho, phi, length, scale, area2, *rest = ctx.saved_tensors
        lam, at = rest[:3], rest[3:]
        q, inv = ctx.q, ctx.inv
        B, V = ctx.shape
        dtype = s.dtype
        g = grad.t().to(dtype).contiguous()  # (3, P)
        g_rho = g * rho
        g_rho, g_s = g * s, g_rho  # ∂/∂ρ = g ⊙ s, ∂/∂s = g ⊙ ρ
        L = sh.to(dtype)
        g_sh = None
        per_pixel = not (B == 1 or sh.shape[0] == 1)
        bounds = ctx.bounds
        span = lambda t, b: t[:, bounds[b]:bounds[b + 1]]  # noqa: E731  (image b's pixels)
        if ctx.needs_input_grad[3]:
            if per_pixel and bounds is not None:
                g_sh = torch.stack([span(phi, b) @ span(g_s, b).t() for b in range(B)]).to(sh.dtype)
            elif per_pixel:
                outer = (phi[:, None] * g_s[None]).permute(2, 0, 1)  # (P, 9, 3)
                g_sh = torch.zeros_like(L).index_add_(0, batch, outer.contiguous()).to(sh.dtype)
            else:
                g_sh = (phi @ g_s.t())[None].to(sh.dtype)
        if per_pixel and bounds is not None:
            g_phi = torch.cat([L[b] @ span(g_s, b) for b in range(B)], dim=1)  # (9, P)
        elif per_pixel:
            g_phi = (L.index_select(0, batch).permute(1, 2, 0) * g_s[None]).sum(1)  # (9, P)
        else:
            g_phi = L[0] @ g_s
        m = (lam[0] * at[0][3:6] + lam[1] * at[1][3:6] + lam[2] * at[2][3:6]) * scale  # (3, P)
        mx, my, mz = m.unbind(0)
        # (∂φ/∂m)ᵀ g_φ: derivatives of the rows of φ above
        gx = _A1 * g_phi[3] + _A2 * (my * g_phi[4] + mz * g_phi[7]) + (2 * _A4) * mx * g_phi[8]
        gy = _A1 * g_phi[1] + _A2 * (mx * g_phi[4] + mz * g_phi[5]) - (2 * _A4) * my * g_phi[8]
        gz = _A1 * g_phi[2] + _A2 * (my * g_phi[5] + mx * g_phi[7]) + (6 * _A3) * mz * g_phi[6]
        # m = n / max(|n|, eps): (I − m mᵀ) g / |n| where the clamp is inactive, g / eps where it is
        dot = (gx * mx + gy * my + gz * mz) * (length >= _EPS).to(dtype)
        g_n_rho = torch.cat([(torch.stack([gx, gy, gz]) - dot * m) * scale, g_rho])  # (6, P)
        # corner gradients: attribute i gets λ_i g; λ_i gets Σ g · attribute_i
        g_lam = [(g_n_rho * a[3:9]).sum(0) for a in at]
        lam_dot = lam[0] * g_lam[0] + lam[1] * g_lam[1] + lam[2] * g_lam[2]
        G = torch.empty(9, 3, px.shape[0], dtype=dtype, device=px.device)  # (attribute, corner, P)
        if ctx.perspective:  # λ_i = q_i / Σq, q_i = w_i / (A d_i), A = Σ w
            g_q = [(g_lam[i] - lam_dot) / inv for i in range(3)]
            for i in range(3):
                torch.mul(g_q[i], q[i] / at[i][2], out=G[2, i]).neg_()
            g_area = -(g_q[0] * q[0] + g_q[1] * q[1] + g_q[2] * q[2]) / area2
            g_w = [g_q[i] / (area2 * at[i][2]) + g_area for i in range(3)]
        else:  # λ_i = w_i / A (depth is not used by the colour)
            G[2].zero_()
            g_w = [(g_lam[i] - lam_dot) / area2 for i in range(3)]
        x, y = [a[0] for a in at], [a[1] for a in at]
        for c in range(3):  # w_i = (x_k − x_j)(py − y_j) − (y_k − y_j)(px − x_j), j = i + 1, k = i + 2
            i, j = (c + 1) % 3, (c + 2) % 3  # corner c is the k of edge function i and the j of edge function j
            torch.sub(g_w[i] * (py - y[(c + 2) % 3]), g_w[j] * (py - y[(c + 1) % 3]), out=G[0, c])
            torch.sub(g_w[j] * (px - x[(c + 1) % 3]), g_w[i] * (px - x[(c + 2) % 3]), out=G[1, c])
        for i in range(3):
            torch.mul(lam[i], g_n_rho, out=G[3:9, i])
        idx = corner.reshape(-1)
        acc = torch.zeros(9, B * V, dtype=dtype, device=px.device)
        wanted = [ctx.needs_input_grad[0]] * 2 + [ctx.needs_input_grad[0] and ctx.perspective] \
            + [ctx.needs_input_grad[1]] * 3 + [ctx.needs_input_grad[2]] * 3
        for r in range(9):  # one 1-D scatter-add per attribute row (faster than a (3P, 9) index_add on CPU)
            if wanted[r]:
                acc[r].index_add_(0, idx, G[r].reshape(-1))
        t_screen, t_normals, t_colors = ctx.dtypes
        out = [acc[k:k + 3].t().reshape(B, V, 3) for k in (0, 3, 6)]
        return (out[0].to(t_screen), out[1].to(t_normals), out[2].to(t_colors), g_sh, None, None, None, None, None)
