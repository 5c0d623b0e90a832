"""Inverse-rendered training data (train/inverse_rendered.py): determinism, the chip camera / crop agreeing
with the photo, the cache and manifest, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from morphable.errors import InputError
from morphable.geometry.rotation import axis_angle_to_matrix, matrix_to_euler
from morphable.train import inverse_rendered as ir
from tests.train._coarse_data import synthetic_fit


@pytest.fixture(scope="module")
def fit_and_photo(sfm):
    return synthetic_fit(sfm, seed=1)


def test_variants_are_deterministic_per_seed(sfm, fit_and_photo):
    fit, photo = fit_and_photo
    a = ir.synthesize_variants(sfm, fit, photo, 2, seed=5)
    b = ir.synthesize_variants(sfm, fit, photo, 2, seed=5)
    c = ir.synthesize_variants(sfm, fit, photo, 2, seed=6)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(a["images"], c["images"])
    assert a["images"].shape == (2, 96, 96, 3) and a["images"].dtype == torch.uint8


def test_variant_with_the_fits_own_parameters_reproduces_the_photo(sfm, fit_and_photo):
    """Re-rendering the fit with its own pose, identity, expression and light (no jitter) gives the photo's
    own chip on the face, and the chip camera (:func:`crop_camera`) agrees with the crop of the photo
    (:func:`crop_photo`) to a fraction of a pixel: moving the camera by a quarter pixel either way only
    raises the colour error (the albedo is striped every 18 mm, so misplacement shows)."""
    fit, photo = fit_and_photo
    settings = ir.VariantSettings(identity_jitter=0.0, box_scale_jitter=0.0, box_shift_jitter=0.0)
    ypr = matrix_to_euler(axis_angle_to_matrix(fit["rotation"][None]))[0]
    own = {"box_scale": torch.tensor(0.0), "ypr": ypr, "identity": fit["identity"], "expression": fit["expression"],
           "light": fit["light"], "shift": torch.zeros(2)}
    out = ir.render_variant(sfm, fit, photo, own, settings)
    region = fit["region_vertices"]
    verts = sfm(identity=fit["identity"][None], expression=fit["expression"][None]).vertices
    photo_cam = ir.ScaledOrthographic(fit["scale"], fit["rotation"][None], fit["translation"][None])
    box = ir.chip_box(photo_cam.project(sfm.landmarks(verts))[0][sfm.landmark_mask], 0.0, settings)
    reference = torch.from_numpy(ir.crop_photo(photo, box, 96)).float() / 255
    chip_cam = ir.crop_camera(photo_cam, box, 96)
    # the new face was already centred: the recentring moved it by well under a pixel
    torch.testing.assert_close(out["translation"], chip_cam.translation[0], atol=0.6, rtol=0)
    renderer = ir.Renderer(ir.region_triangles(sfm, region), (96, 96))

    def error(image, camera):  # mean colour difference over the face's interior in the chip
        alpha = renderer(verts[:, region], camera, colors=torch.ones(1, len(region), 3)).alpha[0]
        interior = torch.nn.functional.max_pool2d((alpha < 1).float()[None, None], 5, 1, 2)[0, 0] == 0
        assert interior.sum() > 1500
        return float((image - reference).abs().mean(-1)[interior].mean())

    chip = out["images"].float() / 255
    err, one_px = error(chip, chip_cam), error(chip.roll(1, dims=1), chip_cam)
    print(f"own-parameter chip vs the photo's chip: {err:.4f}, one pixel off: {one_px:.4f}")
    assert err < 0.03 and err < 0.5 * one_px
    with torch.no_grad():
        errs = {}
        for d in ((0.0, 0.0), (0.25, 0.0), (-0.25, 0.0), (0.0, 0.25), (0.0, -0.25)):
            cam = ir.ScaledOrthographic(chip_cam.scale, chip_cam.rotation, chip_cam.translation + torch.tensor([d]))
            image = renderer(verts[:, region], cam, colors=fit["albedo"][None], sh=fit["light"][None]).image[0]
            errs[d] = error(image, chip_cam)
    assert min(errs, key=errs.get) == (0.0, 0.0), errs


@pytest.mark.parametrize("box_scale, shift", [(0.0, (0.0, 0.0)), (1.0, (6.0, -4.0)), (-1.0, (-5.0, 3.0))])
def test_detector_framed_variant_is_the_detector_crop_of_its_own_landmarks(sfm, fit_and_photo, box_scale, shift):
    """``framing="detector"``: cutting the chip again by the localiser's inference path (:func:`landmark_box` of
    the variant's landmarks, :func:`crop_faces`) finds the chip itself, moved by ``shift`` and scaled by the box
    jitter (a box ``1 + 0.1 · box_scale`` times the rule's side made the chip, so the rule's crop is that much
    smaller), and the same pixels where the jitter is zero."""
    from morphable.nets.stn_localiser import crop_faces, landmark_box

    fit, photo = fit_and_photo
    S = 120
    settings = ir.VariantSettings(size=S, framing="detector", box_scale_jitter=0.1)
    variant = ir.draw_variant(sfm, fit, torch.Generator().manual_seed(3), settings)
    variant.update(box_scale=torch.tensor(box_scale), shift=torch.tensor(shift))
    out = ir.render_variant(sfm, fit, photo, variant, settings)
    chip = out["images"].float() / 255
    crop, frame = crop_faces([chip], landmark_box(out["landmarks"][None].double()), S)
    step, offset = float(frame.step[0]), frame.offset[0]
    print(f"box_scale {box_scale}, shift {shift}: step {step:.4f}, offset {offset.tolist()}")
    assert step == pytest.approx(1 / (1 + 0.1 * box_scale), abs=1 / S)  # the side is rounded to whole px
    # the rule's box centre is the chip's centre + shift; its crop corner is rounded to whole px
    torch.testing.assert_close(offset.float(), torch.tensor(shift) + (1 - step) * S / 2, atol=0.6, rtol=0)
    if box_scale == 0 and shift == (0.0, 0.0):
        moved = float((chip.roll(1, dims=1) - chip).abs().mean())
        same = float((crop[0] - chip).abs().mean())
        assert same < 0.1 * moved, (same, moved)


def test_detector_framed_landmarks_are_the_transformers_at_the_true_theta(sfm, fit_and_photo):
    """The 3DMM-STN's landmark layer at a detector-framed variant's true θ (rotation, translation, log scale,
    identity, expression) projects exactly onto the stored landmarks: the two cameras agree."""
    from morphable.models.resample import model_uv, uv_grid
    from morphable.render.stn import SpatialTransformer3DMM, Theta

    fit, photo = fit_and_photo
    data = ir.synthesize_variants(sfm, fit, photo, 3, seed=4, settings=ir.VariantSettings(size=100, framing="detector"))
    stn = SpatialTransformer3DMM(sfm, uv_grid(model_uv(sfm), sfm.triangles, (16, 16)), 64)
    theta = Theta(data["rotation"], data["translation"], data["scale"].log(), data["identity"], data["expression"])
    with torch.no_grad():
        landmarks = stn(data["images"].float() / 255, theta).landmarks
    seen = sfm.landmark_mask
    torch.testing.assert_close(landmarks[:, seen], data["landmarks"][:, seen], atol=1e-3, rtol=0)


def test_build_set_caches_and_writes_the_manifest(sfm, tmp_path, monkeypatch):
    fits = {}
    for i in range(2):
        fit, photo = synthetic_fit(sfm, seed=10 + i)
        Image.fromarray(photo).save(tmp_path / f"p{i}.png")
        fits[f"p{i}.png"] = fit
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "blank.png")
    calls = []

    def fake_fit(model, path):
        calls.append(path.name)
        if path.name not in fits:
            raise InputError(path, "no face found")
        return fits[path.name]

    monkeypatch.setattr(ir, "fit_photo", fake_fit)
    photos = ["p0.png", "blank.png", "p1.png"]
    a = ir.build_set(sfm, "sfm", photos, 3, seed=2, name="t", cache=tmp_path / "cache", root=tmp_path)
    b = ir.build_set(sfm, "sfm", photos, 3, seed=2, name="t", cache=tmp_path / "cache", root=tmp_path)
    assert calls == ["p0.png", "blank.png", "p1.png", "blank.png"]  # fits cached; the faceless photo retried
    torch.testing.assert_close(a["images"], b["images"], rtol=0, atol=0)
    assert a["images"].shape[0] == 6 and a["photo"].tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(a["albedo"][1], fits["p1.png"]["albedo"])
    manifest = next((tmp_path / "cache").glob("coarse-t-*.jsonl"))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["photo"] for r in rows] == ["p0.png"] * 3 + ["p1.png"] * 3 + ["blank.png"]
    assert rows[-1]["problem"] == "no face found"
    assert rows[4]["yaw_deg"] == pytest.approx(math.degrees(float(a["ypr"][4, 0])), abs=0.01)
    with pytest.raises(InputError, match="none of the 1 photos"):
        ir.build_set(sfm, "sfm", ["blank.png"], 3, seed=2, cache=tmp_path / "cache", root=tmp_path)
    with pytest.raises(InputError, match="missing.png.*no such photo"):
        ir.build_set(sfm, "sfm", ["missing.png"], 3, seed=2, cache=tmp_path / "cache", root=tmp_path)


def test_split_is_disjoint_and_leaves_out_afw():
    train, held = set(ir.TRAIN_PHOTOS), set(ir.HELD_OUT_PHOTOS)
    assert not train & held
    assert not any("afw" in p.lower() or "AFLW2000" in p for p in train | held)
    # deepface identities are wholly on one side
    for group in ir._DEEPFACE_GROUPS:
        names = {f"{ir.DEEPFACE}/img{i}.jpg" for i in group}
        assert names <= train or names <= held


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="size"):
        ir.VariantSettings(size=8)
    with pytest.raises(ValueError, match="max_yaw_deg"):
        ir.VariantSettings(max_yaw_deg=120)
    with pytest.raises(ValueError, match="framing"):
        ir.VariantSettings(framing="tight")


def test_occluders_replace_exactly_their_boxes():
    """draw_occluders / occlude: an occluded chip equals the fill inside its box and the image outside; a chip
    without an occluder is untouched; boxes have 20–50 % sides near the centre; the draw is seeded."""
    n, S = 400, 96
    occ = ir.draw_occluders(n, S, torch.Generator().manual_seed(3), probability=0.5)
    again = ir.draw_occluders(n, S, torch.Generator().manual_seed(3), probability=0.5)
    assert torch.equal(occ["box"], again["box"]) and torch.equal(occ["on"], again["on"])
    assert 0.4 < float(occ["on"].float().mean()) < 0.6
    x0, y0, x1, y1 = occ["box"].T
    w, h = (x1 - x0).float(), (y1 - y0).float()
    assert float(w.min()) >= 0.2 * S - 1 and float(w.max()) <= 0.5 * S + 1
    assert float(h.min()) >= 0.2 * S - 1 and float(h.max()) <= 0.5 * S + 1
    centre = (occ["box"][:, :2] + occ["box"][:, 2:]).float() / 2
    assert float((centre - S / 2).abs().max()) <= 0.3 * S + 1
    images = torch.rand(n, S, S, 3)
    fill = torch.rand(n, S, S, 3) + 2  # disjoint values
    out = ir.occlude(images, occ, fill)
    for i in range(0, n, 37):
        mask = torch.zeros(S, S, dtype=torch.bool)
        if occ["on"][i]:
            a, b, c, d = occ["box"][i].tolist()
            mask[b:d, a:c] = True
        assert torch.equal(out[i][mask], fill[i][mask])
        assert torch.equal(out[i][~mask], images[i][~mask])
    with pytest.raises(ValueError, match="differ"):
        ir.occlude(images, occ, fill[:, :10])
