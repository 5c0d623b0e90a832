"""The model registry: named open models fetched with checksums, user files registered by path.

* **Open models** (:data:`OPEN_MODELS`): ``ict`` (ICT FaceKit, MIT; the default) and ``sfm`` (Surrey Face
  Model via eos; non-commercial — a notice is printed when it is fetched). Each lists its files with their
  official location pinned to a commit and a sha256 per file.
* **Sources.** With ``MORPHABLE_MIRROR`` set, files are read from that folder under the same relative
  paths (``ICT-FaceKit/...``, ``eos/share/...``: the test corpus is laid out this way), checked in place,
  and nothing is downloaded; without it they are downloaded with :mod:`urllib` into
  ``MORPHABLE_HOME/sources/`` (default home ``~/.cache/morphable``), each verified before it is kept.
  ICT comes in two layouts: the packed npz (mirror only) and the official ``FaceXModel/`` OBJ folder
  (downloaded; the 154 OBJ files without a published checksum are verified together by the sha256 of their
  float32 vertex stack, which equals the packed npz's ``vertices``).
* **Converted cache.** The converted model is kept as ``MORPHABLE_HOME/converted/<name>-<key>.npz`` (native
  format; the key hashes the source checksums), so a second load never re-converts; within one process
  the loaded model is also memoised (callers get a deep copy).
* **User models** (BFM, FLAME, ... files that cannot be redistributed): ``add_model(name, path)`` loads the
  file once to validate it and records its absolute path in ``MORPHABLE_HOME/registry.json`` (atomic
  write).

Every missing file, failed download or checksum mismatch is a :class:`ModelFileError`.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from morphable.errors import ModelFileError
from morphable.io.atomic import atomic_write
from morphable.models.base import MorphableModel

DEFAULT_MODEL = "ict"
CONVERTER_VERSION = 2  # bump when a loader's output changes, so old converted caches are not reused
# (2: the native npz keeps a FLAME model whole: LBS pose and dynamic contour)


@dataclass(frozen=True)
class RemoteFile:
    """One file of an open model: ``path`` relative to the mirror / download root, its sha256 (``None``:
    covered by the layout's content digest) and its official URL (``None``: mirror only)."""

    path: str
    sha256: str | None
    url: str | None = None


@dataclass(frozen=True)
class Layout:
    """One way an open model's files can be laid out, and how to convert them."""

    key: str
    files: tuple[RemoteFile, ...]
    convert: Callable[[Path, Layout], MorphableModel]
    content_sha256: str | None = None  # digest of the converted content, for files without a sha256

    @property
    def downloadable(self) -> bool:
        return all(f.url is not None for f in self.files)


@dataclass(frozen=True)
class OpenModel:
    name: str
    description: str
    licence: str
    repository: str
    commit: str
    layouts: tuple[Layout, ...]
    notice: str | None = None


# --- the open models ------------------------------------------------------------------------------
EOS_COMMIT = "ce984207a51c2edd2e7568a64fec9b98ef61aeed"
ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
_EOS_RAW = f"https://raw.githubusercontent.com/patrikhuber/eos/{EOS_COMMIT}/"
_ICT_RAW = f"https://raw.githubusercontent.com/USC-ICT/ICT-FaceKit/{ICT_COMMIT}/"

_SFM_FILES = {
    "sfm_shape_3448.bin": "43750338ae533e7fb981e924b6f67ebde3d292f15ec4fc886ae5af14308ad980",
    "expression_blendshapes_3448.bin": "a77c81712fc5e8b08a1be4cd2824d51514e5bde6578109ae5240dfb3489efd43",
    "ibug_to_sfm.txt": "810810c457184526c7d54305ecbc5da764e2431b5e66025d921a7d424aebfac9",
    "sfm_model_contours.json": "c9e69bfa995ab19ac6b27abb07729eb0520a00bb192be12426ca6bce76f3fded",
    "sfm_3448_edge_topology.json": "5934e5ec34dd6779fda06d28a1f8d02ca9a238bff882e5ccd6da5af9fffe61d5",
    "sfm_reference_symmetry.txt": "d26e02dbb2cf72bfa88bc6bf6f175bf261bae7aff00509cc0ff277675f2fff47",
}
_ICT_TOPOLOGY = {
    "generic_neutral_mesh.obj": "eedbc2576d8e5ea57f55255b8f98263213a1efb5431d8bfceed1d7aef10271f9",
    "vertex_indices.json": "4f9b35306299980dd46bee4a6b79bb95dfae1953693b74b35a64f7febfd081a5",
    "ICTFaceModelMaterial.mtl": "9c2c6daf384a2d1f5536d330339a897a312f57d89587b9be31bec7fe7b37c297",
}
_ICT_PACKED_SHA256 = "dc4d04870253cac33cdb0672eaca77585265bc081f530d3a6ec0aa2ff9e221bd"
_ICT_OBJ_SHA256 = {  # the official OBJ files whose checksums the corpus records
    "identity000": "918160cf82d541336b4c367cf93199c9827832bde02511b8fbdf9019d6f1a773",
    "identity001": "325115059deb6691cb2d55da07ae38bb08ce36e4ea146982f294a17513155b3b",
    "jawOpen": "8d84355e10f48b05550980cee385bcd426f4797090da76a20de0535bb2f99f4a",
    "eyeBlink_L": "f5ed1c3072a400083b7d4f7f5cb3d73882b7ebb95c3232f957394db8cf7fe19e",
}
ICT_VERTEX_STACK_SHA256 = "2bf58aebe9e6532de033102c8d7a039e5c5ba8dbc298676c0942ef4618b1d37f"
"""sha256 of the float32 little-endian vertices of the 158 FaceXModel meshes stacked in sorted-name
order (= the packed npz's ``vertices`` array): verifies OBJ files that have no published checksum."""
_ICT_EXTRA_TARGETS = ("PupilDilate_L", "PupilDilate_R", "cheekRaiser_L", "cheekRaiser_R")
_ICT_EXPRESSIONS = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
    "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
    "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
    "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R", "jawForward",
    "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R", "mouthFrown_L",
    "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L",
    "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R", "mouthUpperUp_L",
    "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)


def _convert_sfm(root: Path, layout: Layout) -> MorphableModel:
    from morphable.models.formats.sfm import load_sfm

    return load_sfm(root / layout.files[0].path)


def _convert_ict_packed(root: Path, layout: Layout) -> MorphableModel:
    from morphable.models.formats.ict import load_ict

    return load_ict(root / layout.files[0].path)


def vertex_stack_sha256(meshes: dict[str, np.ndarray]) -> str:
    """sha256 of ``{name: (V, 3)}`` as float32 little-endian, stacked in sorted-name order."""
    h = hashlib.sha256()
    for name in sorted(meshes):
        h.update(np.ascontiguousarray(meshes[name], dtype="<f4").tobytes())
    return h.hexdigest()


def convert_ict_objs(root: Path, layout: Layout) -> MorphableModel:
    """Convert a FaceXModel OBJ folder, checking the vertex-stack digest ``layout.content_sha256``."""
    from morphable.models.formats.ict import build_ict, read_obj_vertices

    folder = root / "ICT-FaceKit" / "FaceXModel"
    meshes = {Path(f.path).stem: read_obj_vertices(root / f.path) for f in layout.files if f.path.endswith(".obj")}
    digest = vertex_stack_sha256(meshes)
    if digest != layout.content_sha256:
        raise ModelFileError(folder, f"the OBJ files' vertices do not match the pinned checksum "
                                     f"(sha256 {digest[:12]}...): incomplete or altered download")
    return build_ict(meshes, folder, f"ICT FaceKit (FaceXModel OBJ folder, commit {ICT_COMMIT[:7]})", folder)


def _ict_obj_files() -> tuple[RemoteFile, ...]:
    names = ["generic_neutral_mesh"] + [f"identity{k:03d}" for k in range(100)] + list(_ICT_EXPRESSIONS) \
        + list(_ICT_EXTRA_TARGETS)
    objs = [RemoteFile(f"ICT-FaceKit/FaceXModel/{n}.obj", _ICT_TOPOLOGY.get(f"{n}.obj") or _ICT_OBJ_SHA256.get(n),
                       f"{_ICT_RAW}FaceXModel/{n}.obj") for n in names]
    side = [RemoteFile(f"ICT-FaceKit/FaceXModel/{n}", _ICT_TOPOLOGY[n], f"{_ICT_RAW}FaceXModel/{n}")
            for n in ("vertex_indices.json", "ICTFaceModelMaterial.mtl")]
    return tuple(objs + side)


OPEN_MODELS: dict[str, OpenModel] = {
    "ict": OpenModel(
        name="ict", description="ICT FaceKit (ICT Face Model Light): 26 719 vertices, 100 identity modes, "
                                "53 ARKit expressions",
        licence="MIT", repository="https://github.com/USC-ICT/ICT-FaceKit", commit=ICT_COMMIT,
        layouts=(
            Layout("packed", (
                RemoteFile("ICT-FaceKit/FaceXModel_vertices_float32.npz", _ICT_PACKED_SHA256),
                *(RemoteFile(f"ICT-FaceKit/FaceXModel/{n}", s) for n, s in _ICT_TOPOLOGY.items()),
            ), _convert_ict_packed),
            Layout("obj", _ict_obj_files(), convert_ict_objs, ICT_VERTEX_STACK_SHA256),
        )),
    "sfm": OpenModel(
        name="sfm", description="Surrey Face Model (shape only, 3 448 vertices) with 6 eos expression "
                                "blendshapes",
        licence="non-commercial (Surrey Face Model licence); eos code Apache-2.0",
        repository="https://github.com/patrikhuber/eos", commit=EOS_COMMIT,
        layouts=(Layout("eos", tuple(RemoteFile(f"eos/share/{n}", s, f"{_EOS_RAW}share/{n}")
                                     for n, s in _SFM_FILES.items()), _convert_sfm),),
        notice="Note: the Surrey Face Model is free for NON-COMMERCIAL use only "
               "(https://www.cvssp.org/facemodel); by fetching it you accept its licence."),
}


# --- locations -----------------------------------------------------------------------------------
def home() -> Path:
    """``MORPHABLE_HOME`` (default ``~/.cache/morphable``), created if needed."""
    path = Path(os.environ.get("MORPHABLE_HOME") or Path.home() / ".cache" / "morphable").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def mirror() -> Path | None:
    """``MORPHABLE_MIRROR`` as a folder, or ``None`` when unset."""
    value = os.environ.get("MORPHABLE_MIRROR")
    return Path(value).expanduser() if value else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, sha256: str | None) -> None:
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    if sha256 is not None and sha256_file(path) != sha256:
        raise ModelFileError(path, f"checksum mismatch (expected sha256 {sha256[:12]}...): corrupted or "
                                   "a different version")


