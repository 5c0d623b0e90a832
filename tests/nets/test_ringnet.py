"""RingNet: output layout from the model, dlib and small trunks, crop geometry and filter, camera convention,
decoder."""
import math

import pytest
import torch

from morphable.geometry.camera import ScaledOrthographic
from morphable.models.base import MorphableModel
from morphable.nets.ringnet import (
    CROP_SCALE,
    CROP_SIZE,
    FEATURE_DIM,
    SMALL_SIZE,
    RingNetDecoder,
    SmallTrunk,
    face_crop,
    face_crop_reference,
    landmark_box,
    load_ringnet,
    new_ringnet,
    ringnet_layout,
    save_ringnet,
)
from tests.conftest import data_file


@pytest.fixture(scope="module")
def ict():
    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    import morphable

    return morphable.load_model("ict")


@pytest.fixture(scope="module")
def net(ict):
    torch.manual_seed(0)
    return new_ringnet(ict, "ict", finetune_blocks=1, dropout=0.0).eval()


def test_layout_sizes_come_from_the_model(ict):
    assert ringnet_layout(ict).blocks == (("camera", 3), ("rotation", 3), ("shape", 100), ("expression", 53))
    pca = MorphableModel(name="t", mean=torch.zeros(4, 3), triangles=torch.tensor([[0, 1, 2]]),
                         identity_basis=torch.zeros(4, 3, 120), expression_basis=torch.zeros(4, 3, 60),
                         expression_kind="pca")
    layout = ringnet_layout(pca)
    assert layout.sizeof("shape") == 100 and layout.sizeof("expression") == 50 and "jaw" not in layout.names


def test_trunk_taps_hold_dlibs_pooled_features_and_tuned_blocks_get_gradients(net):
    crops = torch.rand(2, CROP_SIZE, CROP_SIZE, 3, generator=torch.Generator().manual_seed(1))
    feats = net.trunk(crops)
    assert feats.shape == (2, FEATURE_DIM)
    pooled, _ = net.trunk.net.features(crops)  # dlib's own global pool of the last block
    level0 = feats[:, -1024:].reshape(2, 256, 4)
    torch.testing.assert_close(level0.mean(-1), pooled, atol=2e-5, rtol=1e-4)
    frozen_only = type(net.trunk)(net.trunk.net, 0)  # the tuned copies start as dlib's weights
    torch.testing.assert_close(frozen_only(crops), feats, atol=2e-5, rtol=1e-4)
    out = net(crops)
    (out["shape"].sum() + out["camera"].sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.trunk.parameters())
    assert len(list(net.trunk.parameters())) == 4  # block 13's two convs: weight + bias each
    net.zero_grad()


def test_zero_output_is_the_mean_face_frontal_and_centred(net, ict):
    zero = {n: torch.zeros(1, k) for n, k in net.layout.blocks}
    lm = RingNetDecoder(ict).landmarks(zero, net.camera(zero))[0]
    expect = ScaledOrthographic(net.scale0[None], torch.zeros(1, 3), net.centre0[None]).project(
        ict.landmarks(ict.mean[None]))[0]
    keep = [i for i in range(17, 68) if ict.landmark_mask[i]]
    torch.testing.assert_close(lm[keep], expect[keep], atol=1e-3, rtol=0)
    ok = lm[ict.landmark_mask]
    extent = (ok.amax(0) - ok.amin(0)).max()
    assert float(extent) == pytest.approx(CROP_SIZE / CROP_SCALE, rel=0.02)
    centre = (ok.amax(0) + ok.amin(0)) / 2
    torch.testing.assert_close(centre, torch.full((2,), (CROP_SIZE - 1) / 2), atol=1.5, rtol=0)


