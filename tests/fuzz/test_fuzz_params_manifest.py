"""Fuzzed ``params.json`` (``io/params.py``: read + upgrade of the versioned schema, and what
``Reconstruction.load``/``from_params`` and ``morphable render`` read from it) and training manifests
(``train/data/manifest.py``: ``read_manifest``, ``load_dataset``).

Seeds are real: a ``params.json`` written by ``morphable.reconstruct`` on a corpus photo (SFM model, the
photo's ``.pts``), and a dataset folder written by ``prepare_dataset`` on two corpus photos with ``.pts``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import morphable
from morphable.cli.render import render_params
from morphable.io.params import read_fit_params
from morphable.reconstruct import Reconstruction
from morphable.train.data.manifest import FIELDS, load_dataset, read_manifest
from tests.conftest import data_file
from tests.fuzz.harness import FLOATS, INTS, check, fuzz_settings, mutated, write

pytestmark = pytest.mark.fuzz

LFPW = "superviseddescent/examples/data/ibug_lfpw_trainset"


# --- seeds --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fit_folder(sfm, tmp_path_factory) -> Path:
    """A reconstruction's output folder (``params.json`` + ``arrays.npz``) from one corpus photo."""
    rec = morphable.reconstruct(data_file(f"{LFPW}/image_0001.png"), sfm, landmarks=data_file(f"{LFPW}/image_0001.pts"),
                                shape_from="landmarks", iterations=3, texture_size=64)
    folder = tmp_path_factory.mktemp("fit") / "out"
    rec.save(folder, report=False)
    return folder


@pytest.fixture(scope="session")
def dataset_folder(tmp_path_factory) -> Path:
    """A dataset prepared from two corpus photos with their ``.pts`` files."""
    from morphable.train.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("dataset")
    photos = root / "photos"
    photos.mkdir()
    for name in ("image_0001", "image_0002"):
        for suffix in (".png", ".pts"):
            shutil.copy(data_file(f"{LFPW}/{name}{suffix}"), photos / f"{name}{suffix}")
    report = prepare_dataset([photos], root / "ds", progress=False)
    assert report.n_faces == 2, report
    return root / "ds"


# --- params.json ----------------------------------------------------------------------------------------
def _case_folder(tmp_path: Path, fit_folder: Path, data: bytes) -> Path:
    """``data`` as ``params.json`` in a fresh copy of the fit's folder (the real ``arrays.npz`` beside it).
    An error may name ``params.json`` or the arrays file it names: the checks ask for the folder's name."""
    folder = tmp_path / "case"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(fit_folder, folder)
    return write(folder, "params.json", data)


def test_params_corpus_mutations(fit_folder, tmp_path):
    raw = (fit_folder / "params.json").read_bytes()

    @fuzz_settings()
    @given(mutated(raw, text=True))
    def case(data):
        check("params.json", read_fit_params, write(tmp_path, "params.json", data))

    case()


def test_params_load_mutations(sfm, fit_folder, tmp_path):
    """``Reconstruction.load``: the params read, upgraded, and the model evaluated at the coefficients."""
    raw = (fit_folder / "params.json").read_bytes()

    @fuzz_settings()
    @given(mutated(raw, text=True))
    def case(data):
        path = _case_folder(tmp_path, fit_folder, data)
        check("params.json load", lambda p: Reconstruction.load(p.parent, model=sfm), path, name_in_message="case")

    case()


def test_params_render_mutations(sfm, fit_folder, tmp_path):
    """``morphable render PARAMS``: the stored camera drives the renderer (small size, the SFM model)."""
    raw = (fit_folder / "params.json").read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw, text=True))
    def case(data):
        path = write(tmp_path, "params.json", data)
        check("params.json render", lambda p: render_params(p, size=24, model_name="sfm"), path)

    case()


