"""Fused deferred SH shading of packed pixels: barycentrics → interpolation → SH Lambertian, one autograd node.

For each packed pixel ``p`` (batch ``b``, triangle ``f``, pixel centre ``(px, py)``):

1. barycentrics ``λ`` of the pixel centre in the screen-space triangle, perspective-correct when asked, and
   clamped to the triangle for the pixels shaded just outside the silhouette
   (:func:`~morphable.render.rasterize.barycentric_at`);
2. interpolated view-frame normal ``n = Σ λ_i N_i``, unit ``m = n / |n|``, and albedo ``ρ = Σ λ_i ρ_i``;
3. SH Lambertian shading ``c = ρ ⊙ (Lᵀ φ(m))`` (Ramamoorthi & Hanrahan 2001;
   :func:`~morphable.render.shading.sh_basis`).

:func:`sh_shade_packed` does all of it in one ``torch.autograd.Function`` with a hand-written backward: on CPU
two compiled loops over the pixels (:mod:`morphable.render.cpu_kernels`), elsewhere tensor code whose backward
accumulates the screen-vertex, normal and colour gradients of the three corners with a single
``index_add`` (autograd would record ~100 small gathers, products and scatters over the packed pixels:
the CPU renderer's main cost). :func:`sh_shade_packed_reference` is the same computation in plain
differentiable tensor ops, kept to test it against.
"""
from __future__ import annotations

import torch
from torch import Tensor