def test_decoder_submodel_matches_the_full_model_and_jaw_follows_the_silhouette(net, ict):
    g = torch.Generator().manual_seed(4)
    params = {"camera": torch.zeros(2, 3), "shape": torch.randn(2, 100, generator=g),
              "expression": 0.3 * torch.rand(2, 53, generator=g),
              "rotation": torch.tensor([[0.0, 0.0, 0.0], [0.0, math.radians(60), 0.0]])}
    cam = net.camera(params)
    lm = RingNetDecoder(ict).landmarks(params, cam)
    full = cam.project(ict.landmarks(ict(identity=params["shape"], expression=params["expression"]).vertices))
    inner = [i for i in range(17, 68) if ict.landmark_mask[i]]
    torch.testing.assert_close(lm[:, inner], full[:, inner], atol=1e-3, rtol=1e-5)
    # yaw +60°: the subject's left (iBUG 9–16) turns away; its jaw points move out to the outline,
    # beyond the fixed jaw vertices' projections (all but the topmost, where the outline bends at the ear)
    moved = lm[1, 9:17, 0] - full[1, 9:17, 0]
    assert int((moved > -1e-3).sum()) >= 6 and float(moved.mean()) > 2.0
    assert torch.isfinite(lm).all()


def test_face_crop_samples_the_box_and_maps_points_both_ways():
    H, W = 300, 400
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    image = torch.stack([xx / W, yy / H, torch.full_like(xx, 0.5)], -1)  # linear ramps: bilinear is exact
    for box in (torch.tensor([100.0, 50.0, 220.0, 170.0]), torch.tensor([20.0, 10.0, 290.0, 280.0])):
        crop, frame = face_crop(image, box)
        assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
        pts = torch.tensor([[[10.0, 20.0], [75.0, 75.0], [140.0, 3.0]]])
        photo = frame.to_photo(pts)
        torch.testing.assert_close(frame.to_crop(photo), pts)
        sampled = crop[pts[0, :, 1].long(), pts[0, :, 0].long(), :2]
        torch.testing.assert_close(sampled, photo[0] / torch.tensor([W, H]), atol=2e-3, rtol=0)
        # crop pixel centres span the box: the first and last sit half a crop pixel inside its edges
        half = 0.5 * (box[2] - box[0]) / CROP_SIZE
        torch.testing.assert_close(frame.to_photo(torch.tensor([[[0.0, 0.0]]]))[0, 0], box[:2] + half - 0.5)


@pytest.mark.parametrize("box, size", [
    ((10.0, 5.0, 50.0, 45.0), 20),      # shrink 2×
    ((1.3, 2.2, 59.7, 58.6), 12),       # shrink ~5×, sub-pixel box
    ((20.3, 11.7, 31.1, 22.5), 24),     # enlarge: bilinear
    ((-10.0, -7.0, 70.0, 73.0), 16),    # overhangs every edge
    ((0.0, 0.0, 80.0, 80.0), 40),       # taller than the photo
    ((-50.0, -50.0, -10.0, -10.0), 8),  # misses the photo
    ((-30.0, -30.0, 110.0, 110.0), 9),  # shrink ~16×: 4 × 4 block means first, overhanging blocks
])
def test_face_crop_is_its_explicit_reference_filter(box, size):
    image = torch.rand(60, 80, 3, generator=torch.Generator().manual_seed(5))
    crop, _ = face_crop(image, torch.tensor(box), size)
    torch.testing.assert_close(crop.double(), face_crop_reference(image, torch.tensor(box), size), atol=2e-6, rtol=0)
    # uint8 photos: OpenCV's block means, rounded to uint8 once: within half a grey level
    u8 = (image * 255).round().to(torch.uint8)
    crop_u8, _ = face_crop(u8, torch.tensor(box), size)
    assert crop_u8.dtype == torch.float32
    torch.testing.assert_close(crop_u8.double(), face_crop_reference(u8, torch.tensor(box), size),
                               atol=0.5 / 255 + 1e-6, rtol=0)


