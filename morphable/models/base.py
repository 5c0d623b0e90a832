"""``MorphableModel``: one representation for every linear face model (SFM, BFM, ICT, FLAME's linear part).

A face is ``X = mean + B_id · α + B_exp · β`` (and colour ``C = mean_alb + B_alb · γ``) with everything in
millimetres in model space (+y up, +z towards the viewer). Conventions (``DESIGN.md``):

* **Standardised coefficients.** PCA bases are stored already multiplied by the per-component standard
  deviations (``basis = U · diag(σ)``), so every PCA coefficient has a N(0, 1) prior and the statistical
  prior is ‖α‖². ``identity_std`` keeps σ for reference (mm).
* **Blendshape expressions** (SFM, ICT's ARKit set) store ``target − neutral`` and keep their [0, 1]
  weights; ``expression_kind`` says which kind a model has.
* **Landmarks**: iBUG-68 points as weighted vertex triples (``landmark_indices``, ``landmark_weights``);
  ``landmark_mask`` marks the points the model defines. ``contour_right``/``contour_left`` hold candidate
  vertex ids for the pose-dependent jawline (iBUG 0–7 and 9–16).

Fixed model data are buffers (``.to()``, ``.double()``, ``state_dict`` just work); the module is stateless:
coefficients are arguments of :meth:`forward`, and the fitted variables belong to the fitter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from morphable.models.functional import barycentric_points, blend, blend_rows

N_LANDMARKS = 68


@dataclass(frozen=True)
class ModelOutput:
    """What :meth:`MorphableModel.forward` returns.

    Attributes:
        vertices: ``(B, V, 3)`` millimetres, model space.
        colors: ``(B, V, 3)`` linear RGB in [0, 1] (unclamped), or ``None`` when the model has no albedo.
    """

    vertices: Tensor
    colors: Tensor | None = None


def _as_tensor(x: Any, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype) if not isinstance(x, Tensor) else x.to(dtype)


class MorphableModel(nn.Module):
    """A linear 3D morphable model.

    Args:
        name: short name (``"sfm"``, ``"ict"``, ``"bfm2009"``...).
        mean: ``(V, 3)`` mean shape, mm.
        triangles: ``(F, 3)`` int64 triangle vertex ids (quads already split for rendering).
        identity_basis: ``(V, 3, K_id)`` standardised identity basis (mm per unit coefficient).
        identity_std: ``(K_id,)`` σ of each identity component (mm-scale of the unit basis), or ``None``.
        expression_basis: ``(V, 3, K_exp)`` standardised PCA basis or blendshape offsets, or ``None``.
        expression_kind: ``"pca"`` or ``"blendshapes"`` (or ``None`` with no expression basis).
        expression_names: names of the blendshapes/components (optional).
        albedo_mean: ``(V, 3)`` mean per-vertex colour in [0, 1], or ``None``.
        albedo_basis: ``(V, 3, K_alb)`` standardised colour basis, or ``None``.
        uv: ``(T, 2)`` texture coordinates in [0, 1]² (v up, as in OBJ), or ``None``.
        uv_triangles: ``(F, 3)`` ids into ``uv`` per triangle; ``None`` means UVs are per vertex (T = V).
        polygons: the file's original faces (quads kept) as a list of vertex-id lists, for export.
        polygon_uvs: matching UV-id lists, or ``None``.
        landmark_indices / landmark_weights: ``(68, 3)`` iBUG-68 definitions (see module docstring).
        landmark_mask: ``(68,)`` bool, which iBUG points the model defines.
        contour_right / contour_left: candidate vertex ids for iBUG 0–7 / 9–16 contour fitting.
        regions: named vertex-id sets (``"face"``, ``"eyes"``, ``"teeth"``...).
        symmetry: ``(V,)`` int64 id of each vertex's mirror (or ``None``).
        metadata: free-form provenance (source, licence, units of the original file, ...).
    """

    def __init__(
        self,
        *,
        name: str,
        mean: Any,
        triangles: Any,
        identity_basis: Any,
        identity_std: Any = None,
        expression_basis: Any = None,
        expression_kind: str | None = None,
        expression_names: list[str] | None = None,
        albedo_mean: Any = None,
        albedo_basis: Any = None,
        uv: Any = None,
        uv_triangles: Any = None,
        polygons: list[list[int]] | None = None,
        polygon_uvs: list[list[int]] | None = None,
        landmark_indices: Any = None,
        landmark_weights: Any = None,
        landmark_mask: Any = None,
        contour_right: Any = None,
        contour_left: Any = None,
        regions: dict[str, Any] | None = None,
        symmetry: Any = None,
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.name = name
        mean = _as_tensor(mean, dtype)
        V = mean.shape[0]
        if mean.shape != (V, 3):
            raise ValueError(f"mean: expected (V, 3), got {tuple(mean.shape)}")
        self.register_buffer("mean", mean)
        tri = _as_tensor(triangles, torch.int64)
        if tri.dim() != 2 or tri.shape[1] != 3:
            raise ValueError(f"triangles: expected (F, 3), got {tuple(tri.shape)}")
        if tri.numel() and (tri.min() < 0 or tri.max() >= V):
            raise ValueError(f"triangles: vertex ids out of range [0, {V})")
        self.register_buffer("triangles", tri)
        self.register_buffer("identity_basis", self._basis(identity_basis, V, "identity_basis", dtype))
        K = self.identity_basis.shape[-1]
        self.register_buffer("identity_std", None if identity_std is None else _as_tensor(identity_std, dtype).reshape(K))

        if expression_basis is not None and expression_kind not in ("pca", "blendshapes"):
            raise ValueError(f"expression_kind must be 'pca' or 'blendshapes', got {expression_kind!r}")
        self.expression_kind = expression_kind if expression_basis is not None else None
        self.register_buffer("expression_basis", None if expression_basis is None
                             else self._basis(expression_basis, V, "expression_basis", dtype))
        self.expression_names = list(expression_names) if expression_names is not None else None

        self.register_buffer("albedo_mean", None if albedo_mean is None else _as_tensor(albedo_mean, dtype).reshape(V, 3))
        self.register_buffer("albedo_basis", None if albedo_basis is None
                             else self._basis(albedo_basis, V, "albedo_basis", dtype))

        self.register_buffer("uv", None if uv is None else _as_tensor(uv, dtype).reshape(-1, 2))
        self.register_buffer("uv_triangles", None if uv_triangles is None
                             else _as_tensor(uv_triangles, torch.int64).reshape(-1, 3))
        self.polygons = polygons
        self.polygon_uvs = polygon_uvs

        if landmark_indices is None:
            landmark_indices = np.zeros((N_LANDMARKS, 3), np.int64)
            landmark_weights = np.tile([1.0, 0.0, 0.0], (N_LANDMARKS, 1))
            landmark_mask = np.zeros(N_LANDMARKS, bool)
        self.register_buffer("landmark_indices", _as_tensor(landmark_indices, torch.int64).reshape(N_LANDMARKS, 3))
        self.register_buffer("landmark_weights", _as_tensor(landmark_weights, dtype).reshape(N_LANDMARKS, 3))
        mask = np.ones(N_LANDMARKS, bool) if landmark_mask is None else landmark_mask
        self.register_buffer("landmark_mask", _as_tensor(mask, torch.bool).reshape(N_LANDMARKS))
        self.register_buffer("contour_right", None if contour_right is None else _as_tensor(contour_right, torch.int64))
        self.register_buffer("contour_left", None if contour_left is None else _as_tensor(contour_left, torch.int64))
        self.regions: dict[str, Tensor] = {}
        for key, ids in (regions or {}).items():
            self.set_region(key, ids)
        self.register_buffer("symmetry", None if symmetry is None else _as_tensor(symmetry, torch.int64).reshape(V))
        self.metadata = dict(metadata or {})
        self._rows: dict[str, tuple[tuple, Tensor]] = {}  # bases as component rows, for _blend

    @staticmethod
    def _basis(x: Any, V: int, name: str, dtype: torch.dtype) -> Tensor:
        t = _as_tensor(x, dtype)
        if t.dim() != 3 or t.shape[0] != V or t.shape[1] != 3:
            raise ValueError(f"{name}: expected (V={V}, 3, K), got {tuple(t.shape)}")
        return t

    def set_region(self, key: str, ids: Any) -> None:
        """Register a named vertex-id set as a buffer ``region_<key>`` (listed in :attr:`regions`)."""
        t = _as_tensor(ids, torch.int64).reshape(-1)
        self.register_buffer(f"region_{key}", t)
        self.regions[key] = t

    def region_ids(self, key: str | None) -> Tensor:
        """The vertex ids ``(n,)`` int64 of region ``key``, or all ``(V,)`` vertices when the model has no such
        region (or ``key`` is ``None``): SFM's mesh, for one, is the face only."""
        ids = self.regions.get(key)
        return torch.arange(self.n_vertices, device=self.mean.device) if ids is None else ids

    def _apply(self, fn, recurse=True):  # keep ``regions`` pointing at the moved buffers
        out = super()._apply(fn, recurse)
        self.regions = {k: getattr(self, f"region_{k}") for k in self.regions}
        return out

    # --- sizes -------------------------------------------------------------------------------------
    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def n_identity(self) -> int:
        return self.identity_basis.shape[-1]

    @property
    def n_expression(self) -> int:
        return 0 if self.expression_basis is None else self.expression_basis.shape[-1]

    @property
    def n_albedo(self) -> int:
        return 0 if self.albedo_basis is None else self.albedo_basis.shape[-1]

    @property
    def has_albedo(self) -> bool:
        return self.albedo_mean is not None

    # --- evaluation --------------------------------------------------------------------------------
    def _coeffs(self, c: Tensor | None, K: int, B: int, name: str) -> Tensor | None:
        if c is None:
            return None
        if c.dim() == 1:
            c = c[None]
        if c.dim() != 2 or c.shape[1] > K:
            raise ValueError(f"{name}: expected (B, K<={K}), got {tuple(c.shape)}")
        if c.shape[0] != B:
            raise ValueError(f"{name}: batch {c.shape[0]} does not match batch {B}")
        return c

    def forward(self, identity: Tensor | None = None, expression: Tensor | None = None,
                albedo: Tensor | None = None) -> ModelOutput:
        """Evaluate the model.

        Args:
            identity: ``(B, K)`` standardised identity coefficients, ``K ≤ n_identity`` (missing
                trailing components are zero), or ``None`` for the mean.
            expression: ``(B, K)`` PCA coefficients or blendshape weights, ``K ≤ n_expression``.
            albedo: ``(B, K)`` standardised colour coefficients, ``K ≤ n_albedo``.
        Returns:
            :class:`ModelOutput` with ``vertices (B, V, 3)`` mm and ``colors (B, V, 3)`` (or ``None``).
        """
        given = [c for c in (identity, expression, albedo) if c is not None]
        B = (given[0][None] if given[0].dim() == 1 else given[0]).shape[0] if given else 1
        identity = self._coeffs(identity, self.n_identity, B, "identity")
        expression = self._coeffs(expression, self.n_expression, B, "expression")
        albedo = self._coeffs(albedo, self.n_albedo, B, "albedo")
        verts = self.mean.expand(B, -1, -1)
        if identity is not None:
            verts = verts + self._blend("identity_basis", identity)
        if expression is not None and expression.shape[1]:
            verts = verts + self._blend("expression_basis", expression)
        colors = None
        if self.albedo_mean is not None:
            colors = self.albedo_mean.expand(B, -1, -1)
            if albedo is not None and albedo.shape[1]:
                colors = colors + self._blend("albedo_basis", albedo)
        return ModelOutput(vertices=verts, colors=colors)

    def _blend(self, name: str, coeffs: Tensor) -> Tensor:
        """``coeffs`` ``(B, K)`` times the first ``K`` components of basis ``name`` -> ``(B, V, 3)``.

        A constant basis is multiplied as component rows (:func:`blend_rows`), a ``(K, V, 3)`` copy made once
        and remade when the buffer changes (moved, cast, or edited in place); a basis that requires grad (being
        learned), or coefficients of a wider dtype, go through :func:`blend` on the buffer itself."""
        basis = getattr(self, name)
        if basis.requires_grad or torch.promote_types(coeffs.dtype, basis.dtype) != basis.dtype:
            return blend(coeffs, basis[..., : coeffs.shape[1]])
        key = (basis.data_ptr(), basis._version, basis.dtype, basis.device, tuple(basis.shape))
        cached = self._rows.get(name)
        if cached is None or cached[0] != key:
            cached = (key, basis.permute(2, 0, 1).contiguous())
            self._rows[name] = cached
        return blend_rows(coeffs.to(basis.dtype), cached[1])

    def landmarks(self, vertices: Tensor) -> Tensor:
        """The 68 iBUG landmarks of a batch of meshes. ``(B, V, 3) -> (B, 68, 3)`` (undefined rows = 0·)."""
        return barycentric_points(vertices, self.landmark_indices, self.landmark_weights)

    def describe(self) -> str:
        """One paragraph: counts of vertices, triangles, components; landmarks, UVs, regions."""
        lines = [
            f"model {self.name}: {self.n_vertices} vertices, {self.triangles.shape[0]} triangles",
            f"  identity: {self.n_identity} components (standardised, N(0,1) prior)",
            f"  expression: {self.n_expression} ({self.expression_kind or 'none'})",
            f"  albedo: {self.n_albedo} components" + ("" if self.has_albedo else " (no colour model)"),
            f"  landmarks: {int(self.landmark_mask.sum())}/68 iBUG points; "
            f"contour candidates: {0 if self.contour_right is None else len(self.contour_right)} right, "
            f"{0 if self.contour_left is None else len(self.contour_left)} left",
            f"  uv: {'none' if self.uv is None else f'{self.uv.shape[0]} coordinates'}; "
            f"regions: {', '.join(f'{k} ({len(v)})' for k, v in self.regions.items()) or 'none'}",
        ]
        for key in ("source", "licence"):
            if key in self.metadata:
                lines.append(f"  {key}: {self.metadata[key]}")
        return "\n".join(lines)