_JUNK = st.recursive(st.none() | st.booleans() | st.sampled_from(INTS) | st.integers(-2**70, 2**70)
                     | st.sampled_from(FLOATS) | st.floats() | st.text(max_size=5),
                     lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children,
                                                                                        max_size=3), max_leaves=30)
_NUMBER = st.one_of(st.sampled_from(INTS), st.sampled_from(FLOATS), st.floats(-1e3, 1e3), st.booleans(), st.none(),
                    st.text(max_size=3))
_LEGACY = ("rotation", "translation", "scale", "focal", "principal_point", "light", "light_layout", "albedo",
           "energies", "photometric_error")


def _vary(value, draw):
    """``value`` with one element of a list (or one entry of an object) replaced, or the whole replaced."""
    if isinstance(value, list) and value and draw(st.booleans()):
        out = list(value)
        i = draw(st.integers(0, len(out) - 1))
        out[i] = _vary(out[i], draw)
        if draw(st.integers(0, 4)) == 0:
            out = out[:draw(st.integers(0, len(out)))] + draw(st.lists(_NUMBER, max_size=3))
        return out
    if isinstance(value, dict) and value and draw(st.booleans()):
        out = dict(value)
        key = draw(st.sampled_from(sorted(out)))
        if draw(st.integers(0, 3)) == 0:
            del out[key]
        else:
            out[key] = _vary(out[key], draw)
        return out
    return draw(st.one_of(_NUMBER, _JUNK))


@st.composite
def params_objects(draw, seed: dict) -> dict:
    """The real params with 1 to 4 keys varied (an element, an entry or the whole value) or deleted; half of
    the time in the versionless dialect (camera at the top level, ``image_size`` as ``[H, W]``, photometric
    keys at the top level)."""
    params = json.loads(json.dumps(seed))
    if draw(st.booleans()):
        camera = params.pop("camera")
        for key in ("schema", "version"):
            params.pop(key)
        params.update({k: v for k, v in camera.items() if k != "type"})
        if draw(st.booleans()):
            params["focal"], params["principal_point"] = 1000.0, [200.0, 300.0]
            params["translation"] = params["translation"] + [-1000.0]
        params["image_size"] = [params["image_size"]["height"], params["image_size"]["width"]]
        if draw(st.booleans()):
            params.pop("photometric")
            params.update({"light": [0.5] * 27, "albedo": {"kind": "coefficients", "values": [0.1] * 10},
                           "energies": {"landmarks": 1.0}, "photometric_error": 0.1})
    elif draw(st.booleans()):
        params["photometric"] = {"light": [0.5] * 27, "light_layout": "sh9",
                                 "albedo": {"kind": "coefficients", "values": [0.1] * 10},
                                 "energies": {"landmarks": 1.0}, "photometric_error": 0.1}
    keys = sorted(set(params) | set(_LEGACY) | {"version", "schema"})
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(keys))
        if key in params and draw(st.integers(0, 4)) == 0:
            del params[key]
        else:
            params[key] = _vary(params.get(key), draw)
    return params


def test_params_generated(sfm, fit_folder, tmp_path):
    """Nearly valid parameter objects (both dialects) through ``Reconstruction.load``."""
    seed = json.loads((fit_folder / "params.json").read_text())

    @fuzz_settings()
    @given(params_objects(seed))
    def case(params):
        path = _case_folder(tmp_path, fit_folder, json.dumps(params, allow_nan=True).encode())
        check("params.json load", lambda p: Reconstruction.load(p.parent, model=sfm), path, name_in_message="case")

    case()


def test_params_generated_render(sfm, fit_folder, tmp_path):
    seed = json.loads((fit_folder / "params.json").read_text())

    @fuzz_settings(0.5)
    @given(params_objects(seed))
    def case(params):
        path = write(tmp_path, "params.json", json.dumps(params, allow_nan=True).encode())
        check("params.json render", lambda p: render_params(p, size=24, model_name="sfm"), path)

    case()