def test_face_crop_filters_as_torch_antialiased_resize():
    """An independent reference: a box that is the whole photo, shrunk 3×, is F.interpolate's antialiased
    bilinear resize away from the border (where ours fades to black and torch's renormalises)."""
    image = torch.rand(96, 96, 3, generator=torch.Generator().manual_seed(6))
    crop, _ = face_crop(image, torch.tensor([0.0, 0.0, 96.0, 96.0]), 32)
    ref = torch.nn.functional.interpolate(image.permute(2, 0, 1)[None], size=(32, 32), mode="bilinear",
                                          antialias=True, align_corners=False)[0].permute(1, 2, 0)
    torch.testing.assert_close(crop[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-5, rtol=0)
    assert float((crop[0] - ref[0]).abs().max()) > 1e-3  # the border does differ: the check can tell


def test_small_trunk_keeps_position_and_predicts_from_64_px_crops(ict, tmp_path):
    torch.manual_seed(2)
    small = new_ringnet(ict, "ict", trunk="small", dropout=0.0).eval()
    assert small.input_size == SMALL_SIZE and isinstance(small.trunk, SmallTrunk)
    crops = torch.rand(2, SMALL_SIZE, SMALL_SIZE, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats = small.trunk(crops)
        # the flattened 2 × 2 map is not a global pool: moving the content moves the features
        shifted = small.trunk(torch.roll(crops, 20, dims=2))
    assert feats.shape == (2, SmallTrunk.dim)
    assert float((shifted - feats).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="SmallTrunk: expected crops"):
        small.trunk(torch.rand(1, CROP_SIZE, CROP_SIZE, 3))
    with pytest.raises(ValueError, match="finetune_blocks applies to the dlib trunk"):
        new_ringnet(ict, "ict", trunk="small", finetune_blocks=1)
    save_ringnet(small, tmp_path / "s.pt", {"command": "test"})
    again = load_ringnet(tmp_path / "s.pt")
    assert again.trunk_name == "small"
    a, b = small(crops), again(crops)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-3, rtol=1e-2)
    # a photo: the network reads the box at 64 px, the camera is in the 150 px frame of the same box
    image = torch.rand(200, 260, 3)
    box = torch.tensor([40.0, 30.0, 190.0, 180.0])  # 150 px: the crop frame is the photo shifted
    pred = small.predict(image, box=box)
    torch.testing.assert_close(pred.frame.factor, torch.tensor([1.0]))
    torch.testing.assert_close(pred.frame.origin, torch.tensor([[40.0, 30.0]]))
    torch.testing.assert_close(pred.photo_camera().translation, pred.camera.translation + torch.tensor([[40.0, 30.0]]))


def test_small_trunk_folded_inference_is_the_batch_norm_network():
    torch.manual_seed(7)
    trunk = SmallTrunk()
    crops = torch.rand(3, SMALL_SIZE, SMALL_SIZE, 3, generator=torch.Generator().manual_seed(8))
    trunk.train()
    trunk(crops)  # running statistics move away from 0 / 1
    for bn in trunk.body[1::3]:
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.uniform_(bn.bias, -0.2, 0.2)
    trunk.eval()
    with torch.no_grad():
        folded = trunk(crops)
        torch.testing.assert_close(folded, trunk.body((crops.permute(0, 3, 1, 2) - 0.5) / 0.25).flatten(1),
                                   atol=1e-5, rtol=1e-4)
        trunk.body[0].weight.mul_(2)  # an in-place change (an optimiser step, load_state_dict) refolds
        torch.testing.assert_close(trunk(crops), trunk.body((crops.permute(0, 3, 1, 2) - 0.5) / 0.25).flatten(1),
                                   atol=1e-5, rtol=1e-4)
        assert float((trunk(crops) - folded).abs().max()) > 1e-3


def test_camera_in_photo_pixels_and_landmark_box(net):
    box = landmark_box(torch.tensor([[[10.0, 20.0], [50.0, 100.0], [float("nan"), 0.0]]]))
    torch.testing.assert_close(box, torch.tensor([[30 - 64.0, 60 - 64.0, 30 + 64.0, 60 + 64.0]]))
    image = torch.rand(200, 260, 3)
    crop, frame = face_crop(image, box[0])
    cam = ScaledOrthographic(torch.tensor([0.7]), torch.tensor([[0.1, 0.4, -0.2]]), torch.tensor([[70.0, 80.0]]))
    X = torch.randn(1, 5, 3) * 40
    torch.testing.assert_close(frame.camera_to_photo(cam).project(X), frame.to_photo(cam.project(X)))


def test_save_and_load_round_trip(net, tmp_path):
    with torch.no_grad():
        net.set_feature_statistics(torch.randn(16, FEATURE_DIM) * 2 + 1)
    save_ringnet(net, tmp_path / "r.pt", {"command": "test"})
    again = load_ringnet(tmp_path / "r.pt", net=net.trunk.net)
    assert again.layout == net.layout and again.meta["command"] == "test"
    feats = torch.randn(3, FEATURE_DIM) * 2 + 1
    a, b = net.regress(feats), again.regress(feats)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-3, rtol=2e-2)
    (tmp_path / "bad.pt").write_bytes(b"nope")
    from morphable.errors import ModelFileError

    with pytest.raises(ModelFileError):
        load_ringnet(tmp_path / "bad.pt")


