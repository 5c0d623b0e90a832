"""CoarseNet (nets/coarse.py): the output layout's encode/decode, ground-truth parameters re-rendering the
synthesized chip, the albedo projection, weights files and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from morphable.errors import ModelFileError
from morphable.nets.coarse import (CoarseNet, albedo_basis, coarse_layout, decode, encode, load_coarse,
                                   project_albedo, round_to_stored, save_coarse)
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


@pytest.mark.parametrize("head", ["flatten", "pool"])
def test_weights_round_trip_and_bad_files(tmp_path, head):
    layout = coarse_layout(5, 2, 3)
    net = CoarseNet("sfm", layout, 32, head)
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    net.mean.normal_()
    net.eval()
    x = torch.rand(2, 32, 32, 3)
    save_coarse(net, tmp_path / "c.pt", {"command": "x"})
    back = load_coarse(tmp_path / "c.pt")
    # convolution and linear weights are stored as float16: the file computes what the rounded net does
    assert not torch.equal(back(x), net(x))
    round_to_stored(net)
    torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
    stored = torch.load(tmp_path / "c.pt", weights_only=True)["state"]
    assert stored["head.0.weight"].dtype == torch.float16 and stored["features.1.running_var"].dtype == torch.float32
    assert back.layout == layout and back.meta == {"command": "x"} and back.size == 32 and back.head_kind == head
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="bad.pt"):
        load_coarse(tmp_path / "bad.pt")
    torch.save({"format": "morphable-coarsenet", "version": 1, "model_name": "sfm", "size": 32,
                "layout": [["identity", 7]], "state": net.state_dict()}, tmp_path / "wrong.pt")
    with pytest.raises(ModelFileError, match="wrong.pt.*inconsistent"):
        load_coarse(tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"expected chips \(B, 32, 32, 3\)"):
        net(torch.rand(2, 3, 32, 32))


def test_heads_see_the_last_map_whole_or_averaged(tmp_path):
    """``flatten`` feeds the hidden layer the whole last map (3 × 3 × 256 for 96 px; 1 × 1 for 32 px, where
    the two heads coincide in size); a file from before the choice (no ``head`` entry) is a ``pool`` net."""
    layout = coarse_layout(5, 2, 3)
    assert CoarseNet("sfm", layout, 96, "flatten").head[0].in_features == 9 * 256
    assert CoarseNet("sfm", layout, 96, "pool").head[0].in_features == 256
    assert CoarseNet("sfm", layout, 100, "flatten").head[0].in_features == 16 * 256  # sides 50 25 25 13 13 7 4
    flat = CoarseNet("sfm", layout, 96, "flatten").eval()
    x = torch.rand(1, 96, 96, 3)
    feats = flat.features(((x.permute(0, 3, 1, 2) - 0.5) / 0.25).contiguous(memory_format=torch.channels_last))
    assert feats.shape == (1, 9 * 256)
    pool = CoarseNet("sfm", layout, 96, "pool").eval()
    save_coarse(pool, tmp_path / "p.pt")
    data = torch.load(tmp_path / "p.pt", weights_only=True)
    del data["head"]
    torch.save(data, tmp_path / "old.pt")
    assert load_coarse(tmp_path / "old.pt").head_kind == "pool"
    with pytest.raises(ValueError, match="head must be one of"):
        CoarseNet("sfm", layout, 96, "max")


def test_dlib_trunk_is_fine_tuned_saved_and_loaded(tmp_path):
    """``trunk="dlib"``: the map after ``blocks`` residual blocks of dlib's network (its frozen part shared, the last
    ``tune`` blocks trainable), standardised, into the head. The tuned kernels get gradients and are written (as
    float16) with the head, the frozen network is not; the file reloads to the same outputs; a file from before
    the trunk choice is the small trunk, 256 wide; the dlib map cannot be pooled."""
    from morphable.identity import DlibFaceNet

    layout = coarse_layout(5, 2, 3)
    dlib = DlibFaceNet()
    net = CoarseNet("sfm", layout, 64, trunk="dlib", hidden=16, blocks=4, tune=2, net=dlib)
    assert net.head[0].in_features == 64 * 7 * 7 and net.trunk.raw_shape == (32, 14, 14)  # feature_map_shape(4, 64)
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    x = torch.rand(2, 64, 64, 3)
    net(x).sum().backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in net.trunk.tuned.weight)
    assert all(b.grad is None for b in dlib.buffers())
    net.eval()
    round_to_stored(net)
    save_coarse(net, tmp_path / "d.pt")
    stored = torch.load(tmp_path / "d.pt", weights_only=True)["state"]
    assert not any(k.startswith("trunk.net.") for k in stored)
    assert stored["trunk.tuned.weight.0"].dtype == torch.float16 and stored["trunk.std"].dtype == torch.float32
    back = load_coarse(tmp_path / "d.pt")
    assert (back.trunk_name, back.hidden, back.trunk.blocks, back.trunk.tune) == ("dlib", 16, 4, 2)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
    small = CoarseNet("sfm", layout, 32)
    save_coarse(small, tmp_path / "s.pt")
    data = torch.load(tmp_path / "s.pt", weights_only=True)
    for key in ("trunk", "hidden", "blocks", "tune"):
        del data[key]
    torch.save(data, tmp_path / "old.pt")
    old = load_coarse(tmp_path / "old.pt")
    assert (old.trunk_name, old.hidden) == ("small", 256)
    with pytest.raises(ValueError, match="flattened"):
        CoarseNet("sfm", layout, 64, "pool", trunk="dlib", net=dlib)
    with pytest.raises(ValueError, match="trunk must be one of"):
        CoarseNet("sfm", layout, 64, trunk="vgg")


def _oracle_net(sfm, fit, photo_landmarks, size=96, head="flatten"):
    """A CoarseNet whose output is constant: the fit's parameters in the chip that :func:`photo_chips` cuts
    around ``photo_landmarks`` (computed with the training data's own :func:`crop_camera`)."""
    from morphable.geometry.camera import ScaledOrthographic
    from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_euler

    layout = coarse_layout(sfm.n_identity, sfm.n_expression)
    box = ir.chip_box(photo_landmarks[sfm.landmark_mask].double(), 0.0, ir.VariantSettings(size=size))
    camera = ir.crop_camera(ScaledOrthographic(fit["scale"], fit["rotation"][None], fit["translation"][None]),
                            box, size)
    ypr = matrix_to_euler(axis_angle_to_matrix(camera.rotation))
    basis, _ = albedo_basis(sfm)
    y = encode(layout, size, ypr=ypr, translation=camera.translation, scale=camera.scale,
               identity=fit["identity"][None], expression=fit["expression"][None],
               albedo_coefficients=torch.zeros(1, basis.shape[1], 3), light=fit["light"][None])
    net = CoarseNet("sfm", layout, size, head).eval()
    net.mean.copy_(y[0])
    return net


def test_fit_with_coarse_maps_the_chip_prediction_to_photo_pixels(sfm):
    """``--method coarse``: a network that predicts a synthetic photo's true parameters in the chip cut around
    its landmarks yields a fit whose landmarks land on the photo's true ones (the chip box, the chip → photo
    camera and the landmark projection together), the true shape, and ``coarse+fit`` refits from there."""
    from morphable.geometry.align import aligned_error
    from morphable.nets.coarse import chip_camera_to_photo, fit_with_coarse

    from morphable.fitting.landmarks import fit_landmarks

    fit, photo = synthetic_fit(sfm, seed=5, size=200)
    ok = sfm.landmark_mask
    lm = torch.where(ok[:, None], fit["landmarks"].double(), float("nan"))  # a detector's: the model's 50 points
    net = _oracle_net(sfm, fit, lm)
    out = fit_with_coarse(sfm, net, [photo], lm[None].float(), method="coarse")
    assert float((out.landmarks_fitted[0, ok] - lm[ok]).norm(dim=-1).max()) < 1e-2  # px
    assert torch.isnan(out.landmarks_fitted[0, ~ok]).all()
    torch.testing.assert_close(out.identity[0], fit["identity"].to(out.identity))
    torch.testing.assert_close(out.camera.scale, fit["scale"].to(out.camera.scale), rtol=1e-5, atol=0)
    assert float(out.rms_px[0]) < 1e-2
    truth = sfm(identity=fit["identity"][None], expression=fit["expression"][None]).vertices
    assert float(aligned_error(out.vertices, truth)[0]) < 1e-3  # mm
    # coarse+fit: the landmark fit's prior centred at the (here true) identity keeps it (0.03 mm), where the
    # prior at the mean face gives 2.7 mm
    refit = fit_with_coarse(sfm, net, [photo], lm[None].float(), method="coarse+fit")
    plain = fit_landmarks(sfm, lm[None].float())
    assert float(aligned_error(refit.vertices, truth)[0]) < 0.2 < 0.1 * float(aligned_error(plain.vertices, truth)[0])
    # chip_camera_to_photo undoes crop_camera for any box
    from morphable.geometry.camera import ScaledOrthographic
    cam = ScaledOrthographic(torch.tensor([0.7, 1.1]), torch.randn(2, 3), torch.randn(2, 2) * 30)
    boxes = [(12.5, -3.0, 140.0), (0.0, 40.0, 77.0)]
    chip = [ir.crop_camera(ScaledOrthographic(cam.scale[i:i + 1], cam.rotation[i:i + 1], cam.translation[i:i + 1]),
                           boxes[i], 96) for i in range(2)]
    back = chip_camera_to_photo(ScaledOrthographic(torch.cat([c.scale for c in chip]), cam.rotation,
                                                   torch.cat([c.translation for c in chip])), boxes, 96)
    torch.testing.assert_close(back.translation, cam.translation, rtol=0, atol=1e-4)
    torch.testing.assert_close(back.scale, cam.scale)


def test_fit_with_coarse_bad_input(sfm):
    from morphable.nets.coarse import fit_with_coarse, shipped_coarse

    net = CoarseNet("sfm", coarse_layout(sfm.n_identity, sfm.n_expression), 96).eval()
    photo = np.zeros((120, 120, 3), np.uint8)
    with pytest.raises(ValueError, match="method must be one of"):
        fit_with_coarse(sfm, net, [photo], torch.zeros(1, 68, 2), method="regress")
    with pytest.raises(ValueError, match="at least two landmarks"):
        fit_with_coarse(sfm, net, [photo], torch.full((1, 68, 2), float("nan")))
    other = CoarseNet("ict", coarse_layout(100, 53), 96)
    with pytest.raises(ValueError, match="not this model's"):
        fit_with_coarse(sfm, other, [photo], torch.zeros(1, 68, 2))
    with pytest.raises(ModelFileError, match="no shipped CoarseNet for model 'ict'"):
        shipped_coarse("ict")


def test_refining_stage_starts_as_the_first_and_is_saved_and_loaded(tmp_path, sfm):
    """``refine_blocks``: the second stage samples dlib's map at the first estimate's projected landmarks. It starts
    as the identity; :meth:`project_landmarks` (landmarks kept as mean + per-coefficient offsets) agrees with the
    model's own landmarks projected by the decoded camera; the first stage learns from its own output only; the
    file keeps the refiner without dlib's frozen network and reloads to the same outputs; a refiner needs the dlib
    trunk and as many points as the model defines."""
    from morphable.identity import DlibFaceNet

    layout = coarse_layout(sfm.n_identity, sfm.n_expression, 3)
    n_points = int(sfm.landmark_mask.sum())
    dlib = DlibFaceNet()
    net = CoarseNet("sfm", layout, 64, trunk="dlib", hidden=16, blocks=4, tune=2, net=dlib, refine_blocks=2,
                    refine_tune=1, refine_hidden=8, refine_points=n_points)
    net.set_landmarks(sfm)
    g = torch.Generator().manual_seed(3)
    torch.nn.init.normal_(net.head[-1].weight, std=0.05, generator=g)
    net.mean[layout.slice("log_scale")] = float(np.log(2.0 * 100 / 64))  # 2 px/mm, the face inside the chip
    net.mean[layout.slice("translation")] = 0.5
    x = torch.rand(2, 64, 64, 3, generator=g)
    first, refined = net.stages(x)
    assert torch.equal(first, refined)  # the refiner's last layer starts at zero
    y = net.mean + net.std * first.detach()
    p = decode(layout, 64, y)
    full = sfm(identity=p.identity, expression=p.expression).vertices
    want = p.camera.project(sfm.landmarks(full))[:, sfm.landmark_mask]
    torch.testing.assert_close(net.project_landmarks(y), want, rtol=0, atol=1e-4)
    torch.nn.init.normal_(net.refiner.mlps[0][-1].weight, std=0.1, generator=g)
    net.stages(x)[1].square().sum().backward()  # the refined output's gradient stops at the first estimate
    assert all(w.grad is None for w in net.trunk.tuned.weight) and net.head[0].weight.grad is None
    assert net.refiner.mlps[0][0].weight.grad.abs().sum() > 0
    net.eval()
    round_to_stored(net)
    save_coarse(net, tmp_path / "r.pt")
    stored = torch.load(tmp_path / "r.pt", weights_only=True)
    assert not any(k.startswith(("trunk.net.", "refiner.trunk.net.")) for k in stored["state"])
    assert (stored["refine_blocks"], stored["refine_tune"], stored["refine_points"]) == (2, 1, n_points)
    back = load_coarse(tmp_path / "r.pt", precision="float32")
    assert back.refiner.trunk.net is back.trunk.net  # one dlib network for both stages
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
        assert not torch.equal(net(x), net.mean + net.std * net.stages(x)[0])
    # a refiner reading dlib's map after the same frozen blocks as the first stage reuses their output
    same = CoarseNet("sfm", layout, 64, trunk="dlib", hidden=16, blocks=4, tune=2, net=dlib, refine_blocks=3,
                     refine_tune=1, refine_hidden=8, refine_points=n_points)
    same.set_landmarks(sfm)
    torch.nn.init.normal_(same.refiner.mlps[0][-1].weight, std=0.1, generator=g)
    with torch.no_grad():
        first, refined = same.stages(x)
        points = same.project_landmarks(same.mean + same.std * first)
        torch.testing.assert_close(refined, first + same.refiner(x, points, first), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="needs the dlib trunk"):
        CoarseNet("sfm", layout, 64, refine_blocks=2)
    wrong = CoarseNet("sfm", layout, 64, trunk="dlib", blocks=4, tune=2, net=dlib, refine_blocks=2, refine_points=68)
    with pytest.raises(ValueError, match="reads 68 landmarks"):
        wrong.set_landmarks(sfm)


def test_refining_cascade_stages_and_stop_32_files(tmp_path, sfm):
    """``refine_stages=2``: the third output is the second corrected by the second perceptron, sampled where the
    second estimate puts the landmarks; its loss trains that perceptron alone. The file records the stages and
    reloads to the same outputs; a one-stage file from stop 32 (perceptron ``refiner.mlp.``, no
    ``refine_stages``) loads as a one-stage refiner."""
    from morphable.identity import DlibFaceNet

    layout = coarse_layout(sfm.n_identity, sfm.n_expression, 3)
    n_points = int(sfm.landmark_mask.sum())
    g = torch.Generator().manual_seed(5)
    net = CoarseNet("sfm", layout, 64, trunk="dlib", hidden=16, blocks=4, tune=2, net=DlibFaceNet(), refine_blocks=2,
                    refine_hidden=8, refine_points=n_points, refine_stages=2)
    net.set_landmarks(sfm)
    net.mean[layout.slice("log_scale")] = float(np.log(2.0 * 100 / 64))
    net.mean[layout.slice("translation")] = 0.5
    for mlp in net.refiner.mlps:
        torch.nn.init.normal_(mlp[-1].weight, std=0.1, generator=g)
    x = torch.rand(2, 64, 64, 3, generator=g)
    outputs = net.stages(x)
    assert len(outputs) == 3
    with torch.no_grad():
        second = outputs[1].detach()
        fmap = net.refiner.feature_map(x)
        want = second + net.refiner.correct(1, fmap, net.project_landmarks(net.mean + net.std * second), second)
    torch.testing.assert_close(outputs[2].detach(), want, rtol=0, atol=1e-6)
    outputs[2].square().sum().backward()
    assert net.refiner.mlps[1][0].weight.grad.abs().sum() > 0
    assert net.refiner.mlps[0][0].weight.grad is None and net.head[0].weight.grad is None
    net.eval()
    round_to_stored(net)
    save_coarse(net, tmp_path / "two.pt")
    back = load_coarse(tmp_path / "two.pt", precision="float32")
    assert back.refiner.stages == 2
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x), rtol=0, atol=0)
    one = CoarseNet("sfm", layout, 64, trunk="dlib", hidden=16, blocks=4, tune=2, net=net.trunk.net, refine_blocks=2,
                    refine_hidden=8, refine_points=n_points)
    one.set_landmarks(sfm)
    torch.nn.init.normal_(one.refiner.mlps[0][-1].weight, std=0.1, generator=g)
    one.eval()
    round_to_stored(one)
    save_coarse(one, tmp_path / "one.pt")
    data = torch.load(tmp_path / "one.pt", weights_only=True)
    del data["refine_stages"]
    data["state"] = {k.replace("refiner.mlps.0.", "refiner.mlp."): v for k, v in data["state"].items()}
    torch.save(data, tmp_path / "stop32.pt")
    old = load_coarse(tmp_path / "stop32.pt", precision="float32")
    assert old.refiner.stages == 1
    with torch.no_grad():
        torch.testing.assert_close(old(x), one(x), rtol=0, atol=0)