# --- manifests ------------------------------------------------------------------------------------------
def test_manifest_corpus_mutations(dataset_folder, tmp_path):
    raw = (dataset_folder / "manifest.jsonl").read_bytes()

    @fuzz_settings()
    @given(mutated(raw, text=True))
    def case(data):
        check("manifest", read_manifest, write(tmp_path, "manifest.jsonl", data))

    case()


def _open_dataset(changed: Path) -> int:
    """What training reads from the folder holding ``changed``: the manifest, both feature arrays, every chip."""
    dataset = load_dataset(changed.parent)
    dataset.chips(range(len(dataset)))
    return len(dataset)


@pytest.mark.parametrize("target", ["manifest.jsonl", "descriptors.npy"])
def test_dataset_mutations(dataset_folder, tmp_path, target):
    """``load_dataset`` on a copy of the prepared folder with its manifest or a feature array mutated."""
    raw = (dataset_folder / target).read_bytes()

    @fuzz_settings(0.5)
    @given(mutated(raw, text=target.endswith(".jsonl")))
    def case(data):
        folder = tmp_path / "ds"
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(dataset_folder, folder)
        write(folder, target, data)
        check("dataset", _open_dataset, folder / target, name_in_message=folder.name)

    case()


@st.composite
def manifest_text(draw, seeds: list[dict]) -> bytes:
    """0 to 4 lines: real items (possibly repeated) with fields varied, deleted or added, blank lines and
    JSON values that are not objects; with or without the last newline."""
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append(json.dumps(draw(_JUNK), allow_nan=True))
            continue
        if kind == 1:
            lines.append(draw(st.sampled_from(["", "  ", "\t", "{", "}", "null"])))
            continue
        item = dict(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 3))):
            key = draw(st.sampled_from(FIELDS + ("extra",)))
            if key in item and draw(st.integers(0, 4)) == 0:
                del item[key]
            else:
                item[key] = _vary(item.get(key), draw)
        lines.append(json.dumps(item, allow_nan=True))
    text = "\n".join(lines) + ("\n" if draw(st.booleans()) else "")
    return text.encode()


@st.composite
def dataset_manifest(draw, seeds: list[dict]) -> bytes:
    """The folder's real items, one field of one item varied (or removed), sometimes an item dropped,
    repeated or swapped, so the feature arrays and chips still match or not."""
    items = [dict(item) for item in seeds]
    item = draw(st.sampled_from(items))
    key = draw(st.sampled_from(FIELDS))
    if draw(st.integers(0, 9)) == 0:
        del item[key]
    else:
        item[key] = _vary(item[key], draw)
    change = draw(st.integers(0, 5))
    if change == 0:
        items.pop(draw(st.integers(0, len(items) - 1)))
    elif change == 1:
        items.append(draw(st.sampled_from(items)))
    elif change == 2:
        items.reverse()
    return ("\n".join(json.dumps(i, allow_nan=True) for i in items) + "\n").encode()


def test_dataset_generated_manifest(dataset_folder, tmp_path):
    """``load_dataset`` with the folder's own manifest items varied."""
    seeds = [json.loads(line) for line in (dataset_folder / "manifest.jsonl").read_text().splitlines()]

    @fuzz_settings(0.5)
    @given(dataset_manifest(seeds))
    def case(data):
        folder = tmp_path / "ds"
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(dataset_folder, folder)
        write(folder, "manifest.jsonl", data)
        check("dataset", _open_dataset, folder / "manifest.jsonl", name_in_message=folder.name)

    case()


def test_manifest_generated(dataset_folder, tmp_path):
    seeds = [json.loads(line) for line in (dataset_folder / "manifest.jsonl").read_text().splitlines()]

    @fuzz_settings()
    @given(manifest_text(seeds))
    def case(data):
        check("manifest", read_manifest, write(tmp_path, "manifest.jsonl", data))

    case()
