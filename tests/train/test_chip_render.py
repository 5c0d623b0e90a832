"""Rendering straight into dlib-aligned chips, checked against dlib-style alignment of a larger render."""
import pytest
import torch

from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import matrix_to_axis_angle
from morphable.identity.alignment import chip_template, extract_face_chips, similarity_transform
from morphable.train.chip_render import ChipRenderer, random_background, random_lighting, random_rotation
from morphable.train.synthetic import draw_synthetic_chips
from tests.fitting._synthetic import real_model


@pytest.fixture(scope="module")
def ict():
    return real_model("ict")


def _faces(model, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = model(identity=torch.randn(B, model.n_identity, generator=g)).vertices
    return V, random_rotation(B, g), random_lighting(B, g), g


def test_camera_is_the_least_squares_similarity_onto_the_template(ict):
    cr = ChipRenderer(ict)
    V, R, _, _ = _faces(ict)
    cam = cr.camera(V, R)
    # independent route: orthographic projection (unit scale) then Umeyama onto dlib's template
    view = ict.landmarks(V)[:, cr.template_ids] @ R.transpose(1, 2)
    q = torch.stack([view[..., 0], -view[..., 1]], -1)
    _, template = chip_template(68, 150, 0.25)
    ids, _ = chip_template(68, 150, 0.25)
    assert cr.template_ids == ids  # ICT defines every template point
    M = similarity_transform(q, template.float().expand(3, -1, -1))
    expected = q @ M[:, :, :2].transpose(1, 2) + M[:, None, :, 2]
    got = cam.project(ict.landmarks(V))[:, cr.template_ids]
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


def test_chip_matches_dlib_alignment_of_a_larger_full_resolution_render(ict):
    cr = ChipRenderer(ict)  # decimated to 8k triangles
    full = ChipRenderer(ict, max_triangles=None)
    assert len(cr.triangles) <= 8200 < len(full.triangles)
    assert set(cr.vertex_ids.tolist()) <= set(full.vertex_ids.tolist())  # a subset: the model stays exact
    V, R, lighting, g = _faces(ict, B=2, seed=1)
    background = torch.full((2, 150, 150, 3), 0.3)
    chips = cr(V, R, torch.full((2, len(cr.vertex_ids), 3), 0.6), lighting, background)
    # the same faces, every triangle, drawn into a 600 px photo by an arbitrary camera, then cut out by
    # dlib's alignment (extract_face_chips)
    from morphable.render.renderer import Renderer

    full.renderer = Renderer(full.triangles, (600, 600), soft_silhouette=False)
    cam = ScaledOrthographic(torch.tensor([2.2, 1.8]), matrix_to_axis_angle(R), torch.tensor([[300.0, 320.0], [280.0, 300.0]]))
    full.camera = lambda vertices, rotation: cam
    photo = full(V, R, torch.full((2, len(full.vertex_ids), 3), 0.6), lighting, torch.full((2, 600, 600, 3), 0.3))
    cut = extract_face_chips(photo, cam.project(ict.landmarks(V)))
    inside = (chips - 0.3).abs().sum(-1) > 0.05  # face pixels of the direct chip
    err = (chips - cut).abs().mean(-1)[inside].mean()
    assert float(err) < 0.03


def test_lighting_and_backgrounds_are_deterministic_and_in_range():
    a = random_lighting(4, torch.Generator().manual_seed(3))
    b = random_lighting(4, torch.Generator().manual_seed(3))
    assert torch.equal(a.positions, b.positions) and torch.equal(a.colors, b.colors)
    dist = a.positions.norm(dim=-1)
    assert ((dist >= 2000) & (dist <= 4000)).all() and (a.positions[..., 2] > 0).all()  # in front, metres away
    bg = random_background(2, torch.Generator().manual_seed(0), size=32)
    assert bg.shape == (2, 32, 32, 3) and bg.min() >= 0 and bg.max() <= 1


def test_synthetic_chips_carry_their_truth(ict):
    from morphable.fitting.albedo import LowFrequencyAlbedo

    cr = ChipRenderer(ict)
    space = LowFrequencyAlbedo(ict.mean[cr.vertex_ids], cr.triangles, None, modes=2)
    s = draw_synthetic_chips(cr, space, 2, torch.Generator().manual_seed(0))
    t = draw_synthetic_chips(cr, space, 2, torch.Generator().manual_seed(0))
    assert torch.equal(s.chips, t.chips) and torch.equal(s.identity, t.identity)
    assert s.chips.shape == (2, 150, 150, 3) and s.albedo.shape == (2, 3 + 6)
    # landmarks land on the template (least squares: a few px of shape mismatch, not more)
    _, template = chip_template(68, 150, 0.25)
    err = (s.landmarks[:, cr.template_ids] - template.float()).norm(dim=-1).mean()
    assert float(err) < 6.0
