"""CoarseNet (nets/coarse.py): the output layout's encode/decode, ground-truth parameters re-rendering the
synthesized chip, the albedo projection, weights files and bad input."""
from __future__ import annotations

import pytest
import torch

from morphable.errors import ModelFileError
from morphable.nets.coarse import (CoarseNet, albedo_basis, coarse_layout, decode, encode, load_coarse,
                                   project_albedo, save_coarse)
from morphable.train import inverse_rendered as ir
from tests.train._coarse_data import synthetic_fit


def test_ground_truth_parameters_rerender_the_chip(sfm):
    """A synthesized chip's ground truth, through the network's flat layout (encode → decode), renders the
    chip's face again: pose, scale and translation are bookkept in the chip's pixels."""
    fit, photo = synthetic_fit(sfm, seed=3)
    settings = ir.VariantSettings()
    g = torch.Generator().manual_seed(0)
    rows = [ir.render_variant(sfm, fit, photo, ir.draw_variant(sfm, fit, g, settings), settings) for _ in range(2)]
    gt = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    basis, region = albedo_basis(sfm)
    coeffs = torch.randn(2, basis.shape[1], 3)
    layout = coarse_layout(sfm.n_identity, sfm.n_expression)
    y = encode(layout, 96, ypr=gt["ypr"], translation=gt["translation"], scale=gt["scale"], identity=gt["identity"],
               expression=gt["expression"], albedo_coefficients=coeffs, light=gt["light"])
    assert y.shape == (2, layout.size)
    p = decode(layout, 96, y)
    torch.testing.assert_close(p.camera.rotation, gt["rotation"], atol=1e-5, rtol=0)
    torch.testing.assert_close(p.camera.scale, gt["scale"])
    torch.testing.assert_close(p.albedo_coefficients, coeffs)
    torch.testing.assert_close(p.light, gt["light"])
    verts = sfm(identity=p.identity, expression=p.expression).vertices[:, region]
    renderer = ir.Renderer(ir.region_triangles(sfm, region), (96, 96))
    out = renderer(verts, p.camera, colors=fit["albedo"][None].expand(2, -1, -1), sh=p.light)
    chips = gt["images"].float() / 255
    inside = out.alpha >= 1
    err = (out.image - chips).abs().max(-1).values[inside]
    assert inside.sum() > 2 * 1500
    assert float(err.max()) < 2.5 / 255  # uint8 rounding (and a few pixels' float order), nothing more
    # the projected model landmarks are the stored ones
    lm = p.camera.project(sfm.landmarks(sfm(identity=p.identity, expression=p.expression).vertices))
    ok = sfm.landmark_mask
    torch.testing.assert_close(lm[:, ok], gt["landmarks"][:, ok], atol=1e-3, rtol=0)


def test_albedo_projection_recovers_albedos_in_the_span(sfm):
    basis, _ = albedo_basis(sfm, 8)
    assert basis.shape[1] == 9 and torch.allclose(basis[:, 0], torch.ones(()))
    c = torch.randn(2, 9, 3, dtype=torch.float64) * 0.1
    albedo = basis.double() @ c
    torch.testing.assert_close(project_albedo(albedo, basis), c, atol=1e-8, rtol=0)
    # and leaves the orthogonal rest out: the residual is orthogonal to the basis
    noise = torch.randn(2, basis.shape[0], 3, dtype=torch.float64)
    rest = noise - basis.double() @ project_albedo(noise, basis)
    assert float((basis.double().T @ rest).abs().max()) < 1e-8 * float(noise.abs().sum())


def test_weights_round_trip_and_bad_files(tmp_path):
    layout = coarse_layout(5, 2, 3)
    net = CoarseNet("sfm", layout, 32)
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    net.mean.normal_()
    net.eval()
    x = torch.rand(2, 32, 32, 3)
    save_coarse(net, tmp_path / "c.pt", {"command": "x"})
    back = load_coarse(tmp_path / "c.pt")
    torch.testing.assert_close(back(x), net(x))
    assert back.layout == layout and back.meta == {"command": "x"} and back.size == 32
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="bad.pt"):
        load_coarse(tmp_path / "bad.pt")
    torch.save({"format": "morphable-coarsenet", "version": 1, "model_name": "sfm", "size": 32,
                "layout": [["identity", 7]], "state": net.state_dict()}, tmp_path / "wrong.pt")
    with pytest.raises(ModelFileError, match="wrong.pt.*inconsistent"):
        load_coarse(tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"expected chips \(B, 32, 32, 3\)"):
        net(torch.rand(2, 3, 32, 32))
