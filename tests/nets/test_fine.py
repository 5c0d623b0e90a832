"""FineNet (nets/fine.py): the coarse mesh's maps and the read-back of a displacement map at the vertices
(pixel alignment), displacement along the normals, the network's start and masking, weights files, bad input."""
from __future__ import annotations

import pytest
import torch

import morphable
from morphable.errors import ModelFileError
from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.mesh import displace, vertex_normals
from morphable.nets.fine import (
    BaseMaps,
    FineNet,
    base_maps,
    load_fine,
    save_fine,
    vertex_displacement,
)
from morphable.train import inverse_rendered as ir
from tests.conftest import data_file
from tests.train._coarse_data import synthetic_fit


@pytest.fixture(scope="module")
def face():
    """SFM's face in a 96 px chip: vertices ``(1, V_r, 3)``, the chip camera and a hard renderer."""
    data_file("eos/share/sfm_shape_3448.bin")
    model = morphable.load_model("sfm")
    fit, _ = synthetic_fit(model, seed=3, size=96)
    region = fit["region_vertices"]
    verts = model(identity=fit["identity"][None], expression=fit["expression"][None]).vertices[:, region]
    camera = ScaledOrthographic(fit["scale"], fit["rotation"][None], fit["translation"][None])
    return verts, camera, ir.Renderer(ir.region_triangles(model, region), (96, 96), soft_silhouette=False)


def test_map_read_back_at_the_vertices_is_pixel_aligned(face):
    """A displacement linear in the model's x (0.05 mm per mm) is interpolated linearly by the rasteriser and
    the bilinear read-back, so at the vertices seen away from the outline it comes back almost exactly; half
    a pixel off, the error is 20× larger (a convention slip between the renderer's and the sampler's pixel
    centres would show)."""
    verts, camera, hard = face
    d = 0.05 * verts[..., 0]
    maps = base_maps(hard, verts, camera, d)
    assert maps.mask.sum() > 2000 and maps.visible.sum() > 1500
    assert float(maps.normals[maps.mask][:, 2].min()) > 0  # view frame: +z towards the viewer
    interior = torch.nn.functional.max_pool2d((~maps.mask).float()[:, None], 9, 1, 4)[:, 0] == 0
    px = maps.points.round().long().clamp(0, 95)
    deep = maps.visible & interior[0][px[..., 1], px[..., 0]]
    assert deep.sum() > 1000

    def error(shift: float) -> float:
        moved = BaseMaps(maps.normals, maps.mask, maps.visible, maps.points + torch.tensor([shift, 0.0]), None)
        return float((vertex_displacement(maps.attribute, moved) - d)[deep].abs().mean())

    print(f"read-back error {error(0):.4f} mm, half a pixel off {error(0.5):.4f} mm, |d| {d[deep].abs().mean():.3f}")
    assert error(0.0) < 0.01 and error(0.5) > 20 * error(0.0)
    assert not bool(vertex_displacement(maps.attribute, maps)[~maps.visible].any())  # unseen vertices: 0


def test_displace_moves_vertices_along_their_normals(face):
    verts = face[0]
    d = torch.linspace(-1, 1, verts.shape[1])[None]
    moved = displace(verts, face[2].triangles, d)
    step = moved - verts
    torch.testing.assert_close(step.norm(dim=-1), d.abs(), atol=1e-5, rtol=0)
    n = vertex_normals(verts, face[2].triangles)
    torch.testing.assert_close((step * n).sum(-1), d, atol=1e-5, rtol=0)


def test_network_starts_at_the_coarse_mesh_and_masks_its_output(face):
    verts, camera, hard = face
    torch.manual_seed(0)
    net = FineNet("sfm", 96)
    maps = base_maps(hard, verts, camera)
    chip = torch.rand(1, 96, 96, 3)
    out = net(chip, maps.normals, maps.mask)
    assert out.shape == (1, 96, 96) and not bool(out.any())  # the zero-initialised output layer
    moved, d = net.refine(chip, verts, camera, hard)
    assert torch.equal(moved, verts) and not bool(d.any())
    torch.nn.init.normal_(net.out.weight, std=0.1)
    out = net(chip, maps.normals, maps.mask)
    assert bool(out[maps.mask].ne(0).all()) and not bool(out[~maps.mask].any())


def test_weights_round_trip_and_bad_input(tmp_path, face):
    verts, camera, hard = face
    torch.manual_seed(1)
    net = FineNet("sfm", 96, (8, 16, 24))
    torch.nn.init.normal_(net.out.weight, std=0.1)
    net.scale.fill_(0.4)
    net.eval()
    maps = base_maps(hard, verts, camera)
    chip = torch.rand(1, 96, 96, 3)
    path = tmp_path / "fine-sfm.pt"
    save_fine(net, path, {"command": "morphable train fine -o run"})
    loaded = load_fine(path)
    assert loaded.widths == (8, 16, 24) and loaded.meta["command"] == "morphable train fine -o run"
    torch.testing.assert_close(loaded(chip, maps.normals, maps.mask), net(chip, maps.normals, maps.mask))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="bad.pt: not a readable weights file"):
        load_fine(tmp_path / "bad.pt")
    torch.save({"format": "morphable-coarsenet", "version": 1, "state": {}}, tmp_path / "coarse.pt")
    with pytest.raises(ModelFileError, match="not a FineNet file"):
        load_fine(tmp_path / "coarse.pt")
    with pytest.raises(ValueError, match=r"expected chips \(B, 96, 96, 3\)"):
        net(chip[..., :2], maps.normals, maps.mask)
    with pytest.raises(ValueError, match="expected normals"):
        net(chip, maps.normals[..., :2], maps.mask)
    with pytest.raises(ValueError, match="not divisible by 8"):
        FineNet("sfm", 100)