def test_fit_with_ringnet_regress_and_regress_then_fit(net, ict):
    from morphable.detect.formats import read_landmarks
    from morphable.io.image import read_image
    from morphable.nets.ringnet import fit_with_ringnet

    photo = data_file("eos/examples/data/image_0010.png")
    image = torch.tensor(read_image(photo)).float() / 255
    lm = torch.as_tensor(read_landmarks(photo.with_suffix(".pts")), dtype=torch.float32)[None]
    dec = RingNetDecoder(ict)
    reg = fit_with_ringnet(ict, net, dec, [image], lm, method="regress")
    inner = [i for i in range(17, 68) if ict.landmark_mask[i]]
    # the mesh it returns, seen by its photo camera, gives its landmarks
    torch.testing.assert_close(reg.camera.project(ict.landmarks(reg.vertices))[:, inner], reg.landmarks_fitted[:, inner],
                               atol=1e-2, rtol=1e-4)
    assert torch.isfinite(reg.rms_px).all() and reg.vertices.shape == (1, ict.n_vertices, 3)
    # a very confident prior keeps the regressed shape; the landmarks still place pose and expression
    both = fit_with_ringnet(ict, net, dec, [image], lm, method="regress+fit", lambda_identity=1e6)
    torch.testing.assert_close(both.identity.float(), reg.identity, atol=1e-3, rtol=0)
    assert float(both.rms_px[0]) < float(reg.rms_px[0])
    with pytest.raises(ValueError):
        fit_with_ringnet(ict, net, dec, [image], lm, method="fit")


