"""Pose-dependent contour (jawline) correspondences for iBUG-68 landmarks 0–7 and 9–16.

The jawline landmarks a detector finds lie on the face's *outline in the image*, which moves over the
surface as the head turns, so their model vertices are chosen per pose (eos's
``get_contour_correspondences`` and ``find_occluding_edge_correspondences``; Huber et al., VISAPP 2016):

* **front-facing side** (both sides when the face is within ±``yaw_threshold`` of frontal): each 2D
  contour landmark takes the nearest projected vertex of the model's contour list (``contour_right`` for
  iBUG 0–7, the subject's right, ``contour_left`` for 9–16): SFM/BFM contour files, ICT jawline
  alternatives.
* **away-facing side**: the outline is an occluding edge — a mesh edge between a triangle that faces the
  camera and one that faces away. Each landmark takes the nearest projected vertex of such an edge,
  among the vertices on that side of the face at jaw height (eos additionally ray-casts these vertices
  for self-occlusion; the nearest-outline rule makes that unnecessary for the jaw region).

Which side faces away is read from the rotation: the view-frame depth of the model's +x axis (the
subject's left) is ``R[2, 0]``; ``R[2, 0] < −sin(threshold)`` turns the left side away.

FLAME's dynamic embedding (RingNet, Sanyal et al. CVPR 2019: a table of the 17 contour points per
1° yaw bin) is the other common scheme: :func:`flame_dynamic_contour` gives a FLAME model's contour for
a camera rotation (and model pose) through the model's own lookup (:func:`morphable.models.flame.head_yaw`,
:func:`~morphable.models.flame.contour_bin`, :meth:`~morphable.models.flame.Flame.dynamic_contour`), the
single implementation of the table's bin layout (bin 0 frontal, 1–39 = +1…+39°, 40–78 = −1…−39°).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from morphable.models.flame import Flame, head_yaw

RIGHT_IDS = tuple(range(0, 8))  # iBUG 1–8 (1-based): the subject's right jaw, image left when frontal
LEFT_IDS = tuple(range(9, 17))  # iBUG 10–17
CONTOUR_IDS = RIGHT_IDS + LEFT_IDS


@dataclass(frozen=True)
class ContourTerms:
    """Per-model index tables for the contour search (built once by :func:`contour_terms`).

    Attributes:
        region: ``(R,)`` model vertex ids whose positions each iteration needs (candidates + the
            vertices of the triangles next to candidate edges).
        right / left: ``(Cr,)`` / ``(Cl,)`` positions *in region* of the contour-list candidates.
        normals: ``(R, 3)`` area-weighted vertex normals of the mean shape (unnormalised).
        edge_vertices: ``(E, 2)`` positions in region of the end points of the edges that can be
            occluding edges.
        side_right / side_left: ``(R,)`` bool, silhouette candidates for each side.
    """

    region: Tensor
    right: Tensor
    left: Tensor
    normals: Tensor
    edge_vertices: Tensor
    side_right: Tensor
    side_left: Tensor


def interior_edges(triangles: Tensor) -> tuple[Tensor, Tensor]:
    """Edges shared by exactly two triangles. ``(F, 3) -> vertices (E, 2), faces (E, 2)``."""
    F = triangles.shape[0]
    e = torch.cat([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]).sort(dim=1)[0]  # (3F, 2)
    face = torch.arange(F, device=triangles.device).repeat(3)
    key = e[:, 0] * (int(triangles.max()) + 1) + e[:, 1]
    order = key.argsort(stable=True)
    key, face, e = key[order], face[order], e[order]
    counts = torch.unique_consecutive(key, return_counts=True)[1]
    start = (torch.cumsum(counts, 0) - counts)[counts == 2]  # edges met exactly twice
    return e[start], torch.stack([face[start], face[start + 1]], 1)


def _pose_grid(dtype: torch.dtype, device: torch.device) -> Tensor:
    """Rotations ``(G, 3, 3)`` for yaw ±(10°…85°) × pitch −30°…30° (the poses contour fitting meets)."""
    from morphable.geometry.rotation import euler_to_matrix

    yaw = torch.cat([torch.arange(-85.0, -9.0, 5.0), torch.arange(10.0, 86.0, 5.0)])
    pitch = torch.arange(-30.0, 31.0, 10.0)
    ypr = torch.stack(torch.meshgrid(yaw, pitch, indexing="ij"), -1).reshape(-1, 2)
    ypr = torch.cat([ypr, torch.zeros(ypr.shape[0], 1)], 1).deg2rad()
    return euler_to_matrix(ypr.to(dtype=dtype, device=device))


def contour_terms(mean: Tensor, triangles: Tensor, contour_right: Tensor, contour_left: Tensor,
                  face_region: Tensor | None = None) -> ContourTerms:
    """Index tables for :func:`contour_correspondences`.

    Silhouette candidates are the vertices between the lowest and highest contour-list vertex in y, on
    the list's side of the face (sign of x), restricted to ``face_region`` when the model has one. Of
    their edges only those that are occluding edges of the mean shape for some pose of a grid (yaw
    10°–85° either way, pitch ±30°) are kept, which makes the per-iteration test small.
    """
    V = mean.shape[0]
    lo = torch.minimum(mean[contour_right, 1].min(), mean[contour_left, 1].min())
    hi = torch.maximum(mean[contour_right, 1].max(), mean[contour_left, 1].max())
    in_band = (mean[:, 1] >= lo) & (mean[:, 1] <= hi)
    if face_region is not None:
        keep = torch.zeros(V, dtype=torch.bool, device=mean.device)
        keep[face_region] = True
        in_band &= keep
    x_right = mean[contour_right, 0].mean()
    cand_right = in_band & (mean[:, 0] * torch.sign(x_right) > 0)
    cand_left = in_band & (mean[:, 0] * -torch.sign(x_right) > 0)
    m = mean.to(torch.float64)
    fn = torch.cross(m[triangles[:, 1]] - m[triangles[:, 0]], m[triangles[:, 2]] - m[triangles[:, 0]], dim=-1)
    normals = torch.zeros_like(m).index_add_(0, triangles.reshape(-1), fn.repeat_interleave(3, dim=0))
    ev, _ = interior_edges(triangles)
    ev = ev[(cand_right | cand_left)[ev].all(1)]
    if ev.numel():
        nz = normals[ev] @ _pose_grid(m.dtype, m.device)[:, 2].T  # (E, 2, G) view z per pose
        ev = ev[((nz[:, 0] > 0) != (nz[:, 1] > 0)).any(1)]
    needed = torch.zeros(V, dtype=torch.bool, device=mean.device)
    needed[contour_right] = True
    needed[contour_left] = True
    needed[ev.reshape(-1)] = True
    region = torch.nonzero(needed).squeeze(1)
    pos = torch.full((V,), -1, dtype=torch.int64, device=mean.device)
    pos[region] = torch.arange(region.numel(), device=mean.device)
    on_edge = torch.zeros(V, dtype=torch.bool, device=mean.device)
    on_edge[ev.reshape(-1)] = True
    return ContourTerms(region=region, right=pos[contour_right], left=pos[contour_left],
                        normals=normals[region], edge_vertices=pos[ev],
                        side_right=(cand_right & on_edge)[region], side_left=(cand_left & on_edge)[region])


def silhouette_mask(R: Tensor, terms: ContourTerms) -> Tensor:
    """Region vertices on an occluding edge under rotation ``R``. ``(B, 3, 3) -> (B, R)`` bool.

    An edge is occluding when the view-frame z of its end points' normals differ in sign; the normals
    are those of the mean shape (identity and expression barely turn them), so the test is one product.
    """
    front = (terms.normals.to(R.dtype) @ R[:, 2].T) > 0  # (R, B): vertex-major, so edge gathers copy rows
    e = terms.edge_vertices
    edge, face = torch.nonzero(front.index_select(0, e[:, 0]) != front.index_select(0, e[:, 1]), as_tuple=True)
    on = torch.zeros_like(front)
    on[e[edge, 0], face] = True  # a vertex is on the silhouette when any of its edges is occluding
    on[e[edge, 1], face] = True
    return on.T


def _nearest(landmarks: Tensor, projected: Tensor, allowed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Nearest allowed projected point to each landmark. ``(B, L, 2), (B, C, 2), (B, C) -> ids (B, L), ok (B, L)``.

    Squared distances from the coordinate differences (``torch.cdist`` switches to a less exact
    matrix-product form for more than 25 points, and is slower at two dimensions).
    """
    dx = landmarks[..., 0, None] - projected[:, None, :, 0]
    dy = landmarks[..., 1, None] - projected[:, None, :, 1]
    d = dx * dx + dy * dy  # (B, L, C)
    if allowed is not None:
        d = d.masked_fill(~allowed[:, None], float("inf"))
    best, ids = d.min(-1)
    return ids, torch.isfinite(best)


