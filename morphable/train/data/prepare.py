"""``morphable data prepare``: photos in, a face dataset out (landmarks, aligned chips, cached features).

Per photo: read it; take the 68 landmarks from a ``.pts`` file beside it (same stem; iBUG, 1-based on
disk, :func:`~morphable.detect.formats.read_landmarks`) or detect them with dlib
(:func:`~morphable.detect.dlib68.detect_landmarks`; the largest face by default, the best-scoring one,
or all); cut dlib's aligned 150 x 150 chip (padding 0.25) from the landmarks
(:func:`~morphable.identity.extract_face_chips`), store it as uint8 PNG, and run the chip *as stored*
through our port of dlib's recognition ResNet (:meth:`~morphable.identity.DlibFaceNet.features`): the
128-D descriptor and the 256-D pooled pre-fc features, the frozen encoder output of Genova et al.,
"Unsupervised Training for 3D Morphable Model Regression" (CVPR 2018), Sec. 3.

Resumable and safe to kill. Every file under a final name is written atomically
(:func:`~morphable.io.atomic.atomic_write`), in this order per photo: each face's ``chips/<key>.png`` and
``items/<key>.npz`` (``descriptor`` (128,) and ``pooled`` (256,) float32), then the photo's record
``photos/<hash>.json`` (its faces' keys, landmarks, boxes, the detector, and the size and mtime of the
photo and its ``.pts``). A rerun reuses every photo whose record is there, complete, and made from the
same file with the same options, so a kill loses at most the photo in progress. At the end the old
``manifest.jsonl`` is removed, then ``descriptors.npy`` (N, 128), ``pooled.npy`` (N, 256) and
``bad.jsonl`` are written, and ``manifest.jsonl`` last: when a manifest exists, the arrays beside it are
the ones of the same run (:func:`load_dataset` checks sizes).
Temporary files a kill left behind are removed at the start (one ``prepare`` per dataset at a time).

Keys: ``sha1(absolute photo path, face choice, face index)``, 16 hex digits. Photos that cannot be read,
have no face, or carry a bad ``.pts`` file are reported (:class:`BadItem`) and the run goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from morphable.detect.choice import FACE_CHOICES
from morphable.errors import InputError, MorphableError
from morphable.io.atomic import atomic_write, remove_temporaries
from morphable.io.safe_npz import read_npz
from morphable.train.data.manifest import (
    BAD,
    DESCRIPTOR_DIM,
    DESCRIPTORS,
    MANIFEST,
    POOLED,
    POOLED_DIM,
    ManifestItem,
    write_manifest,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")
MIN_FACE_SPAN = 10.0  # px: annotated landmarks spanning less (width or height) are taken as corrupt


@dataclass(frozen=True)
class BadItem:
    """A photo that gave no face: its path and the one-line problem."""

    path: str
    problem: str


@dataclass(frozen=True)
class PrepareReport:
    """What :func:`prepare_dataset` did.

    Attributes:
        folder: the dataset folder.
        n_photos: photos taken (after ``identities`` filtering).
        n_faces: faces in the manifest.
        n_resumed: photos reused from an earlier run.
        n_unlisted: photos skipped because ``identities`` does not list their stem.
        missing: stems listed in ``identities`` that no photo has.
        bad: photos that gave no face, with the reason.
    """

    folder: Path
    n_photos: int
    n_faces: int
    n_resumed: int
    n_unlisted: int
    missing: list[str] = field(default_factory=list)
    bad: list[BadItem] = field(default_factory=list)


@dataclass(frozen=True)
class _Face:
    """One face ready for the manifest: its record and features."""

    key: str
    face: int
    landmarks: np.ndarray  # (68, 2) float64 px
    box: tuple[float, float, float, float]
    landmarks_from: str
    descriptor: np.ndarray  # (128,) float32
    pooled: np.ndarray  # (256,) float32


def find_photos(inputs: Sequence[str | PathLike], exclude: str | PathLike | None = None) -> list[Path]:
    """Photo files among ``inputs``: files as given, folders searched recursively (sorted) for
    ``IMAGE_SUFFIXES`` (any case; hidden files and anything under ``exclude`` skipped). Absolute paths
    (not resolved through links), each once, in input order.

    Raises:
        InputError: an input that does not exist.
    """
    skip = Path(exclude).absolute() if exclude is not None else None
    out: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        if path not in seen:
            seen.add(path)
            out.append(path)

    for given in inputs:
        path = Path(given).absolute()
        if path.is_file():
            add(path)
        elif path.is_dir():
            for root, dirs, files in os.walk(path):
                root_path = Path(root)
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or root_path / d != skip))
                for name in sorted(files):
                    if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        add(root_path / name)
        else:
            raise InputError(given, "no such photo or folder")
    return out


def read_identities(path: str | PathLike) -> dict[str, str]:
    """Read ``{identity: [photo stems]}`` JSON -> ``{stem: identity}``.

    Raises:
        InputError: unreadable file, not that layout, or a stem listed under two identities.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"cannot read identities ({err.__class__.__name__}: {err})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object {identity: [photo stems]}")
    stems: dict[str, str] = {}
    for identity, members in data.items():
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            raise InputError(path, f"identity {identity!r}: expected a list of photo stems (strings)")
        for stem in members:
            if stem in stems:
                raise InputError(path, f"photo stem {stem!r} is listed under {stems[stem]!r} and {identity!r}")
            stems[stem] = identity
    return stems


