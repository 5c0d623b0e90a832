"""``morphable track``: bad videos are one error line; a short real clip with a blank frame is tracked,
the blank frame held and reported, and every output written (the animated GLB's frames equal the OBJ
sequence's meshes)."""
from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from morphable.cli import cli
from morphable.io import read_obj
from morphable.io.params import upgrade_params
from tests.conftest import data_file
from tests.io.test_glb_animation import accessor, read_glb

OBAMA = "3DDFA/demo@obama/obama.mp4"


def _one_line_error(result, *words):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert all(w in lines[0] for w in words), lines[0]


def test_missing_and_corrupt_videos_are_one_line_errors(tmp_path):
    runner = CliRunner()
    _one_line_error(runner.invoke(cli, ["track", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o")]),
                    "nope.mp4", "no such video file")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    _one_line_error(runner.invoke(cli, ["track", str(bad), "-o", str(tmp_path / "o")]), "bad.mp4")
    assert not (tmp_path / "o").exists()


def test_short_clip_with_a_blank_frame(tmp_path):
    import imageio.v2 as imageio

    source = data_file(OBAMA)
    reader = imageio.get_reader(source, "ffmpeg")
    clip = [frame for _, frame in zip(range(7), reader)]
    reader.close()
    clip[4] = np.zeros_like(clip[4])  # no face: held from frames 3 and 5
    video = tmp_path / "clip.mp4"
    with imageio.get_writer(video, fps=25, codec="libx264", quality=8, ffmpeg_log_level="error") as writer:
        for frame in clip:
            writer.append_data(frame)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["track", str(video), "-o", str(out), "--model", "sfm", "--shape-from",
                                      "landmarks", "--detector", "hog", "--max-side", "480", "--meshes", "obj",
                                      "--meshes", "glb", "-q"])
    assert result.exit_code == 0, result.output
    assert "held (no face found, interpolated from neighbours): 1 of 7 frames: 4" in result.output
    records = [json.loads(line) for line in (out / "params.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(7))
    assert [r["held"] for r in records] == [False] * 4 + [True] + [False] * 2
    for r in records:
        upgrade_params(r)  # each line is a valid params record
        assert r["image_size"] == {"width": 1280, "height": 720}
    assert all(r["identity"] == records[0]["identity"] for r in records)  # one identity for the clip
    assert records[4]["landmarks_source"] == "none" and records[5]["landmarks_source"] == "dlib-hog"
    assert {r["landmarks_source"] for r in records[1:4]} == {"tracked"}
    # fitted landmarks in original pixels lie on the detected ones (a few px at 1280 wide)
    det = np.array(records[2]["landmarks"], float)
    fit = np.array([[np.nan, np.nan] if p is None else p for p in records[2]["landmarks_fitted"]], float)
    ok = np.isfinite(fit).all(1)
    assert np.sqrt(((det[ok] - fit[ok]) ** 2).sum(1).mean()) < 10
    # the held frame's yaw lies between its neighbours'
    yaw = [r["euler_degrees"]["yaw"] for r in records]
    assert min(yaw[3], yaw[5]) - 1e-6 <= yaw[4] <= max(yaw[3], yaw[5]) + 1e-6
    overlay = imageio.get_reader(out / "overlay.mp4", "ffmpeg")
    frames = [f for f in overlay]
    overlay.close()
    assert len(frames) == 7 and frames[0].shape == (270, 480, 3)
    assert sorted(p.name for p in (out / "meshes").iterdir()) == [f"frame_{n:05d}.obj" for n in range(7)]
    # track.glb: base + Σ weights · targets, rotated and moved per frame, is each frame's OBJ mesh (m vs mm)
    from scipy.spatial.transform import Rotation

    gltf, binary = read_glb((out / "track.glb").read_bytes())
    primitive = gltf["meshes"][0]["primitives"][0]
    base = accessor(gltf, binary, primitive["attributes"]["POSITION"])
    targets = np.stack([accessor(gltf, binary, t["POSITION"]) for t in primitive["targets"]])
    samplers = {c["target"]["path"]: gltf["animations"][0]["samplers"][c["sampler"]]
                for c in gltf["animations"][0]["channels"]}
    assert np.allclose(accessor(gltf, binary, samplers["weights"]["input"])[:, 0], np.arange(7) / 25, atol=1e-6)
    weights = accessor(gltf, binary, samplers["weights"]["output"]).reshape(7, len(targets))
    q = accessor(gltf, binary, samplers["rotation"]["output"])
    T = accessor(gltf, binary, samplers["translation"]["output"])
    for n in (0, 4, 6):
        shape = base + np.einsum("k,kvc->vc", weights[n], targets)
        posed = (shape @ Rotation.from_quat(q[n]).as_matrix().T + T[n]) * 1000
        assert np.abs(posed - read_obj(out / "meshes" / f"frame_{n:05d}.obj").vertices).max() < 0.01  # mm