def download(url: str, dest: Path, sha256: str | None, *, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` (atomically), verifying ``sha256`` before the file is kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        if sha256 is not None and h.hexdigest() != sha256:
            raise ModelFileError(url, f"checksum mismatch after download (expected sha256 {sha256[:12]}...)")
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ModelFileError(url, f"download failed ({getattr(err, 'reason', None) or err})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _notify(message: str) -> None:
    print(message, file=sys.stderr)


def fetch(name: str, *, notify: Callable[[str], None] = _notify) -> tuple[Layout, Path]:
    """Make an open model's files available and verified; returns the layout used and its root folder.

    With ``MORPHABLE_MIRROR`` set, the first layout complete in the mirror is used in place (no network);
    otherwise the downloadable layout is fetched into ``MORPHABLE_HOME/sources`` (files already there and
    matching their checksum are kept). The model's licence notice, if any, goes to ``notify``.
    """
    model = _open_model(name)
    if model.notice:
        notify(model.notice)
    root = mirror()
    if root is not None:
        for layout in model.layouts:
            if all((root / f.path).is_file() for f in layout.files):
                for f in layout.files:
                    _verify(root / f.path, f.sha256)
                return layout, root
        first = model.layouts[0]
        missing = next(f.path for f in first.files if not (root / f.path).is_file())
        raise ModelFileError(root / missing, f"model '{name}' is not complete in MORPHABLE_MIRROR (missing file)")
    layout = next(lay for lay in model.layouts if lay.downloadable)
    root = home() / "sources"
    for f in layout.files:
        dest = root / f.path
        if dest.is_file() and (f.sha256 is None or sha256_file(dest) == f.sha256):
            continue
        try:
            download(f.url, dest, f.sha256)
        except ModelFileError as err:
            raise ModelFileError(err.path, f"{err.problem}; {offline_hint(name, f.path)}") from None
    return layout, root


def offline_hint(name: str, relative: str) -> str:
    """What to do without network: the two places a model's files can come from instead of a download."""
    return (f"to use local files instead, set MORPHABLE_MIRROR to a folder holding them as in the source "
            f"(e.g. MORPHABLE_MIRROR/{relative}), or copy them under MORPHABLE_HOME/sources "
            f"({home() / 'sources'}); MORPHABLE_HOME (default ~/.cache/morphable) also caches the converted "
            f"'{name}' model")


def _open_model(name: str) -> OpenModel:
    if name not in OPEN_MODELS:
        raise ModelFileError(name, f"not an open model (known: {', '.join(OPEN_MODELS)})")
    return OPEN_MODELS[name]


def _cache_key(layout: Layout) -> str:
    h = hashlib.sha256(f"{CONVERTER_VERSION}:{layout.key}".encode())
    for f in layout.files:
        h.update(f"{f.path}={f.sha256}".encode())
    return h.hexdigest()[:16]


# --- the per-process memo ------------------------------------------------------------------------
_MEMO: dict[tuple[str, int, int], MorphableModel] = {}


def _load_native(path: Path) -> MorphableModel:
    from morphable.models.formats.npz import load_npz

    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _MEMO:
        _MEMO[key] = load_npz(path)
    model = _MEMO[key]
    # a private copy of every buffer; the (large, read-only by convention) polygon lists are shared
    return copy.deepcopy(model, {id(model.polygons): model.polygons, id(model.polygon_uvs): model.polygon_uvs})


def _convert_cached(cache: Path, build: Callable[[], MorphableModel]) -> MorphableModel:
    from morphable.models.formats.npz import save_npz

    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_npz(build(), cache)
    return _load_native(cache)


def converted_path(name: str) -> Path | None:
    """Where an open model's converted npz is (whichever layout was converted), or ``None``."""
    model = _open_model(name)
    for layout in model.layouts:
        p = home() / "converted" / f"{name}-{_cache_key(layout)}.npz"
        if p.is_file():
            return p
    return None


def load_open_model(name: str) -> MorphableModel:
    """Fetch (if needed), convert (once) and load an open model."""
    cached = converted_path(name)
    if cached is not None:
        return _load_native(cached)
    layout, root = fetch(name)
    cache = home() / "converted" / f"{name}-{_cache_key(layout)}.npz"
    return _convert_cached(cache, lambda: layout.convert(root, layout))


# --- user models ---------------------------------------------------------------------------------
_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")


def _registry_file() -> Path:
    return home() / "registry.json"


def user_models() -> dict[str, dict[str, Any]]:
    """The user registry: ``{name: {"path": absolute path, "format": loader}}``."""
    path = _registry_file()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        models = data["models"]
        if not isinstance(models, dict) or not all(isinstance(v, dict) and isinstance(v.get("path"), str)
                                                   for v in models.values()):
            raise TypeError("bad entries")
        return models
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelFileError(path, f"corrupted model registry ({err}); delete it and add models again") from None


def add_model(name: str, path: str | Path) -> MorphableModel:
    """Register a model file under ``name`` after loading it once (which validates it)."""
    from morphable.models.formats import load_any, loader_for

    if not _NAME.fullmatch(name) or name in OPEN_MODELS:
        raise ModelFileError(path, f"invalid model name {name!r} (lower-case letters, digits, '_', '-', '.'; "
                                   f"not one of {', '.join(OPEN_MODELS)})")
    path = Path(path).expanduser().resolve()
    model = load_any(path)
    models = user_models()
    models[name] = {"path": str(path), "format": loader_for(path)}
    with atomic_write(_registry_file(), "w") as f:
        json.dump({"models": models}, f, indent=2, sort_keys=True)
    return model


def _load_user(name: str, entry: dict[str, Any]) -> MorphableModel:
    from morphable.models.formats import load_any

    path = Path(entry["path"])
    if not path.exists():
        raise ModelFileError(path, f"file of registered model '{name}' not found (moved or deleted?)")
    stat = path.stat()
    key = hashlib.sha256(f"{CONVERTER_VERSION}:{path}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()
    cache = home() / "converted" / f"user-{name}-{key[:16]}.npz"
    return _convert_cached(cache, lambda: load_any(path))


# --- the public entry point ----------------------------------------------------------------------
def load_model(name_or_path: str | Path = DEFAULT_MODEL) -> MorphableModel:
    """A model by open-model name (``"ict"``, ``"sfm"``), user-registered name, or file path.

    Raises:
        ModelFileError: unknown name, missing/corrupt file, failed download or checksum mismatch.
    """
    name = str(name_or_path)
    if name in OPEN_MODELS:
        return load_open_model(name)
    users = user_models()
    if name in users:
        return _load_user(name, users[name])
    path = Path(name).expanduser()
    if path.exists():
        from morphable.models.formats import load_any

        return load_any(path)
    known = ", ".join(list(OPEN_MODELS) + sorted(users))
    raise ModelFileError(name, f"no such model name or file (known names: {known})")


def list_models() -> list[dict[str, str]]:
    """One row per known model: ``name``, ``kind`` (open/user), ``licence`` or path, ``status``."""
    rows = []
    for name, m in OPEN_MODELS.items():
        status = "converted" if converted_path(name) is not None else "not fetched"
        rows.append({"name": name + (" (default)" if name == DEFAULT_MODEL else ""), "kind": "open",
                     "detail": f"{m.licence}; {m.description}", "status": status})
    for name, entry in sorted(user_models().items()):
        rows.append({"name": name, "kind": "user", "detail": entry["path"],
                     "status": "ok" if Path(entry["path"]).exists() else "missing file"})
    return rows