def contour_correspondences(project: Callable[[Tensor], Tensor], R: Tensor, landmarks: Tensor, terms: ContourTerms,
                            yaw_threshold_deg: float = 7.5, *,
                            project_faces: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Model vertex for each of the 16 contour landmarks (iBUG 0–7, 9–16, in that order).

    Args:
        project: maps positions in ``terms.region`` ``(S,)`` to their current image points ``(B, S, 2)``
            (px); only the contour lists and the current silhouette vertices are ever asked for.
        R: ``(B, 3, 3)`` camera rotation.
        landmarks: ``(B, 68, 2)`` image landmarks (px; nan for missing: such rows get any vertex).
        terms: :func:`contour_terms` tables.
        yaw_threshold_deg: within this yaw of frontal both sides use the contour lists.
        project_faces: optional ``(positions (S,), faces (F,)) -> (F, S, 2)``, ``project`` for a subset of
            the batch; when given, each side's silhouette vertices are projected only for the faces that
            side is turned away in (the same result, cheaper for a batch of varied poses).
    Returns:
        ``(B, 16)`` int64 model vertex ids.
    """
    lm = torch.nan_to_num(landmarks[:, list(CONTOUR_IDS)], nan=0.0)
    B, n_r = R.shape[0], terms.right.numel()
    listed = project(torch.cat([terms.right, terms.left]))
    ids_r = terms.right[_nearest(lm[:, :8], listed[:, :n_r])[0]]
    ids_l = terms.left[_nearest(lm[:, 8:], listed[:, n_r:])[0]]
    s = math.sin(math.radians(yaw_threshold_deg))
    if terms.edge_vertices.numel():
        # the subject's right (iBUG 0–7) turns away for R[2, 0] > s, the left (9–16) for R[2, 0] < −s
        for away, side, ids, cols in ((R[:, 2, 0] > s, terms.side_right, ids_r, slice(0, 8)),
                                      (R[:, 2, 0] < -s, terms.side_left, ids_l, slice(8, 16))):
            faces = torch.nonzero(away).squeeze(1)
            if not faces.numel():
                continue
            every = faces.numel() == B  # (a single face, say): no subsets to take
            on = silhouette_mask(R if every else R[faces], terms) & side  # (F, R)
            union = torch.nonzero(on.any(0)).squeeze(1)  # silhouette vertices any of these faces needs
            if not union.numel():
                continue
            if every or project_faces is None:
                proj = project(union) if every else project(union)[faces]
            else:
                proj = project_faces(union, faces)
            near, ok = _nearest(lm[:, cols] if every else lm[faces, cols], proj, on[:, union])
            if every:
                ids.copy_(torch.where(ok, union[near], ids))
            else:
                ids[faces] = torch.where(ok, union[near], ids[faces])
    return terms.region[torch.cat([ids_r, ids_l], dim=1).reshape(B, 16)]


def flame_dynamic_contour(model: Flame, rotation: Tensor, pose: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """FLAME's dynamic contour (iBUG 0–16) for faces seen by a camera with rotation ``rotation``.

    The head's rotation relative to the view is ``R = rotation · R_global · R_neck`` (camera, then the
    model's global and neck joints when ``pose`` is given); its yaw, measured as RingNet does
    (:func:`~morphable.models.flame.head_yaw`), selects the embedding's row through
    :meth:`Flame.dynamic_contour`. Positive yaw turns the subject's left (+x, iBUG 9–16) away.

    Args:
        model: a :class:`Flame` with a dynamic contour embedding.
        rotation: ``(B, 3, 3)`` camera rotation (model to view frame).
        pose: ``(B, J, 3)`` FLAME pose (axis-angle, radians), or ``None`` (zero pose).
    Returns:
        vertex ids ``(B, 17, 3)`` int64 and barycentric weights ``(B, 17, 3)``: contour point ``i`` is
        ``sum_k weights[b, i, k] · vertices[b, ids[b, i, k]]``.
    """
    head = rotation if pose is None else rotation @ axis_angle_to_matrix(pose[:, 0].to(rotation.dtype))
    full = rotation.new_zeros(rotation.shape[0], model.n_joints, 3)
    full[:, 0] = matrix_to_axis_angle(head)
    if pose is not None:
        full[:, 1] = pose[:, 1]
    return model.dynamic_contour(head_yaw(full))