def test_shipped_ringnet_places_held_out_afw_faces_better_than_its_zero_output(ict):
    """The shipped ``ringnet-ict`` (small trunk; AFW is held out of its training) on the first 12 AFW faces,
    cropped from their annotated landmarks: inner-51 NME (outer-eye normalised) well below the zero output's
    (the mean face, frontal, where the crop rule puts it), and regress+fit no worse than the plain fit."""
    from morphable.detect.formats import read_landmarks
    from morphable.eval.nme import nme, outer_eye_distance
    from morphable.fitting.landmarks import fit_landmarks
    from morphable.io.image import read_image
    from morphable.nets.ringnet import regress_faces, shipped_ringnet

    net = shipped_ringnet("ict")
    assert net.trunk_name == "small"
    dec = RingNetDecoder(ict)
    pts = sorted(data_file("Spinkoo-Face-alignement/afw/afw").glob("*.pts"))[:12]
    errors = {"regress": [], "zero": [], "fit": [], "regress_fit": []}
    for p in pts:
        image = torch.tensor(read_image(p.with_suffix(".jpg"))).float() / 255
        gt = torch.as_tensor(read_landmarks(p), dtype=torch.float32)[None]
        reg = regress_faces(net, dec, [image], gt)
        box = landmark_box(gt)[0]
        _, frame = face_crop(image, box)
        zero = {n: torch.zeros(1, k) for n, k in net.layout.blocks}
        zero_lm = frame.to_photo(dec.landmarks(zero, net.camera(zero)))
        fit = fit_landmarks(ict, gt)
        both = fit_landmarks(ict, gt, identity_prior_mean=reg.identity)
        eye = outer_eye_distance(gt)
        for name, lm in (("regress", reg.landmarks), ("zero", zero_lm), ("fit", fit.landmarks_fitted),
                         ("regress_fit", both.landmarks_fitted)):
            errors[name].append(float(nme(lm[:, 17:].detach(), gt[:, 17:], eye)[0]))
    mean = {k: sum(v) / len(v) for k, v in errors.items()}
    assert mean["regress"] < 0.15 and mean["regress"] < 0.6 * mean["zero"], mean
    assert mean["regress_fit"] < mean["fit"] * 1.02, mean


def test_small_trunk_folded_cache_follows_a_dtype_change():
    """After ``.double()`` the folded layers are rebuilt in float64: the output is the float64 batch-norm
    network's to float64 rounding (a stale float32 cache would either raise or round to float32)."""
    trunk = SmallTrunk().eval()
    crops = torch.rand(1, SMALL_SIZE, SMALL_SIZE, 3, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        trunk(crops)  # fills the cache in float32
        trunk.double()
        out = trunk(crops.double())
        reference = trunk.body((crops.double().permute(0, 3, 1, 2) - 0.5) / 0.25).flatten(1)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference, rtol=1e-10, atol=1e-10)


def test_regress_faces_gives_ordinary_tensors_and_the_network_still_trains(ict):
    """Inference runs under ``torch.inference_mode``: what it returns must be ordinary tensors (changed in
    place, used in autograd), and the eval-mode caches it fills must not leak into training."""
    import numpy as np

    from morphable.detect.formats import read_landmarks
    from morphable.io.image import read_image
    from morphable.nets.ringnet import regress_faces

    torch.manual_seed(1)
    net = new_ringnet(ict, "ict", trunk="small", dropout=0.0).eval()
    photo = read_image(data_file("eos/examples/data/image_0010.png"))
    lm = torch.as_tensor(read_landmarks(data_file("eos/examples/data/image_0010.pts")), dtype=torch.float32)[None]
    dec = RingNetDecoder(ict)
    photo = np.array(photo)  # writable, for torch.from_numpy below
    reg = regress_faces(net, dec, [photo], lm)
    outputs = [*reg.params.values(), reg.identity, reg.camera.scale, reg.camera.rotation, reg.camera.translation,
               reg.landmarks]
    assert not any(t.is_inference() for t in outputs)
    # a numpy photo and the same photo as a tensor give the same faces
    again = regress_faces(net, dec, [torch.from_numpy(photo)], lm)
    torch.testing.assert_close(again.params["shape"], reg.params["shape"], atol=0, rtol=0)
    reg.params["shape"].add_(1.0)
    shape = reg.identity.clone().requires_grad_(True)
    (shape * reg.camera.scale[:, None]).sum().backward()  # saved for backward: must not be an inference tensor
    torch.testing.assert_close(shape.grad, reg.camera.scale[:, None].expand_as(shape))
    # training after inference: gradients reach the trunk and the regressor through the batch-norm network
    net.train()
    crops = torch.rand(2, SMALL_SIZE, SMALL_SIZE, 3, generator=torch.Generator().manual_seed(2))
    net(crops)["shape"].square().sum().backward()
    assert net.trunk.body[0].weight.grad.abs().sum() > 0 and net.regressor.mlp[0].weight.grad.abs().sum() > 0
