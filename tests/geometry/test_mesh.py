import pytest
import torch
import trimesh

from morphable.geometry.mesh import (
    VertexFaceIncidence,
    boundary_edges,
    edge_topology,
    edges,
    face_normals,
    vertex_face_adjacency,
    vertex_normals,
)


def _sphere(subdivisions: int = 2, dtype=torch.float64):
    m = trimesh.creation.icosphere(subdivisions=subdivisions)
    return torch.tensor(m.vertices, dtype=dtype)[None], torch.tensor(m.faces, dtype=torch.int64)


class TestNormals:
    def test_face_normal_of_a_ccw_triangle_points_up_the_right_hand_rule(self):
        v = torch.tensor([[[0.0, 0, 0], [2, 0, 0], [0, 3, 0]]])
        n = face_normals(v, torch.tensor([[0, 1, 2]]))
        assert torch.allclose(n, torch.tensor([[[0.0, 0, 1]]]))
        assert torch.allclose(face_normals(v, torch.tensor([[0, 2, 1]])), -n)

    def test_vertex_normals_of_a_sphere_are_radial(self):
        v, f = _sphere(3)
        n = vertex_normals(v, f)
        radial = v / v.norm(dim=-1, keepdim=True)
        assert (n * radial).sum(-1).min() > 0.999
        assert torch.allclose(n.norm(dim=-1), torch.ones(1, v.shape[1], dtype=v.dtype))

    def test_area_weighting(self):
        # vertex 0 shared by a big triangle in the xy plane and a small one in the xz plane
        v = torch.tensor([[[0.0, 0, 0], [4, 0, 0], [0, 4, 0], [1, 0, 0], [0, 0, -1]]])
        f = torch.tensor([[0, 1, 2], [0, 3, 4]])
        n = vertex_normals(v, f)[0, 0]
        # (0, 0, 16) from the big one (twice its area 8), (0, 1, 0) from the small one
        expected = torch.tensor([0.0, 1.0, 16.0]) / torch.tensor([0.0, 1.0, 16.0]).norm()
        assert torch.allclose(n, expected, atol=1e-6)

    @pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "sparse"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_incidence_path_matches_index_add_path_values_and_gradients(self, compiled, dtype):
        v, f = _sphere(2, dtype)
        v = v * torch.linspace(0.8, 1.2, v.shape[1], dtype=v.dtype)[None, :, None]
        f = torch.cat([f, torch.tensor([[0, 0, 1]])])  # a degenerate face adds nothing
        v2 = torch.cat([v, v.flip(-1), torch.zeros_like(v)]).requires_grad_(True)  # all-zero: the eps clamp
        inc = VertexFaceIncidence(f, v.shape[1])
        w = torch.randn(3, v.shape[1], 3, dtype=v.dtype, generator=torch.Generator().manual_seed(0))
        a = vertex_normals(v2, f)
        (ga,) = torch.autograd.grad((a * w).sum(), v2)
        b = vertex_normals(v2, f, incidence=inc, compiled=compiled)
        (gb,) = torch.autograd.grad((b * w).sum(), v2)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert b.dtype == dtype and torch.allclose(a, b, atol=tol)
        assert torch.allclose(ga[:2], gb[:2], rtol=tol, atol=tol)
        assert torch.equal(b[2], torch.zeros_like(b[2]))

    @pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "sparse"])
    def test_gradcheck(self, compiled):
        v, f = _sphere(0)
        v = (v + 0.05 * torch.randn_like(v)).requires_grad_(True)
        inc = VertexFaceIncidence(f, v.shape[1])
        assert torch.autograd.gradcheck(lambda x: vertex_normals(x, f, incidence=inc, compiled=compiled), (v,))


class TestEdges:
    def test_closed_sphere(self):
        _, f = _sphere(2)
        e = edges(f)
        assert e.shape == (f.shape[0] * 3 // 2, 2)
        assert (e[:, 0] < e[:, 1]).all()
        assert boundary_edges(f).shape == (0, 2)

    def test_quad_boundary(self):
        f = torch.tensor([[0, 1, 2], [0, 2, 3]])
        assert edges(f).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [2, 3]]
        assert sorted(map(tuple, boundary_edges(f).tolist())) == [(0, 1), (0, 3), (1, 2), (2, 3)]

    def test_half_edge_map(self):
        f = torch.tensor([[0, 1, 2], [0, 2, 3]])
        e, h2e, count = edge_topology(f)
        for face in range(2):
            for i in range(3):
                a, b = int(f[face, (i + 1) % 3]), int(f[face, (i + 2) % 3])
                assert sorted((a, b)) == e[h2e[3 * face + i]].tolist()
        assert count[(e == torch.tensor([0, 2])).all(1)].item() == 2

    def test_vertex_face_adjacency_matches_a_loop(self):
        _, f = _sphere(1)
        table = vertex_face_adjacency(f)
        for vtx in range(table.shape[0]):
            expected = [i for i in range(f.shape[0]) if vtx in f[i].tolist()]
            row = table[vtx]
            assert row[row >= 0].tolist() == expected
            assert (row[len(expected):] == -1).all()

    def test_shape_errors(self):
        with pytest.raises(ValueError, match=r"\(F, 3\)"):
            edges(torch.zeros(4, 2, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"\(B, V, 3\)"):
            vertex_normals(torch.zeros(5, 3), torch.zeros(1, 3, dtype=torch.int64))


def test_submesh_against_a_loop():
    """Two quads (four triangles) on six vertices: keeping 0, 1, 3, 4 keeps exactly the left quad."""
    from morphable.geometry.mesh import submesh

    # 0 - 1 - 2
    # | / | / |
    # 3 - 4 - 5
    tri = torch.tensor([[0, 3, 1], [1, 3, 4], [1, 4, 2], [2, 4, 5]])
    cut = submesh(tri, torch.tensor([4, 0, 3, 1, 0]))
    assert cut.vertex_ids.tolist() == [0, 1, 3, 4]
    assert cut.triangle_ids.tolist() == [0, 1]
    assert cut.triangles.tolist() == [[0, 2, 1], [1, 2, 3]]
    assert cut.new_index.tolist() == [0, 1, -1, 2, 3, -1]
    mask = torch.tensor([True, True, True, False, True, True])
    assert submesh(tri, mask).triangle_ids.tolist() == [2, 3]
    # random meshes: compare with a plain Python loop
    g = torch.Generator().manual_seed(0)
    tri = torch.randint(0, 50, (200, 3), generator=g)
    ids = torch.randint(0, 50, (30,), generator=g)
    cut = submesh(tri, ids, num_vertices=60)
    kept = sorted(set(ids.tolist()))
    expected = [[kept.index(v) for v in t] for t in tri.tolist() if all(v in kept for v in t)]
    assert cut.triangles.tolist() == expected and len(cut.new_index) == 60
    assert torch.equal(cut.vertex_ids[cut.triangles], tri[cut.triangle_ids])
    with pytest.raises(ValueError, match="num_vertices"):
        submesh(tri, ids, num_vertices=10)
