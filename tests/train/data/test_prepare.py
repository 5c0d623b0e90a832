"""prepare_dataset on real photos: .pts landmarks, dlib descriptors against dlib itself, identities,
bad photos, resume."""
from __future__ import annotations

import json
import os
import shutil

import dlib
import numpy as np
import pytest
import torch

from morphable.errors import InputError
from morphable.identity import DlibFaceNet
from morphable.identity.dlib_serialization import default_weights_path
from morphable.io.image import read_image
from morphable.train.data import load_dataset, prepare_dataset, read_identities
from morphable.train.data.prepare import find_photos, item_key
from tests.conftest import data_file

DEEPFACE = "deepface/tests/unit/dataset"
LFPW = "superviseddescent/examples/data/ibug_lfpw_trainset"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Copies of real photos: alice/ = img1, img2 (one person), bob/ = img22 (another), lfpw/ = a photo
    with its .pts file, and a corrupt .jpg."""
    root = tmp_path_factory.mktemp("photos")
    for person, names in (("alice", ("img1.jpg", "img2.jpg")), ("bob", ("img22.jpg",))):
        (root / person).mkdir()
        for name in names:
            shutil.copy(data_file(f"{DEEPFACE}/{name}"), root / person / name)
    (root / "lfpw").mkdir()
    for name in ("image_0002.png", "image_0002.pts"):
        shutil.copy(data_file(f"{LFPW}/{name}"), root / "lfpw" / name)
    (root / "lfpw" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


@pytest.fixture(scope="module")
def prepared(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    report = prepare_dataset([photos], out, identity_from_folder=True, source="unit", progress=False)
    return report, load_dataset(out)


@pytest.fixture(scope="module")
def recogniser():
    return dlib.face_recognition_model_v1(str(default_weights_path()))


def _by_name(dataset, name):
    return next(i for i, item in enumerate(dataset.items) if item.path.endswith(name))


def test_report_and_manifest(prepared, photos):
    report, ds = prepared
    assert (report.n_photos, report.n_faces, report.n_resumed) == (5, 4, 0)
    assert [os.path.relpath(i.path, photos) for i in ds.items] == \
        ["alice/img1.jpg", "alice/img2.jpg", "bob/img22.jpg", "lfpw/image_0002.png"]  # folder order
    assert [i.identity for i in ds.items] == ["alice", "alice", "bob", "lfpw"]
    assert {i.source for i in ds.items} == {"unit"} and all(i.face == 0 for i in ds.items)
    assert [i.landmarks_from for i in ds.items] == ["dlib", "dlib", "dlib", "file"]
    assert [i.key for i in ds.items] == [item_key(photos / p, "largest", 0) for p in
                                         ("alice/img1.jpg", "alice/img2.jpg", "bob/img22.jpg", "lfpw/image_0002.png")]
    assert ds.descriptors.shape == (4, 128) and ds.pooled.shape == (4, 256) and ds.landmarks.shape == (4, 68, 2)
    for item in ds.items:  # the box holds the face's landmarks (the detector box is a little looser)
        l, t, r, b = item.box
        w, h = r - l, b - t
        inside = (item.landmarks >= [l - 0.2 * w, t - 0.3 * h]) & (item.landmarks <= [r + 0.2 * w, b + 0.2 * h])
        assert inside.mean() > 0.95 and r - l > 50


def test_bad_photo_is_reported_and_the_rest_written(prepared, photos):
    report, ds = prepared
    assert len(report.bad) == 1 and report.bad[0].path == str(photos / "lfpw" / "broken.jpg")
    assert "cannot read image" in report.bad[0].problem and "\n" not in report.bad[0].problem
    lines = (ds.folder / "bad.jsonl").read_text().splitlines()
    assert [json.loads(ln)["path"] for ln in lines] == [report.bad[0].path]


def test_landmarks_from_file_are_the_pts_minus_one(prepared, photos):
    _, ds = prepared
    item = ds.items[_by_name(ds, "image_0002.png")]
    lines = (photos / "lfpw" / "image_0002.pts").read_text().splitlines()
    raw = np.array([[float(v) for v in ln.split()] for ln in lines[lines.index("{") + 1:lines.index("}")]])
    assert raw.shape == (68, 2)
    assert np.array_equal(item.landmarks, raw - 1.0)
    assert np.array_equal(item.box, [*(raw - 1).min(0), *(raw - 1).max(0)])


def test_chips_and_descriptors_match_dlib(prepared, recogniser):
    """Independent reference: dlib's own network on our stored chip (same input: ~1e-6), and dlib's whole
    pipeline (its own chip cut from the same 68 points) for the detected faces."""
    _, ds = prepared
    for index, item in enumerate(ds.items):
        chip = read_image(ds.folder / item.chip)
        assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
        theirs = np.array(recogniser.compute_face_descriptor(chip))
        assert np.abs(ds.descriptors[index].double().numpy() - theirs).max() <= 1e-5
        if item.landmarks_from == "dlib":  # integer points: dlib can take them as they are
            parts = dlib.points([dlib.point(int(x), int(y)) for x, y in item.landmarks])
            shape = dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), parts)
            photo = read_image(item.path)
            whole = np.array(recogniser.compute_face_descriptor(photo, shape, 0, 0.25))
            mine = ds.descriptors[index].double().numpy()
            # chips differ by dlib's integer pyramid truncation only (measured max 1.7e-3, norm 0.0074)
            assert np.abs(mine - whole).max() <= 4e-3 and np.linalg.norm(mine - whole) <= 0.02
            # and dlib's own chip is ours within a few grey levels
            theirs_chip = dlib.get_face_chip(photo, shape, 150, 0.25).astype(np.int16)
            assert np.abs(theirs_chip - chip).mean() <= 1.5
    # pooled features: the fc layer's input
    net = DlibFaceNet()
    assert torch.allclose(ds.pooled @ net.fc_weight.T, ds.descriptors, atol=1e-5)
    with torch.no_grad():
        assert (net(ds.chips(range(len(ds)))) - ds.descriptors).abs().max() <= 1e-6


def test_same_person_closer_than_different(prepared):
    _, ds = prepared
    d = torch.cdist(ds.descriptors.double(), ds.descriptors.double())
    img1, img2, img22 = (_by_name(ds, n) for n in ("img1.jpg", "img2.jpg", "img22.jpg"))
    assert d[img1, img2] < 0.6 < min(d[img1, img22], d[img2, img22])  # dlib's same-person threshold


def test_rerun_resumes_without_recomputing(prepared, photos, monkeypatch):
    report, ds = prepared
    before = {n: (ds.folder / n).read_bytes() for n in ("manifest.jsonl", "descriptors.npy", "pooled.npy")}
    calls = []
    original = DlibFaceNet.features
    monkeypatch.setattr(DlibFaceNet, "features", lambda self, x: calls.append(len(x)) or original(self, x))
    again = prepare_dataset([photos], ds.folder, identity_from_folder=True, source="unit", progress=False)
    assert (again.n_faces, again.n_resumed, len(again.bad), calls) == (4, 4, 1, [])
    assert {n: (ds.folder / n).read_bytes() for n in before} == before
    # a photo whose record is gone, and one that changed on disk, are prepared again; nothing else is
    record = next((ds.folder / "photos").glob("*.json"))
    redo = json.loads(record.read_text())["path"]
    record.unlink()
    touched = photos / "alice" / "img2.jpg"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    third = prepare_dataset([photos], ds.folder, identity_from_folder=True, source="unit", progress=False)
    assert third.n_resumed == 4 - len({redo, str(touched)}) and calls == [1] * len({redo, str(touched)})
    assert {n: (ds.folder / n).read_bytes() for n in before} == before  # same content, recomputed


def test_identities_file_labels_and_filters(tmp_path, photos):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"a": ["img1", "img2"], "z": ["img99"]}))
    stems = read_identities(ids)
    assert stems == {"img1": "a", "img2": "a", "img99": "z"}
    report = prepare_dataset([photos / "alice", photos / "bob"], tmp_path / "ds", identities=stems, progress=False)
    assert (report.n_photos, report.n_unlisted, report.missing, report.bad) == (2, 1, ["img99"], [])
    ds = load_dataset(tmp_path / "ds")
    assert [(os.path.basename(i.path), i.identity, i.source) for i in ds.items] == \
        [("img1.jpg", "a", "photos"), ("img2.jpg", "a", "photos")]
    ids.write_text(json.dumps({"a": ["img1"], "b": ["img1"]}))
    with pytest.raises(InputError, match="'img1' is listed under 'a' and 'b'"):
        read_identities(ids)
    ids.write_text(json.dumps({"a": "img1"}))
    with pytest.raises(InputError, match="expected a list of photo stems"):
        read_identities(ids)
    with pytest.raises(ValueError, match="not both"):
        prepare_dataset([photos], tmp_path / "x", identities=stems, identity_from_folder=True)


def test_face_choice_on_a_group_photo(tmp_path, monkeypatch):
    """selfie-many-people.jpg: 'all' keeps every detected face in score order; 'largest' keeps the biggest
    box and 'best' the first detection, told apart by handing them the detections smallest first."""
    import morphable.detect.dlib68 as dlib68

    photo = data_file(f"{DEEPFACE}/selfie-many-people.jpg")
    prepare_dataset([photo], tmp_path / "all", face="all", detector="hog", progress=False)
    every = load_dataset(tmp_path / "all")
    assert len(every) >= 3 and [i.face for i in every.items] == list(range(len(every)))
    assert len({i.key for i in every.items}) == len(every)
    assert torch.pdist(every.descriptors).min() > 0.6  # different people

    def area(box):
        return (box[2] - box[0]) * (box[3] - box[1])

    detect = dlib68.detect_landmarks
    monkeypatch.setattr(dlib68, "detect_landmarks",
                        lambda *a, **k: sorted(detect(*a, **k), key=lambda d: area(d.box)))
    kept = {}
    for choice in ("largest", "best"):
        prepare_dataset([photo], tmp_path / choice, face=choice, detector="hog", progress=False)
        kept[choice] = load_dataset(tmp_path / choice).items
        assert len(kept[choice]) == 1
    areas = [area(i.box) for i in every.items]
    assert np.array_equal(kept["largest"][0].landmarks, every.items[int(np.argmax(areas))].landmarks)
    assert np.array_equal(kept["best"][0].landmarks, every.items[int(np.argmin(areas))].landmarks)
    assert kept["largest"][0].key != every.items[0].key  # keys differ between face choices


def test_find_photos(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for name in ("a/x.JPG", "a/deep/y.png", "a/notes.txt", "a/.z.jpg", "a/.hidden/w.jpg", "a/b.ppm", "a/c.bmp",
                 "a/d.jpeg", "a/e.pts"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a" / "out").mkdir()
    (tmp_path / "a" / "out" / "chip.png").write_bytes(b"")
    found = find_photos([tmp_path / "a", tmp_path / "a" / "x.JPG", tmp_path / "a" / "notes.txt"],
                        exclude=tmp_path / "a" / "out")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == \
        ["a/b.ppm", "a/c.bmp", "a/d.jpeg", "a/x.JPG", "a/deep/y.png", "a/notes.txt"]
    with pytest.raises(InputError, match="no such photo or folder"):
        find_photos([tmp_path / "missing"])


def test_corrupt_pts_and_no_face_are_bad_items(tmp_path):
    (tmp_path / "p").mkdir()
    shutil.copy(data_file(f"{LFPW}/image_0003.png"), tmp_path / "p" / "ok.png")
    shutil.copy(data_file(f"{LFPW}/image_0003.pts"), tmp_path / "p" / "ok.pts")
    shutil.copy(data_file(f"{LFPW}/image_0003.png"), tmp_path / "p" / "short.png")
    (tmp_path / "p" / "short.pts").write_text("version: 1\nn_points: 2\n{\n1 2\n3 4\n}\n")
    shutil.copy(data_file(f"{LFPW}/image_0003.png"), tmp_path / "p" / "flat.png")
    (tmp_path / "p" / "flat.pts").write_text("5 5\n" * 68)  # all 68 points on one pixel
    from PIL import Image

    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / "p" / "grey.png")
    report = prepare_dataset([tmp_path / "p"], tmp_path / "ds", detector="hog", progress=False)
    problems = sorted(b.problem for b in report.bad)
    assert report.n_faces == 1 and len(problems) == 3
    assert problems[0] == f"{tmp_path / 'p' / 'flat.pts'}: degenerate landmarks: they span 0.0 x 0.0 px " \
        "(a face needs at least 10.0 px each way)"
    assert problems[1] == f"{tmp_path / 'p' / 'grey.png'}: no face found"
    assert problems[2] == f"{tmp_path / 'p' / 'short.pts'}: expected 68 landmarks (x, y), found 2"