from morphable.render.kernel_threads import kernel_threads, launched, work_arrays
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
                    batch: Tensor, face: Tensor, centres: Tensor, perspective: bool, *,
                    compiled: bool | None = None) -> Tensor:
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
        compiled: the compiled CPU loops (``True``) or the tensor implementation (``False``); ``None``: compiled
            on CPU tensors.
    Returns:
        ``(P, 3)`` linear RGB.
    """
    if colors is None:
        colors = torch.ones_like(normals)  # white albedo: its gradient is never asked for
    if screen.device.type == "cpu" if compiled is None else compiled:
        return _ShadePackedCompiled.apply(screen, normals, colors, sh, triangles, batch, face, centres, perspective)
    return _ShadePacked.apply(screen, normals, colors, sh, triangles, batch, face, centres, perspective)


class _ShadePackedCompiled(torch.autograd.Function):
    """:func:`sh_shade_packed` as two compiled CPU loops over the packed pixels
    (:mod:`morphable.render.cpu_kernels`): the forward, and a backward that recomputes each pixel's forward
    quantities and scatters its corner gradients directly (nothing but the inputs is stored)."""

    @staticmethod
    def forward(ctx, screen, normals, colors, sh, triangles, batch, face, centres, perspective):  # type: ignore[override]
        from morphable.render.cpu_kernels import _sh_shade_forward, _sh_shade_forward_parallel  # numba: on first use

        dtype = screen.dtype
        K, beta = _quadratic(sh.detach().to(dtype))
        arrays = [t.detach().to(dtype).contiguous().numpy() for t in (screen, normals, colors)]
        # pixel centres in the screen dtype, as the reference computes them (int64 centres made the kernels'
        # barycentrics float64 arithmetic: about 25% slower in float32)
        ids = [t.contiguous().numpy() for t in (triangles, batch, face, centres.to(dtype))]
        ctx.arrays, ctx.ids, ctx.KB, ctx.perspective = arrays, ids, (K.numpy(), beta.numpy()), perspective
        ctx.dtypes, ctx.sh_batch = (dtype, normals.dtype, colors.dtype, sh.dtype), sh.shape[0]
        # typed scalars: float32 arithmetic stays float32
        ctx.eps_tiny = arrays[0].dtype.type(_EPS), arrays[0].dtype.type(torch.finfo(dtype).tiny)
        chunks = kernel_threads(face.shape[0])
        if chunks == 1:
            return torch.from_numpy(_sh_shade_forward(*arrays, *ctx.KB, *ids, perspective, *ctx.eps_tiny))
        out = _sh_shade_forward_parallel(*arrays, *ctx.KB, *ids, perspective, *ctx.eps_tiny, chunks)
        launched()
        return torch.from_numpy(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        from morphable.render.cpu_kernels import _sh_shade_backward, _sh_shade_backward_parallel

        g = grad.to(ctx.dtypes[0]).contiguous().numpy()
        P = g.shape[0]
        chunks = kernel_threads(P)
        args = (*ctx.arrays, *ctx.KB, *ctx.ids, ctx.perspective, *ctx.eps_tiny, g)
        if chunks == 1:
            out = _sh_shade_backward(*args)
        else:
            out = _sh_shade_backward_parallel(*args, *work_arrays(
                "shade", tuple(((chunks - 1, *a.shape), a.dtype) for a in ctx.arrays)))
            launched()
        g_screen, g_normals, g_colors, psi, g_s = (torch.from_numpy(t) for t in out)
        g_sh = None
        if ctx.needs_input_grad[3]:  # ∂/∂K = Σ_p ψ ⊗ ∂/∂s, ∂/∂β = Σ_p ∂/∂s, per image of the light
            if ctx.KB[0].shape[0] == 1:
                g_K, g_beta = (psi.t() @ g_s)[None], g_s.sum(0)[None]
            else:
                batch = torch.from_numpy(ctx.ids[1])
                g_K = g_s.new_zeros(ctx.KB[0].shape).index_add_(0, batch, psi[:, :, None] * g_s[:, None, :])
                g_beta = g_s.new_zeros(ctx.KB[1].shape).index_add_(0, batch, g_s)
            g_sh = _quadratic_backward(g_K, g_beta)
            g_sh = (g_sh if ctx.sh_batch == g_sh.shape[0] else g_sh.sum(0, keepdim=True)).to(ctx.dtypes[3])
        return (g_screen, g_normals.to(ctx.dtypes[1]), g_colors.to(ctx.dtypes[2]), g_sh,
                None, None, None, None, None)


def _image_bounds(batch: Tensor, B: int) -> list[int] | None:
    """Where each image's pixels start and end, ``[0, n_0, n_0 + n_1, …, P]``, when ``batch`` ``(P,)`` is
    non-decreasing (packed pixels in flat order, as the renderer makes them); ``None`` otherwise."""
    if batch.numel() > 1 and not bool((batch[1:] >= batch[:-1]).all()):
        return None
    return [0] + torch.bincount(batch, minlength=B).cumsum(0).tolist()


# SH shading as a quadratic in the unit normal m: Lᵀ φ(m) = Kᵀ ψ(m) + β with the 8 rows
# ψ = (m_x, m_y, m_z, m_x m_y, m_y m_z, m_x m_z, m_z², m_x² − m_y²) (the rows of φ without its constant, the
# −1 of 3 m_z² − 1 moved into β): K = c ⊙ L[_PSI] (per row), β = A0 L_0 − A3 L_6.
_PSI = [3, 1, 2, 4, 5, 7, 6, 8]  # the φ row each ψ row scales
_PSI_SCALE = [_A1, _A1, _A1, _A2, _A2, _A2, 3 * _A3, _A4]


def _quadratic(L: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, 9, 3)`` SH coefficients -> ``K`` ``(B, 8, 3)`` and ``β`` ``(B, 3)`` (see above)."""
    scale = torch.tensor(_PSI_SCALE, dtype=L.dtype, device=L.device)[:, None]
    return L[:, _PSI] * scale, _A0 * L[:, 0] - _A3 * L[:, 6]


def _quadratic_backward(g_K: Tensor, g_beta: Tensor) -> Tensor:
    """Gradient of :func:`_quadratic` for the SH coefficients: ``(B, 8, 3), (B, 3) -> (B, 9, 3)``."""
    g = g_K.new_zeros(g_K.shape[0], 9, 3)
    g[:, _PSI] = g_K * torch.tensor(_PSI_SCALE, dtype=g_K.dtype, device=g_K.device)[:, None]
    g[:, 0] += _A0 * g_beta
    g[:, 6] -= _A3 * g_beta
    return g