def test_large_linear_weights_are_stored_as_int8_per_row(tmp_path):
    """Linear weights of at least INT8_MIN_SIZE entries are written as int8 with a scale per row: each entry is
    off by at most half its row's step (max |row| / 127), the rounded network is what the file computes, and its
    output moves by a small fraction of the output's spread."""
    from morphable.nets.coarse import INT8_MIN_SIZE
    from morphable.nets.weights import dequantize_rows, quantize_rows

    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 50, generator=g) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 0.0, 3.0])[:, None]
    q, a = quantize_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127 and a.shape == (6,)
    steps = w.abs().amax(1) / 127
    assert ((dequantize_rows(q, a) - w).abs() <= steps[:, None] / 2 + 1e-7 * w.abs()).all()
    assert torch.equal(q[4], torch.zeros(50, dtype=torch.int8))  # a zero row stays zero
    assert (q.abs().amax(1)[[0, 1, 2, 3, 5]] == 127).all()  # each row uses the whole range

    layout = coarse_layout(5, 2, 3)
    net = CoarseNet("sfm", layout, 96)  # the small trunk's head reads 3 × 3 × 256: 256 × 2304 weights
    assert net.head[0].weight.numel() >= INT8_MIN_SIZE > net.head[-1].weight.numel()
    torch.nn.init.normal_(net.head[-1].weight, std=0.1, generator=g)
    net.eval()
    x = torch.rand(4, 96, 96, 3, generator=g)
    with torch.no_grad():
        before = net(x)
    round_to_stored(net)
    save_coarse(net, tmp_path / "q.pt")
    data = torch.load(tmp_path / "q.pt", weights_only=True)
    assert data["state"]["head.0.weight"].dtype == torch.int8 and data["scales"]["head.0.weight"].shape == (256,)
    assert data["state"]["head.2.weight"].dtype == torch.float16 and "head.2.weight" not in data["scales"]
    back = load_coarse(tmp_path / "q.pt")
    with torch.no_grad():
        after = back(x)
        torch.testing.assert_close(after, net(x), rtol=0, atol=0)
    assert 0 < float((after - before).abs().max()) < 0.02 * float(before.std())