def item_key(photo: Path, face_choice: str, index: int) -> str:
    """The 16-hex-digit key of face ``index`` of ``photo`` (absolute path) under a face choice."""
    return hashlib.sha1(f"{photo}\0{face_choice}\0{index}".encode()).hexdigest()[:16]


def _stamp(path: Path) -> list[int] | None:
    """``[size, mtime_ns]`` of a file, ``None`` when it does not exist: a photo changed since its record
    was written is prepared again."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


class _Preparer:
    """Holds the dataset folder, the options and the network for one :func:`prepare_dataset` call."""

    def __init__(self, folder: Path, face_choice: str, detector: str):
        self.folder = folder
        self.face_choice = face_choice
        self.detector = detector
        self._net = None

    @property
    def net(self):
        if self._net is None:
            from morphable.identity import DlibFaceNet

            self._net = DlibFaceNet()
        return self._net

    def record_path(self, photo: Path) -> Path:
        digest = hashlib.sha1(f"{photo}\0{self.face_choice}".encode()).hexdigest()[:16]
        return self.folder / "photos" / f"{digest}.json"

    def stamps(self, photo: Path) -> dict:
        return {"photo": _stamp(photo), "pts": _stamp(photo.with_suffix(".pts"))}

    def resume(self, photo: Path) -> list[_Face] | None:
        """The faces of an earlier run's complete, up-to-date record of ``photo``, else ``None``."""
        try:
            record = json.loads(self.record_path(photo).read_text(encoding="utf-8"))
            made_from = (record["path"], record["detector"], record["stamps"])
            if made_from != (str(photo), self.detector, self.stamps(photo)):
                return None
            return [self._cached_face(face) for face in record["faces"]]
        except (OSError, ValueError, KeyError, TypeError, InputError):  # absent, incomplete or stale: prepare again
            return None

    def _cached_face(self, face: dict) -> _Face:
        """One face of a record with its cached features (KeyError/ValueError/InputError when incomplete)."""
        key = face["key"]
        if not (self.folder / "chips" / f"{key}.png").is_file():
            raise KeyError(key)
        arrays = read_npz(self.folder / "items" / f"{key}.npz", error=InputError, keys=("descriptor", "pooled"))
        descriptor, pooled = arrays["descriptor"], arrays["pooled"]
        if descriptor.shape != (DESCRIPTOR_DIM,) or pooled.shape != (POOLED_DIM,):
            raise ValueError(key)
        return _Face(key, int(face["face"]), np.asarray(face["landmarks"], dtype=np.float64).reshape(68, 2),
                     tuple(float(v) for v in face["box"]), face["landmarks_from"], descriptor, pooled)

    def locate(self, photo: Path, image: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
        """The faces' ``(landmarks (68, 2), box (4,))`` and where the landmarks come from."""
        pts = photo.with_suffix(".pts")
        if pts.is_file():
            from morphable.detect.formats import read_landmarks

            points = read_landmarks(pts)
            span = points.max(0) - points.min(0)
            if (span < MIN_FACE_SPAN).any():
                raise InputError(pts, f"degenerate landmarks: they span {span[0]:.1f} x {span[1]:.1f} px "
                                      f"(a face needs at least {MIN_FACE_SPAN} px each way)")
            return [(points, np.concatenate([points.min(0), points.max(0)]))], "file"
        from morphable.detect.dlib68 import detect_landmarks

        found = detect_landmarks(image, all_faces=True, detector=self.detector)
        if not found:
            raise InputError(photo, "no face found")
        if self.face_choice == "largest":
            found = [max(found, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))]
        elif self.face_choice == "best":
            found = found[:1]  # detect_landmarks sorts by score, best first
        return [(d.landmarks, d.box) for d in found], "dlib"

    def prepare(self, photo: Path) -> list[_Face]:
        """Landmarks, chips and features of one photo; writes its files (record last)."""
        from morphable.identity import extract_face_chips
        from morphable.identity.dlib_resnet import CHIP_PADDING
        from morphable.io.image import read_image, write_image

        stamps = self.stamps(photo)  # before reading: a photo changed meanwhile is redone next time
        image = read_image(photo)
        located, source = self.locate(photo, image)
        landmarks = torch.from_numpy(np.stack([points for points, _ in located]))
        pixels = torch.from_numpy(image.astype(np.float32) / 255.0)[None].expand(len(located), -1, -1, -1)
        with torch.no_grad():
            chips = extract_face_chips(pixels, landmarks, padding=CHIP_PADDING)
            chips8 = torch.round(chips.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
            pooled, descriptor = self.net.features(chips8.float() / 255.0)  # the chip as stored
        faces = []
        for index, ((points, box), chip) in enumerate(zip(located, chips8)):
            key = item_key(photo, self.face_choice, index)
            write_image(self.folder / "chips" / f"{key}.png", chip.numpy())
            with atomic_write(self.folder / "items" / f"{key}.npz") as f:
                np.savez(f, descriptor=descriptor[index].numpy(), pooled=pooled[index].numpy())
            faces.append(_Face(key, index, np.asarray(points, dtype=np.float64), tuple(float(v) for v in box),
                               source, descriptor[index].numpy(), pooled[index].numpy()))
        record = {"path": str(photo), "face_choice": self.face_choice, "detector": self.detector, "stamps": stamps,
                  "faces": [{"key": f.key, "face": f.face, "landmarks": f.landmarks.tolist(), "box": list(f.box),
                             "landmarks_from": f.landmarks_from} for f in faces]}
        with atomic_write(self.record_path(photo), mode="w") as f:
            json.dump(record, f)
        return faces


def _identity(photo: Path, identity_from_folder: bool, identities: Mapping[str, str] | None) -> str | None:
    if identity_from_folder:
        return photo.parent.name
    if identities is not None:
        return identities[photo.stem]
    return None


def prepare_dataset(photos: Sequence[str | PathLike], output: str | PathLike, *, identity_from_folder: bool = False,
                    identities: Mapping[str, str] | None = None, face: str = "largest", source: str = "photos",
                    detector: str = "auto", progress: bool = True) -> PrepareReport:
    """Prepare (or finish preparing) a face dataset from photos; see the module docstring.

    Args:
        photos: photo files and/or folders (searched recursively; ``output`` itself is skipped).
        output: the dataset folder (created).
        identity_from_folder: label each face with its photo's parent folder (``<person>/<photos>``).
        identities: ``{photo stem: identity}`` (:func:`read_identities`); photos not listed are skipped.
        face: ``"largest"`` (by detector box area), ``"best"`` (detector score) or ``"all"`` detected faces;
            a photo with a ``.pts`` file gives its one annotated face whatever the choice.
        source: the manifest's ``source`` field.
        detector: dlib detector, ``"auto"`` (HOG, CNN when HOG finds nothing), ``"hog"`` or ``"cnn"``.
        progress: show a tqdm bar on stderr.
    Returns:
        the report; bad photos are in it (and in ``bad.jsonl``), never raised.
    Raises:
        InputError: a missing input, an unwritable output folder.
        ValueError: an unknown ``face`` choice, or both ``identity_from_folder`` and ``identities``.
    """
    from tqdm import tqdm

    if face not in FACE_CHOICES:
        raise ValueError(f"prepare_dataset: face must be one of {FACE_CHOICES}, got {face!r}")
    if identity_from_folder and identities is not None:
        raise ValueError("prepare_dataset: give identity_from_folder or identities, not both")
    folder = Path(output).absolute()
    found = find_photos(photos, exclude=folder)
    n_unlisted = 0
    missing: list[str] = []
    if identities is not None:
        listed = [p for p in found if p.stem in identities]
        n_unlisted = len(found) - len(listed)
        have = {p.stem for p in listed}
        missing = sorted(s for s in identities if s not in have)
        found = listed
    subfolders = [folder / "chips", folder / "items", folder / "photos"]
    for sub in subfolders:
        try:
            sub.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(sub, f"cannot create folder ({err.strerror or err})") from None
    for sub in (folder, *subfolders):
        remove_temporaries(sub)

    preparer = _Preparer(folder, face, detector)
    items: list[ManifestItem] = []
    descriptors: list[np.ndarray] = []
    pooled: list[np.ndarray] = []
    bad: list[BadItem] = []
    n_resumed = 0
    bar = tqdm(found, desc="preparing", unit="photo", disable=not progress, file=sys.stderr)
    for photo in bar:
        faces = preparer.resume(photo)
        if faces is not None:
            n_resumed += 1
        else:
            try:
                faces = preparer.prepare(photo)
            except MorphableError as err:
                bad.append(BadItem(str(photo), str(err)))
                continue
        identity = _identity(photo, identity_from_folder, identities)
        for f in faces:
            items.append(ManifestItem(key=f.key, path=str(photo), face=f.face, identity=identity,
                                      landmarks=f.landmarks, box=f.box, source=source,
                                      chip=f"chips/{f.key}.png", landmarks_from=f.landmarks_from))
            descriptors.append(f.descriptor)
            pooled.append(f.pooled)
        bar.set_postfix(faces=len(items), bad=len(bad))
    bar.close()

    (folder / MANIFEST).unlink(missing_ok=True)  # from here until the end the folder has no manifest
    for name, rows, dim in ((DESCRIPTORS, descriptors, DESCRIPTOR_DIM), (POOLED, pooled, POOLED_DIM)):
        with atomic_write(folder / name) as f:
            np.save(f, np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32))
    with atomic_write(folder / BAD, mode="w") as f:
        for b in bad:
            f.write(json.dumps({"path": b.path, "problem": b.problem}) + "\n")
    write_manifest(folder / MANIFEST, items)
    return PrepareReport(folder, len(found), len(items), n_resumed, n_unlisted, missing, bad)
