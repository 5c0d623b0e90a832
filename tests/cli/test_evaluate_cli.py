"""``morphable evaluate`` end to end: NoW on the corpus's real head scan (FLAME fitting example, metres),
MICC on a synthetic face, NME on landmark files."""
import json

import numpy as np
import pytest
import torch
import trimesh
from click.testing import CliRunner
from PIL import Image

from morphable.cli import cli
from morphable.geometry.align import Similarity
from morphable.geometry.rotation import axis_angle_to_matrix

# scan_lmks.npy holds iBUG points 17..67 (no jawline): iBUG i is row i - 17
NOW_ROWS = [i - 17 for i in (36, 39, 42, 45, 33, 48, 54)]


def _write_obj(path, vertices, triangles):
    lines = [f"v {x!r} {y!r} {z!r}" for x, y, z in vertices.tolist()]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in triangles.tolist()]
    path.write_text("\n".join(lines) + "\n")


def _write_points(path, points):
    path.write_text("\n".join(" ".join(repr(v) for v in row) for row in np.asarray(points).tolist()) + "\n")


def _run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


_PREPARED = {}


@pytest.fixture
def real_scan(data, tmp_path_factory):
    """The real scan, read by trimesh (an independent reader), unreferenced vertices dropped, cropped to
    15 mm beyond the NoW sphere (speed), written back in metres with its 7 NoW landmarks (prepared once)."""
    if "scan" not in _PREPARED:
        _PREPARED["scan"] = _prepare_scan(data, tmp_path_factory)
    return _PREPARED["scan"]


def _prepare_scan(data_file, tmp_path_factory):
    mesh = trimesh.load(data_file("flame-fitting/data/scan.obj"), process=False)
    vertices_m, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    landmarks_m = np.load(data_file("flame-fitting/data/scan_lmks.npy"))[NOW_ROWS]
    lm = landmarks_m * 1000
    bridge = (lm[1] + lm[2]) / 2
    centre = lm[4] + 0.3 * (bridge - lm[4])
    radius = 1.4 * (np.linalg.norm(lm[0] - lm[3]) + np.linalg.norm(bridge - lm[4])) / 2
    inside = np.linalg.norm(vertices_m * 1000 - centre, axis=1) <= radius + 15
    faces = faces[inside[faces].all(axis=1)]
    used = np.unique(faces)
    remap = np.full(len(vertices_m), -1)
    remap[used] = np.arange(len(used))
    vertices_m, faces = vertices_m[used], remap[faces]
    folder = tmp_path_factory.mktemp("now")
    _write_obj(folder / "scan.obj", vertices_m, faces)
    _write_points(folder / "scan_lmks.txt", landmarks_m)
    normals = trimesh.Trimesh(vertices_m, faces, process=False).vertex_normals
    return folder, vertices_m * 1000, faces, lm, np.asarray(normals)


def _similarity(seed, scale):
    rng = np.random.default_rng(seed)
    rotation = axis_angle_to_matrix(torch.as_tensor(rng.normal(size=3))).numpy()
    return Similarity(scale, rotation, rng.normal(size=3) * 300)


@pytest.mark.parametrize("metrical", [False, True])
def test_now_real_scan_against_itself_after_a_transform(real_scan, metrical):
    folder, vertices, faces, lm, _ = real_scan
    move = _similarity(3, 1.0 if metrical else 2.5)
    _write_obj(folder / "mesh.obj", move.apply(vertices), faces)
    noisy = move.apply(lm) + np.random.default_rng(4).normal(size=(7, 3))      # 1 mm landmark noise
    _write_points(folder / "mesh_lmks.txt", noisy)
    out = folder / "now.json"
    args = ["evaluate", "now", "--scan", folder / "scan.obj", "--scan-unit", "m",
            "--scan-landmarks", folder / "scan_lmks.txt", "--mesh", folder / "mesh.obj",
            "--mesh-landmarks", folder / "mesh_lmks.txt", "--json", out]
    text = _run(*args, *(["--metrical"] if metrical else []))
    assert "median" in text and ("metrical" in text) == metrical
    figures = json.loads(out.read_text())
    assert figures["median_mm"] < 1e-3 and figures["mean_mm"] < 1e-3 and figures["std_mm"] < 1e-3
    assert figures["n_points"] > 10000
    assert figures["scale"] == pytest.approx(1.0 if metrical else 1 / 2.5, rel=1e-6)


def test_now_heatmap_shows_where_the_error_is(tmp_path):
    """A synthetic face whose right half (image left) is pushed 2 mm forward: the heat map's left half is
    yellow (large error), its right half dark (no error)."""
    vertices, triangles = _face_patch()
    lm = vertices[np.argmin(np.linalg.norm(vertices[None, :, :2] - np.array(
        [[-45, 15], [-15, 15], [15, 15], [45, 15], [0, -18], [-25, -40], [25, -40]])[:, None], axis=2), axis=1)]
    scan = vertices + np.where(vertices[:, :1] < -5, [0, 0, 2.0], 0)
    _write_obj(tmp_path / "scan.obj", scan, triangles)
    _write_obj(tmp_path / "mesh.obj", vertices, triangles)
    _write_points(tmp_path / "lm.txt", lm)
    _run("evaluate", "now", "--scan", tmp_path / "scan.obj", "--scan-landmarks", tmp_path / "lm.txt",
         "--mesh", tmp_path / "mesh.obj", "--mesh-landmarks", tmp_path / "lm.txt", "--no-align",
         "--heatmap", tmp_path / "heat.png")
    image = np.asarray(Image.open(tmp_path / "heat.png")).astype(float)
    face = image[:, :512]
    row = face[256]
    left, right = row[100:200], row[330:430]
    assert left[:, 0].mean() > 150 and left[:, 1].mean() > 150          # yellow
    assert right[:, 0].mean() < 100                                     # dark blue/purple


