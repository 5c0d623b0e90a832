"""The SIR network's parts: chip camera and chip landmarks against independent references, confidence-map
sampling, weights round trip."""
import pytest
import torch

from morphable.errors import ModelFileError
from morphable.nets.layout import ParamLayout
from morphable.nets.sir import (
    SIRNet,
    chip_camera,
    landmarks_to_chip,
    load_sir,
    sample_map,
    save_sir,
)
from tests.conftest import data_file


def _layouts():
    return {"shape": ParamLayout((("shape", 6),)), "pose": ParamLayout((("rotation", 3), ("expression", 4))),
            "appearance": ParamLayout((("albedo", 9), ("light", 9)))}


def test_chip_camera_matches_the_chip_renderer():
    import morphable
    from morphable.geometry.rotation import matrix_to_axis_angle
    from morphable.train.chip_render import ChipRenderer, random_rotation

    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    m = morphable.load_model("ict")
    g = torch.Generator().manual_seed(3)
    vertices = m(identity=torch.randn(3, m.n_identity, generator=g)).vertices
    R = random_rotation(3, g, max_yaw_deg=60.0)
    ref = ChipRenderer(m, max_triangles=None).camera(vertices, R)  # the renderer's own alignment
    cam = chip_camera(m.landmarks(vertices), matrix_to_axis_angle(R), valid=m.landmark_mask)
    torch.testing.assert_close(cam.scale, ref.scale, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cam.translation, ref.translation, atol=1e-3, rtol=1e-4)
    p = m.landmarks(vertices)
    torch.testing.assert_close(cam.project(p), ref.project(p), atol=1e-3, rtol=1e-4)


def test_landmarks_to_chip_finds_marked_pixels_in_the_extracted_chip():
    from morphable.detect.formats import read_landmarks
    from morphable.identity.alignment import extract_face_chips

    photo = sorted(data_file("superviseddescent/examples/data/ibug_lfpw_trainset").glob("*.png"))[0]
    lm = torch.as_tensor(read_landmarks(photo.with_suffix(".pts")), dtype=torch.float32)
    H = int(lm[:, 1].max()) + 60
    W = int(lm[:, 0].max()) + 60
    for k in (30, 36, 48):  # a bright dot at one landmark (moved to a pixel centre), found again in dlib's chip
        where = lm.clone()
        x, y = lm[k].round().long().tolist()
        where[k] = torch.tensor([float(x), float(y)])
        image = torch.zeros(1, H, W, 3)
        image[0, y - 1:y + 2, x - 1:x + 2] = 1.0
        weight = extract_face_chips(image, where[None])[0].sum(-1)
        yy, xx = torch.meshgrid(torch.arange(150.0), torch.arange(150.0), indexing="ij")
        found = torch.stack([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()
        expected = landmarks_to_chip(where[None])[0, k]
        assert float((found - expected).norm()) < 1.5  # dlib's pyramid resampling moves a dot by < 1 px


def test_sample_map_is_exact_on_a_linear_ramp():
    size = 150
    maps = torch.linspace(0, 1, 64)[None, None, :].expand(2, 64, 64).clone()  # value grows with x
    points = torch.tensor([[[40.0, 20.0], [75.0, 100.0]], [[110.0, 5.0], [float("nan"), 3.0]]])
    values = sample_map(maps, points, size)
    # pixel x of the 150 chip sits at map coordinate (x + 0.5) / 150 · 64 − 0.5; the ramp is i / 63
    expected = ((points[..., 0] + 0.5) / size * 64 - 0.5) / 63
    expected[1, 1] = ((74.5 + 0.5) / size * 64 - 0.5) / 63  # NaN points read the centre
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)


def test_weights_round_trip_and_bad_file(tmp_path):
    torch.manual_seed(0)
    net = SIRNet("toy", _layouts(), 10, hidden=16)
    net.set_feature_statistics(torch.randn(40, 2560) * 3 + 1)
    net.prior_precision = 3.0
    path = tmp_path / "sir-toy.pt"
    save_sir(net, path, {"command": "morphable train sir -o x"})
    back = load_sir(path)
    assert back.prior_precision == 3.0 and back.n_identity == 10 and back.meta["command"].startswith("morphable")
    assert not any(k.startswith("trunk.") for k in torch.load(path, weights_only=True)["state"])
    feats = torch.randn(5, 2560) * 3 + 1
    net.eval()
    a, b = net.encode(feats), back.encode(feats)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-2, rtol=2e-2)  # float16 storage
    path.write_bytes(b"not a weights file")
    with pytest.raises(ModelFileError):
        load_sir(path)


@pytest.mark.slow
def test_shipped_sir_through_fit_cli(tmp_path):
    """``morphable fit --method sir`` with the shipped ``sir-ict`` (sha256 checked): the fit's identity is
    pulled towards the network's shape, compared with the plain landmark fit."""
    import json

    from click.testing import CliRunner

    from morphable.cli import cli
    from morphable.detect.formats import read_landmarks
    from morphable.io.image import read_image
    from morphable.nets.sir import shipped_sir

    data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")
    photo = data_file("eos/examples/data/image_0010.png")
    net = shipped_sir("ict")
    assert net.meta["command"].startswith("morphable train sir")
    lm = torch.as_tensor(read_landmarks(photo.with_suffix(".pts")), dtype=torch.float32)
    mu = net.predict_identity(torch.tensor(read_image(photo)).float()[None] / 255, lm[None])[0]
    ids = {}
    for method in ("sir", "fit"):
        out = tmp_path / method
        args = ["fit", str(photo), "--landmarks", str(photo.with_suffix(".pts")), "-o", str(out), "--model", "ict",
                "--method", method, "--shape-from", "landmarks", "--texture-size", "64", "--no-report", "-q"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        params = json.loads((out / "image_0010" / "params.json").read_text())
        ids[method] = torch.tensor(params["identity"])
        if method == "sir":
            assert params["shape_from"] == "sir"
    assert float((ids["sir"] - mu).norm()) < 0.7 * float((ids["fit"] - mu).norm())
