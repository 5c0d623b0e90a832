"""Model registry: mirror and download fetching with checksums, converted cache, user models, load_any."""
from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import threading

import numpy as np
import pytest

import morphable
from morphable.errors import ModelFileError
from morphable.models import registry
from morphable.models.formats import load_any, loader_for
from morphable.models.formats.npz import save_npz
from tests.conftest import data_file

SFM_FILES = [f.path for f in registry.OPEN_MODELS["sfm"].layouts[0].files]


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MORPHABLE_HOME", str(home))
    return home


@pytest.fixture
def sfm_mirror(tmp_path, monkeypatch):
    """A private mirror holding the SFM files (symlinks into the corpus)."""
    root = tmp_path / "mirror"
    for rel in SFM_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(data_file(rel))
    monkeypatch.setenv("MORPHABLE_MIRROR", str(root))
    return root


def test_pinned_checksums_match_the_corpus():
    lines = data_file("SHA256SUMS.txt").read_text().splitlines()
    sums = {line.split()[1].removeprefix("./"): line.split()[0] for line in lines if line.strip()}
    for model in registry.OPEN_MODELS.values():
        for layout in model.layouts:
            for f in layout.files:
                if f.sha256 is not None:
                    assert sums[f.path.replace("FaceXModel/identity0", "FaceXModel_subset/identity0")
                                .replace("FaceXModel/jawOpen", "FaceXModel_subset/jawOpen")
                                .replace("FaceXModel/eyeBlink_L", "FaceXModel_subset/eyeBlink_L")] == f.sha256
    sources = {"ict": "ICT-FaceKit/SOURCE_COMMIT", "sfm": "eos/SOURCE_COMMIT"}
    for name, rel in sources.items():
        assert data_file(rel).read_text().strip() == registry.OPEN_MODELS[name].commit


