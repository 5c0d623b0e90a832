"""Tables that depend on a mesh's triangle list only, built once per distinct triangle list.

A renderer needs, besides the vertex positions of each frame, three tables of the triangles alone: the
half-edge pairing for the soft silhouette (:class:`~morphable.render.silhouette.EdgeTopology`), the
rasteriser's sorted corner ids (``rasterize._sorted_corners``) and the sparse vertex–face incidence for
vertex normals (:class:`~morphable.geometry.mesh.VertexFaceIncidence`). Building them costs tens of
milliseconds for a 50k-triangle head, more than a render; fits that make a renderer per image size and
training code that makes one per sample would pay it each time. :func:`mesh_topology` returns one shared
:class:`MeshTopology` per triangle *content* (keyed by a digest of the ids, so equal copies share it and
a tensor modified in place gets a new one), each table built on first use.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

from torch import Tensor

from morphable.geometry.mesh import VertexFaceIncidence
from morphable.render.rasterize import _sorted_corners
from morphable.render.silhouette import EdgeTopology

CACHE_SIZE = 16  # distinct triangle lists kept (least recently used dropped first)
_CACHE: "OrderedDict[tuple, MeshTopology]" = OrderedDict()


class MeshTopology:
    """The per-topology tables of one ``(F, 3)`` int64 triangle list, each built on first use."""

    def __init__(self, triangles: Tensor):
        self.triangles = triangles
        self._edges: EdgeTopology | None = None
        self._corners: tuple[list[Tensor], Tensor] | None = None
        self._incidence: dict[int, VertexFaceIncidence] = {}

    @property
    def edges(self) -> EdgeTopology:
        """Half-edge pairing for :func:`~morphable.render.silhouette.soft_silhouette`."""
        if self._edges is None:
            self._edges = EdgeTopology.build(self.triangles)
        return self._edges

    @property
    def sorted_corners(self) -> tuple[list[Tensor], Tensor]:
        """The rasteriser's canonical corner order (``rasterize._sorted_corners``)."""
        if self._corners is None:
            self._corners = _sorted_corners(self.triangles)
        return self._corners

    def incidence(self, num_vertices: int) -> VertexFaceIncidence:
        """Vertex–face incidence for meshes of ``num_vertices`` vertices (for ``vertex_normals``)."""
        if num_vertices not in self._incidence:
            self._incidence[num_vertices] = VertexFaceIncidence(self.triangles, num_vertices)
        return self._incidence[num_vertices]


def mesh_topology(triangles: Tensor) -> MeshTopology:
    """The shared :class:`MeshTopology` of ``triangles`` ``(F, 3)`` int64 (cached by content and device)."""
    digest = hashlib.blake2b(triangles.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
    key = (tuple(triangles.shape), str(triangles.device), digest)
    topo = _CACHE.get(key)
    if topo is None:
        topo = _CACHE[key] = MeshTopology(triangles.detach().clone())
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return topo