def _rows(x: Tensor) -> Tensor:
    """``(N, C)`` -> contiguous ``(C, N)``: one copy per column (several times faster on CPU than
    ``x.t().contiguous()``, whose strided copy is not vectorised)."""
    return torch.stack(x.unbind(1))


class _ShadePacked(torch.autograd.Function):
    """Forward and hand-written backward of :func:`sh_shade_packed`. Work arrays are rows ``(P,)``
    (contiguous 1-D vectors, stacked along dim 0: the fastest layout for elementwise ops and small matrix
    products on CPU; ``stack(..., dim=-1)`` and ``(P, 9) @ (9, 3)`` products are several times slower), updated
    in place where they are not needed again (fewer large temporaries)."""

    @staticmethod
    def forward(ctx, screen, normals, colors, sh, triangles, batch, face, centres, perspective):  # type: ignore[override]
        B, V = screen.shape[:2]
        dtype = screen.dtype
        P = face.shape[0]
        tri_rows = triangles.t()
        corner = [tri_rows[i].index_select(0, face) for i in range(3)]  # (P,) flat vertex ids per corner
        if B > 1:
            offset = batch * V
            corner = [c.add_(offset) for c in corner]
        # the attributes of every vertex as rows (8 or 9, B·V): x, y, (d), N (3), ρ (3); per corner i: (8 or 9, P)
        # (the depth row only for perspective: orthographic barycentrics do not use it)
        rows = [r for t in (screen, normals, colors) for r in t.to(dtype).reshape(B * V, 3).unbind(1)]
        table = torch.stack(rows if perspective else rows[:2] + rows[3:])
        at = [table.index_select(1, c) for c in corner]
        o = 3 if perspective else 2  # first attribute row: N (3), ρ (3)
        x, y = [a[0] for a in at], [a[1] for a in at]
        d = [a[2] for a in at] if perspective else None
        c = _rows(centres).to(dtype)
        px, py = c[0], c[1]
        dx, dy = [px - x[i] for i in range(3)], [py - y[i] for i in range(3)]  # pixel − corner
        # w_i = (x_k − x_j)(py − y_j) − (y_k − y_j)(px − x_j), (j, k) = (i + 1, i + 2): twice the signed area
        # opposite corner i
        w = []
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            w.append(((x[k] - x[j]).mul_(dy[j])).sub_((y[k] - y[j]).mul_(dx[j])))
        # clamped barycentrics (rasterize.barycentric_at): λ_i = c_i / Σc, c_i = max(s w_i / d_i, 0)
        sign = torch.where(w[0] + w[1] + w[2] < 0, -1.0, 1.0).to(dtype)
        c = [(w[i].mul_(sign).div_(d[i]) if perspective else w[i].mul_(sign)).clamp_min_(0) for i in range(3)]
        total = (c[0] + c[1] + c[2]).clamp_min_(torch.finfo(dtype).tiny)
        lam = [ci.div_(total) for ci in c]
        n_rho = at[0][o:o + 6] * lam[0]  # (6, P): interpolated normal, albedo
        n_rho.addcmul_(at[1][o:o + 6], lam[1]).addcmul_(at[2][o:o + 6], lam[2])
        n, rho = n_rho[:3], n_rho[3:]
        length = (n * n).sum(0).sqrt_()
        scale = length.clamp_min(_EPS).reciprocal_()
        psi = torch.empty(8, P, dtype=dtype, device=screen.device)  # ψ(m), m = n / |n| in rows 0-2
        torch.mul(n, scale, out=psi[:3])
        mx, my, mz = psi[0], psi[1], psi[2]
        torch.mul(mx, my, out=psi[3])
        torch.mul(my, mz, out=psi[4])
        torch.mul(mx, mz, out=psi[5])
        torch.mul(mz, mz, out=psi[6])
        torch.mul(mx, mx, out=psi[7]).addcmul_(my, my, value=-1.0)
        K, beta = _quadratic(sh.to(dtype))
        bounds = None
        if B == 1 or sh.shape[0] == 1:
            s = torch.addmm(beta[0][:, None], K[0].t(), psi)  # (3, P)
        else:
            bounds = _image_bounds(batch, B)
            if bounds is not None:  # one (3, 8) @ (8, P_b) product per image
                s = torch.cat([torch.addmm(beta[b][:, None], K[b].t(), psi[:, bounds[b]:bounds[b + 1]])
                               for b in range(B)], dim=1)
            else:  # Σ_k K[b(p), k, c] ψ_k(p) + β[b(p), c]
                s = (K.index_select(0, batch).permute(2, 1, 0) * psi[None]).sum(1) + beta.index_select(0, batch).t()
        out = torch.empty(P, 3, dtype=dtype, device=screen.device)
        for ch in range(3):  # written column by column: the (P, 3) result contiguous, without a transposing copy
            torch.mul(rho[ch], s[ch], out=out[:, ch])
        ctx.save_for_backward(sh, batch, *corner, *dx, *dy, s, rho, psi, length, scale, sign, total, *lam, *at)
        ctx.bounds = bounds
        ctx.perspective, ctx.shape, ctx.dtypes = perspective, (B, V), (screen.dtype, normals.dtype, colors.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        sh, batch, *rest = ctx.saved_tensors
        corner, dx, dy = rest[0:3], rest[3:6], rest[6:9]
        s, rho, psi, length, scale, sign, total = rest[9:16]
        lam, at = rest[16:19], rest[19:22]
        bounds = ctx.bounds
        B, V = ctx.shape
        dtype = s.dtype
        P = s.shape[1]
        g = _rows(grad.to(dtype))  # (3, P)
        g_n_rho = torch.empty(6, P, dtype=dtype, device=s.device)  # ∂/∂(normal, albedo) of the pixels
        torch.mul(g, s, out=g_n_rho[3:])  # ∂/∂ρ = g ⊙ s
        g_s = g.mul_(rho)  # ∂/∂s = g ⊙ ρ
        K, _ = _quadratic(sh.to(dtype))
        per_pixel = not (B == 1 or sh.shape[0] == 1)
        span = lambda t, b: t[:, bounds[b]:bounds[b + 1]]  # noqa: E731  (image b's pixels)
        g_sh = None
        if ctx.needs_input_grad[3]:
            if per_pixel and bounds is not None:
                g_K = torch.stack([span(psi, b) @ span(g_s, b).t() for b in range(B)])
                g_beta = torch.stack([span(g_s, b).sum(1) for b in range(B)])
            elif per_pixel:
                outer = (psi[:, None] * g_s[None]).permute(2, 0, 1)  # (P, 8, 3)
                g_K = torch.zeros_like(K).index_add_(0, batch, outer.contiguous())
                g_beta = torch.zeros(B, 3, dtype=dtype, device=s.device).index_add_(0, batch, g_s.t())
            else:
                g_K, g_beta = (psi @ g_s.t())[None], g_s.sum(1)[None]
            g_sh = _quadratic_backward(g_K, g_beta)
            g_sh = (g_sh if sh.shape[0] == g_sh.shape[0] else g_sh.sum(0, keepdim=True)).to(sh.dtype)
        if per_pixel and bounds is not None:
            g_psi = torch.cat([K[b] @ span(g_s, b) for b in range(B)], dim=1)  # (8, P)
        elif per_pixel:
            g_psi = (K.index_select(0, batch).permute(1, 2, 0) * g_s[None]).sum(1)
        else:
            g_psi = K[0] @ g_s
        mx, my, mz = psi[0], psi[1], psi[2]
        # (∂ψ/∂m)ᵀ g_ψ, written into the normal rows of g_n_rho
        gm = g_n_rho[:3]
        gm.copy_(g_psi[:3])
        gm[0].addcmul_(my, g_psi[3]).addcmul_(mz, g_psi[5]).addcmul_(mx, g_psi[7], value=2.0)
        gm[1].addcmul_(mx, g_psi[3]).addcmul_(mz, g_psi[4]).addcmul_(my, g_psi[7], value=-2.0)
        gm[2].addcmul_(my, g_psi[4]).addcmul_(mx, g_psi[5]).addcmul_(mz, g_psi[6], value=2.0)
        # m = n / max(|n|, eps): (I − m mᵀ) g / |n| where the clamp is inactive, g / eps where it is
        m = psi[:3]
        dot = (gm * m).sum(0).mul_((length >= _EPS).to(dtype))
        gm.addcmul_(m, dot, value=-1.0).mul_(scale)
        # corner gradients: attribute i gets λ_i g; λ_i gets Σ g · attribute_i
        o = 3 if ctx.perspective else 2  # first attribute row of the gathered corner tables (see forward)
        g_lam = [(g_n_rho * a[o:o + 6]).sum(0) for a in at]
        lam_dot = lam[0] * g_lam[0]
        lam_dot.addcmul_(lam[1], g_lam[1]).addcmul_(lam[2], g_lam[2])
        G = torch.empty(9, 3, P, dtype=dtype, device=s.device)  # (attribute, corner, P)
        # λ_i = c_i / Σc: ∂/∂c_i = (g_λi − λ·g_λ) / Σc where c_i > 0, 0 where clamped; c_i = s w_i / d_i
        g_c = [(g_lam[i] - lam_dot).div_(total).mul_(lam[i] > 0) for i in range(3)]
        if ctx.perspective:
            for i in range(3):  # ∂c_i/∂d_i = −c_i / d_i, c_i = λ_i Σc
                torch.mul(g_c[i], lam[i] * total / at[i][2], out=G[2, i]).neg_()
            g_w = [(g_c[i] * sign).div_(at[i][2]) for i in range(3)]
        else:  # (depth is not used by the colour)
            G[2].zero_()
            g_w = [g_c[i].mul_(sign) for i in range(3)]
        # ∂w_i/∂x_k = py − y_j, ∂w_i/∂x_j = y_k − py, ∂w_i/∂y_k = x_j − px, ∂w_i/∂y_j = px − x_k; corner c is the
        # k of w_{c+1} (j = c + 2) and the j of w_{c+2} (k = c + 1)
        for c in range(3):
            a, b = (c + 1) % 3, (c + 2) % 3
            torch.mul(g_w[a], dy[b], out=G[0, c]).addcmul_(g_w[b], dy[a], value=-1.0)
            torch.mul(g_w[b], dx[a], out=G[1, c]).addcmul_(g_w[a], dx[b], value=-1.0)
        for i in range(3):
            torch.mul(g_n_rho, lam[i], out=G[3:9, i])
        idx = torch.cat(corner)
        acc = torch.zeros(9, B * V, dtype=dtype, device=s.device)
        wanted = [ctx.needs_input_grad[0]] * 2 + [ctx.needs_input_grad[0] and ctx.perspective] \
            + [ctx.needs_input_grad[1]] * 3 + [ctx.needs_input_grad[2]] * 3
        for r in range(9):  # one 1-D scatter-add per attribute row (faster than a (3P, 9) index_add on CPU)
            if wanted[r]:
                acc[r].index_add_(0, idx, G[r].reshape(-1))
        t_screen, t_normals, t_colors = ctx.dtypes
        # screen: a transposed view (its consumer, the camera projection, reads it column by column); normals and
        # colours: interleaved copies, column by column (the normals' backward and a leaf's gradient read them
        # whole, several times slower from a strided view or a transposing copy)
        return (acc[0:3].t().reshape(B, V, 3).to(t_screen), _interleaved(acc[3:6], B, V).to(t_normals),
                _interleaved(acc[6:9], B, V).to(t_colors), g_sh, None, None, None, None, None)


def _interleaved(rows: Tensor, B: int, V: int) -> Tensor:
    """``(3, B·V)`` rows -> contiguous ``(B, V, 3)``, one column copy per row."""
    out = rows.new_empty(B * V, 3)
    for c in range(3):
        out[:, c].copy_(rows[c])
    return out.view(B, V, 3)
