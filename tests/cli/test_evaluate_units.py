"""Issue 16 defects of ``morphable evaluate``: MICC units (``--gt-unit``/``--pred-unit``, warnings for a
scan whose size suggests metres and for a crop that keeps the whole scan) and the AFLW2000 yaws (default
``index.json`` beside the ground truth, one-line error otherwise)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from morphable.cli import cli
from morphable.detect.formats import read_landmarks, write_pts
from morphable.eval.micc import suggested_unit
from morphable.eval.nme import bbox_size
from tests.cli.test_evaluate_cli import _face_patch, _write_obj


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_suggested_unit_by_size():
    vertices, _ = _face_patch(n=5, size=200.0)              # a 200 mm face patch
    assert suggested_unit(vertices) is None
    assert suggested_unit(vertices / 10) == "cm" and suggested_unit(vertices / 1000) == "m"


@pytest.fixture(scope="module")
def metre_scan(tmp_path_factory):
    """A 200 mm face patch written in metres, and the same surface as a prediction in mm."""
    folder = tmp_path_factory.mktemp("micc")
    vertices, triangles = _face_patch(n=24, size=200.0)
    _write_obj(folder / "gt_m.obj", vertices / 1000, triangles)
    _write_obj(folder / "pred.obj", vertices, triangles)
    return folder


def test_micc_warns_for_a_scan_in_metres_read_as_mm(metre_scan):
    result = _invoke("evaluate", "micc", "--gt", metre_scan / "gt_m.obj", "--pred", metre_scan / "pred.obj",
                     "--no-align", "--json", metre_scan / "wrong.json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert "gt_m.obj" in warnings[0] and "--gt-unit m" in warnings[0]
    assert "kept the whole scan" in warnings[1] and "576 vertices" in warnings[1]
    assert json.loads((metre_scan / "wrong.json").read_text())["crop_kept_all"] is True


def test_micc_gt_unit_metres_measures_the_surface_in_mm(metre_scan):
    result = _invoke("evaluate", "micc", "--gt", metre_scan / "gt_m.obj", "--gt-unit", "m",
                     "--pred", metre_scan / "pred.obj", "--no-align", "--json", metre_scan / "right.json")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    figures = json.loads((metre_scan / "right.json").read_text())
    assert figures["mean_mm"] < 1e-6 and figures["crop_kept_all"] is False   # same surface, cropped at 95 mm
    assert figures["n_points"] < 2 * 576                   # the corners (141 mm from the tip) were cropped


def _write_case(folder, rng, names, offsets):
    (folder / "gt").mkdir()
    (folder / "pred").mkdir()
    for name, dx in zip(names, offsets):
        gt = rng.uniform(0, 100, size=(68, 2))
        gt[0], gt[1] = [0, 0], [100, 100]                              # box 100 x 100
        write_pts(folder / "gt" / f"{name}.pts", gt)
        write_pts(folder / "pred" / f"{name}.pts", gt + [dx, 0.0])


def test_nme_aflw2000_reads_index_json_beside_the_ground_truth(tmp_path):
    _write_case(tmp_path, np.random.default_rng(1), ["image00001", "image00002", "image00003"], [1.0, 2.0, 4.0])
    records = [{"image": f"AFLW2000/image0000{i}.jpg", "yaw_rad": yaw} for i, yaw in ((1, 10.0), (2, -45.0), (3, 75.0))]
    (tmp_path / "gt" / "index.json").write_text(json.dumps(records))        # the corpus's layout: degrees
    result = _invoke("evaluate", "nme", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt",
                     "--protocol", "aflw2000", "--json", tmp_path / "nme.json")
    assert result.exit_code == 0, result.output
    assert "read as degrees" in result.stderr
    figures = json.loads((tmp_path / "nme.json").read_text())
    assert [b["count"] for b in figures["bins"]] == [1, 1, 1]
    assert figures["nme"] == pytest.approx((0.01 + 0.02 + 0.04) / 3)
    records = [{"image": r["image"], "yaw_rad": float(np.radians(r["yaw_rad"]))} for r in records]
    (tmp_path / "gt" / "index.json").write_text(json.dumps(records))        # true radians: converted
    result = _invoke("evaluate", "nme", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt",
                     "--protocol", "aflw2000", "--json", tmp_path / "nme.json")
    assert result.exit_code == 0 and "warning" not in result.stderr
    assert [b["count"] for b in json.loads((tmp_path / "nme.json").read_text())["bins"]] == [1, 1, 1]


def test_nme_aflw2000_without_yaws_is_one_line_saying_what_to_pass(tmp_path):
    _write_case(tmp_path, np.random.default_rng(2), ["a"], [1.0])
    result = _invoke("evaluate", "nme", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--protocol", "aflw2000")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--yaws" in result.stderr and "index.json" in result.stderr


def test_nme_aflw2000_on_the_corpus_uses_its_index(data, tmp_path):
    """The corpus's re-annotated AFLW2000-3D landmarks with its own index.json (yaws) as the default."""
    index = data("_derived/aflw2000_3d/index.json")
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    (gt_dir / "index.json").write_bytes(index.read_bytes())
    (tmp_path / "pred").mkdir()
    expected = []
    for record in json.loads(index.read_text()):
        name = record["image"].rsplit("/", 1)[1].split(".")[0]
        gt = read_landmarks(data(f"_derived/aflw2000_3d/{name}.reannotated68.pts"))
        write_pts(gt_dir / f"{name}.pts", gt)
        write_pts(tmp_path / "pred" / f"{name}.pts", gt + [3.0, 4.0])          # 5 px off everywhere
        expected.append((abs(record["yaw_rad"]), 5.0 / bbox_size(gt[None])[0]))
    result = _invoke("evaluate", "nme", "--pred", tmp_path / "pred", "--gt", gt_dir, "--protocol", "aflw2000",
                     "--json", tmp_path / "nme.json")
    assert result.exit_code == 0, result.output
    bins = json.loads((tmp_path / "nme.json").read_text())["bins"]
    for b, (lo, hi) in zip(bins, ((0, 30), (30, 60), (60, 90))):
        inside = [e for yaw, e in expected if (yaw > lo or lo == 0) and (yaw <= hi or hi == 90)]
        assert b["count"] == len(inside)
        assert b["nme"] == pytest.approx(np.mean(inside), rel=1e-5)


@pytest.mark.parametrize("content", ['{"a": NaN}', '{"a": 1e999}', '{"a": 10000000000000000000000}', '[{"image": 3}]',
                                     '"text"', '{"a": "10"}'])
def test_nme_bad_yaw_file_is_one_line(tmp_path, content):
    _write_case(tmp_path, np.random.default_rng(3), ["a"], [1.0])
    (tmp_path / "gt" / "yaws.json").write_text(content)
    result = _invoke("evaluate", "nme", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt", "--protocol", "aflw2000")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "yaws.json" in result.stderr