def test_ict_vertex_stack_digest_matches_packed_npz():
    with np.load(data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")) as z:
        meshes = dict(zip((str(n) for n in z["names"]), z["vertices"]))
    assert registry.vertex_stack_sha256(meshes) == registry.ICT_VERTEX_STACK_SHA256
    obj_names = {f.path.split("/")[-1][:-4] for f in registry.OPEN_MODELS["ict"].layouts[1].files
                 if f.path.endswith(".obj")}
    assert obj_names == set(meshes)  # the OBJ layout lists exactly the 158 official meshes


def test_ict_obj_layout_converts_and_checks_content(tmp_path):
    """The official OBJ-folder layout, on a folder of the subset files plus the neutral mesh."""
    root = tmp_path / "root"
    folder = root / "ICT-FaceKit" / "FaceXModel"
    folder.mkdir(parents=True)
    names = ["generic_neutral_mesh", "identity000", "identity001", "jawOpen", "eyeBlink_L"]
    for name in ("generic_neutral_mesh.obj", "vertex_indices.json"):
        (folder / name).symlink_to(data_file(f"ICT-FaceKit/FaceXModel/{name}"))
    for name in names[1:]:
        (folder / f"{name}.obj").symlink_to(data_file(f"ICT-FaceKit/FaceXModel_subset/{name}.obj"))
    with np.load(data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")) as z:
        packed = dict(zip((str(n) for n in z["names"]), z["vertices"]))
    digest = registry.vertex_stack_sha256({n: packed[n] for n in names})
    files = tuple(f for f in registry.OPEN_MODELS["ict"].layouts[1].files
                  if f.path.split("/")[-1][:-4] in names or f.path.endswith(".json"))
    layout = registry.Layout("subset", files, registry.convert_ict_objs, digest)
    model = layout.convert(root, layout)
    assert model.n_identity == 2 and model.expression_names == ["eyeBlink_L", "jawOpen"]
    altered = dataclasses.replace(layout, content_sha256="0" * 64)
    with pytest.raises(ModelFileError, match="pinned checksum"):
        altered.convert(root, altered)


def test_mirror_fetch_convert_once(fresh_home, sfm_mirror, monkeypatch, capsys):
    model = registry.load_model("sfm")
    assert "NON-COMMERCIAL" in capsys.readouterr().err
    cached = registry.converted_path("sfm")
    assert cached is not None and cached.parent == fresh_home / "converted"
    assert not (fresh_home / "sources").exists()  # mirror files are used in place, not copied
    stamp = cached.stat().st_mtime_ns

    def no_conversion(*args):
        raise AssertionError("converted twice")

    layout = dataclasses.replace(registry.OPEN_MODELS["sfm"].layouts[0], convert=no_conversion)
    monkeypatch.setitem(registry.OPEN_MODELS, "sfm", dataclasses.replace(registry.OPEN_MODELS["sfm"],
                                                                         layouts=(layout,)))
    again = registry.load_model("sfm")
    assert cached.stat().st_mtime_ns == stamp
    assert again is not model and torch_equal(again.identity_basis, model.identity_basis)
    again.identity_basis.zero_()  # copies are independent
    assert registry.load_model("sfm").identity_basis.abs().sum() > 0
    assert [r["status"] for r in registry.list_models() if r["name"] == "sfm"] == ["converted"]


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_mirror_checksum_mismatch_and_missing_file(fresh_home, sfm_mirror):
    target = sfm_mirror / "eos/share/ibug_to_sfm.txt"
    text = target.read_text()
    target.unlink()
    target.write_text(text.replace("114", "115"))
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        registry.load_model("sfm")
    target.unlink()
    with pytest.raises(ModelFileError, match="ibug_to_sfm.txt.*missing"):
        registry.load_model("sfm")
    assert registry.converted_path("sfm") is None


@pytest.fixture
def server(tmp_path):
    """A local HTTP server serving a folder laid out like the eos repository (share/...)."""
    root = tmp_path / "www"
    for rel in SFM_FILES:
        dest = root / rel.removeprefix("eos/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(data_file(rel))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_download_without_mirror(fresh_home, server, monkeypatch):
    root, url = server
    monkeypatch.delenv("MORPHABLE_MIRROR", raising=False)
    sfm = registry.OPEN_MODELS["sfm"]
    files = tuple(dataclasses.replace(f, url=url + f.path.removeprefix("eos/")) for f in sfm.layouts[0].files)
    local = dataclasses.replace(sfm, layouts=(dataclasses.replace(sfm.layouts[0], files=files),))
    monkeypatch.setitem(registry.OPEN_MODELS, "sfm", local)
    layout, where = registry.fetch("sfm", notify=lambda message: None)
    assert where == fresh_home / "sources"
    for f in files:
        assert registry.sha256_file(where / f.path) == f.sha256
    assert registry.load_model("sfm").n_vertices == 3448
    # already downloaded and verified files are kept; a corrupted one is downloaded again
    (where / files[2].path).write_text("garbage")
    registry.fetch("sfm", notify=lambda message: None)
    assert registry.sha256_file(where / files[2].path) == files[2].sha256


def test_download_errors(fresh_home, server):
    root, url = server
    dest = fresh_home / "x" / "ibug_to_sfm.txt"
    with pytest.raises(ModelFileError, match="checksum mismatch"):
        registry.download(url + "share/ibug_to_sfm.txt", dest, "0" * 64)
    assert not dest.exists() and not list(dest.parent.iterdir())  # no partial file left behind
    with pytest.raises(ModelFileError, match="download failed"):
        registry.download(url + "share/absent.bin", dest, None)
    registry.download(url + "share/ibug_to_sfm.txt", dest, None)
    assert dest.read_bytes() == (root / "share/ibug_to_sfm.txt").read_bytes()


def test_user_models(fresh_home, tmp_path):
    from morphable.models.formats.sfm import load_sfm

    path = tmp_path / "mine.npz"
    save_npz(load_sfm(data_file("eos/share/sfm_shape_3448.bin")), path)
    registry.add_model("my-sfm", path)
    saved = json.loads((fresh_home / "registry.json").read_text())
    assert saved["models"]["my-sfm"] == {"path": str(path.resolve()), "format": "npz:load_npz"}
    assert morphable.load_model("my-sfm").n_vertices == 3448
    assert any(r["name"] == "my-sfm" and r["status"] == "ok" for r in registry.list_models())

    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="bad.npz"):
        registry.add_model("broken", bad)
    with pytest.raises(ModelFileError, match="invalid model name"):
        registry.add_model("ict", path)
    with pytest.raises(ModelFileError, match="invalid model name"):
        registry.add_model("Bad Name", path)
    assert set(registry.user_models()) == {"my-sfm"}  # failed adds leave the registry unchanged

    path.unlink()
    with pytest.raises(ModelFileError, match="not found"):
        registry.load_model("my-sfm")
    assert any(r["status"] == "missing file" for r in registry.list_models())
    (fresh_home / "registry.json").write_text("{oops")
    with pytest.raises(ModelFileError, match="registry"):
        registry.load_model("my-sfm")


def test_load_model_by_path_and_unknown_name(fresh_home, tmp_path):
    path = data_file("eos/share/sfm_shape_3448.bin")
    assert morphable.load_model(str(path)).name == "sfm"
    with pytest.raises(ModelFileError, match="no such model"):
        morphable.load_model("nonexistent-model")


def test_load_any_dispatch(tmp_path):
    assert loader_for(data_file("eos/share/sfm_shape_3448.bin")) == "sfm:load_sfm"
    assert loader_for(data_file("ICT-FaceKit/FaceXModel_vertices_float32.npz")) == "ict:load_ict"
    assert loader_for(data_file("ICT-FaceKit/FaceXModel")) == "ict:load_ict"
    for suffix, target in ((".mat", "bfm:load_bfm2009"), (".h5", "bfm:load_bfm2017"), (".pkl", "flame:load_flame"),
                           (".obj", "mediapipe:load_mediapipe")):
        (tmp_path / f"m{suffix}").write_bytes(b"")
        assert loader_for(tmp_path / f"m{suffix}") == target
    model_npz = tmp_path / "native.npz"
    np.savez(model_npz, header=np.array("{}"))
    assert loader_for(model_npz) == "npz:load_npz"
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(2))
    bad_bin = tmp_path / "bad.bin"
    bad_bin.write_bytes(b"\xff\xff\xff\xff")
    cases = [other, bad_bin, tmp_path / "model.xyz", tmp_path / "missing.npz", tmp_path, tmp_path / "text.npz"]
    (tmp_path / "model.xyz").write_text("x")
    (tmp_path / "text.npz").write_text("x")
    for path in cases:
        with pytest.raises(ModelFileError):
            load_any(path)
    assert load_any(data_file("eos/share/sfm_shape_3448.bin")).n_vertices == 3448
