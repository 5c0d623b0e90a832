"""RingNet: output layout from the model, dlib trunk taps, crop geometry, camera convention, decoder."""
import math

import pytest
import torch

from morphable.geometry.camera import ScaledOrthographic
from morphable.models.base import MorphableModel
from morphable.nets.ringnet import (
    CROP_SCALE,
    CROP_SIZE,
    FEATURE_DIM,
    RingNetDecoder,
    face_crop,
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