@pytest.mark.parametrize("offset", [1.0])
def test_now_real_scan_no_align_measures_a_normal_offset(real_scan, offset):
    folder, vertices, faces, lm, normals = real_scan
    _write_obj(folder / "displaced.obj", vertices + offset * normals, faces)
    _write_obj(folder / "original.obj", vertices, faces)
    _write_points(folder / "lm_mm.txt", lm)
    out = folder / "offset.json"
    _run("evaluate", "now", "--scan", folder / "displaced.obj", "--scan-landmarks", folder / "lm_mm.txt",
         "--mesh", folder / "original.obj", "--mesh-landmarks", folder / "lm_mm.txt", "--no-align", "--json", out,
         "--distances", folder / "d.npy")
    figures = json.loads(out.read_text())
    assert figures["median_mm"] == pytest.approx(offset, rel=0.02)
    distances = np.load(folder / "d.npy")
    assert len(distances) == figures["n_points"] and np.median(distances) == pytest.approx(figures["median_mm"])


def test_now_bad_landmark_file_is_one_line_error(real_scan, tmp_path):
    folder = real_scan[0]
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n")
    result = CliRunner().invoke(cli, ["evaluate", "now", "--scan", str(folder / "scan.obj"), "--scan-landmarks",
                                      str(bad), "--mesh", str(folder / "scan.obj"), "--mesh-landmarks", str(bad)])
    assert result.exit_code == 1
    assert "Error:" in result.output and "bad.txt" in result.output and "Traceback" not in result.output


def _face_patch(n=50, size=120.0):
    u = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(u, u)
    z = 25 * np.exp(-(x ** 2) / 90 - (y + 5) ** 2 / 500) - 0.004 * (x ** 2 + 0.6 * y ** 2) + 0.02 * x
    q = np.arange(n * n).reshape(n, n)[:-1, :-1].ravel()
    triangles = np.concatenate([np.stack([q, q + 1, q + n], 1), np.stack([q + 1, q + n + 1, q + n], 1)])
    return np.stack([x.ravel(), y.ravel(), z.ravel()], 1), triangles


def test_micc_cli_recovers_scale_and_pose(tmp_path):
    vertices, triangles = _face_patch()
    move = Similarity(0.001, axis_angle_to_matrix(torch.tensor([0.03, -0.04, 0.02], dtype=torch.float64)).numpy(),
                      np.array([0.01, -0.02, 0.3]))                        # metres, slightly turned
    _write_obj(tmp_path / "gt.obj", vertices, triangles)
    _write_obj(tmp_path / "pred.obj", move.apply(vertices), triangles)
    out = tmp_path / "micc.json"
    text = _run("evaluate", "micc", "--gt", tmp_path / "gt.obj", "--pred", tmp_path / "pred.obj",
                "--pred-unit", "m", "--json", out, "--heatmap", tmp_path / "micc.png")
    assert "point-to-plane" in text
    figures = json.loads(out.read_text())
    assert figures["mean_mm"] < 1e-3 and figures["scale"] == pytest.approx(1.0, rel=1e-6)
    assert (tmp_path / "micc.png").exists()


def _write_pts(path, points, header=True):
    body = "\n".join(f"{x + 1!r} {y + 1!r}" for x, y in points.tolist())     # files are 1-based
    path.write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n" if header else body + "\n")


def test_nme_cli_folders_yaw_bins_and_a_missing_prediction(tmp_path):
    rng = np.random.default_rng(5)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    yaws, offsets = {}, {"a": 1.0, "b": 2.0, "c": 4.0, "d": 0.0}
    for name, yaw in zip("abcd", (10.0, 45.0, -75.0, 20.0)):
        gt = rng.uniform(0, 100, size=(68, 2))
        gt[0], gt[1] = [0, 0], [100, 100]                                  # box 100 x 100
        _write_pts(tmp_path / "gt" / f"{name}.reannotated68.pts", gt)
        if name != "d":                                                     # d: no prediction (failure)
            _write_pts(tmp_path / "pred" / f"{name}.pts", gt + [offsets[name], 0.0], header=False)
        yaws[name] = yaw
    (tmp_path / "yaws.json").write_text(json.dumps(yaws))
    out = tmp_path / "nme.json"
    text = _run("evaluate", "nme", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--protocol", "aflw2000",
                "--yaws", tmp_path / "yaws.json", "--json", out)
    assert "1 failed" in text and "n=1" in text
    figures = json.loads(out.read_text())
    assert figures["nme"] == pytest.approx((0.01 + 0.02 + 0.04) / 3)
    assert figures["per_image"]["d"] is None and figures["failures"] == 1
    text = _run("evaluate", "nme", "--pred", tmp_path / "pred" / "b.pts", "--gt",
                tmp_path / "gt" / "b.reannotated68.pts", "--protocol", "300w")
    assert "mean: " in text
    result = CliRunner().invoke(cli, ["evaluate", "nme", "--pred", str(tmp_path / "pred"), "--gt",
                                      str(tmp_path / "gt"), "--protocol", "aflw2000"])
    assert result.exit_code == 1 and "--yaws" in result.output           # no yaw file beside the GT: one line
