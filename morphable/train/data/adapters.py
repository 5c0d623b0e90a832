"""Dataset adapters: public face datasets' layouts → inputs of ``morphable data prepare`` → the JSONL manifest.

:func:`~morphable.train.data.prepare.prepare_dataset` makes the manifest (:mod:`~morphable.train.data.manifest`)
from photos, their identity labels and ``.pts`` files beside them. These adapters read what the common
datasets ship instead:

* **identity-per-folder trees** (VGGFace2 ``<root>/<identity>/<photo>.jpg``, UMDFaces batches laid out the
  same way): :func:`identity_tree` checks the layout and lists the photos; prepare them with
  ``identity_from_folder=True``.
* **CelebA's identity file** (``identity_CelebA.txt``: ``<photo file> <identity number>`` per line):
  :func:`celeba_identities` → ``{photo stem: identity}``, prepare's ``identities`` argument.
* **landmark files**: 300-W ``.pts`` beside the photos need nothing; 300W-LP and AFLW2000-3D keep their
  68 points in a MATLAB file beside each photo (``pt2d`` 2 × 68, or ``pt3d_68`` 3 × 68 whose x, y are the
  image points; 0-based pixels), and 300W-LP also in ``landmarks/<subset>/<stem>_pts.mat`` (``pts_2d``
  68 × 2). :func:`read_mat_landmarks` reads them and :func:`stage_mat_landmarks` links each photo into a
  staging folder with a ``.pts`` file beside it, which prepare then reads as annotated.

Label validity (:class:`LabelFlags`, :func:`label_flags`): a manifest item carries an identity when its
``identity`` is not null, and trusted landmarks when they come from a file (``landmarks_from == "file"``)
rather than from dlib's detector, so sources with only identities or only landmarks mix in one training
set (RingNet's ring loss reads the first, its projection loss the second).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from morphable.errors import InputError
from morphable.train.data.manifest import ManifestItem
from morphable.train.data.prepare import IMAGE_SUFFIXES, find_photos

N_LANDMARKS = 68


@dataclass(frozen=True)
class LabelFlags:
    """Which labels of a manifest item a loss may use: ``identity`` (a person label), ``landmarks``
    (annotated 68 points; detector output is not ground truth)."""

    identity: bool
    landmarks: bool


def label_flags(item: ManifestItem) -> LabelFlags:
    """The :class:`LabelFlags` of one manifest item (see the module docstring)."""
    return LabelFlags(identity=item.identity is not None, landmarks=item.landmarks_from == "file")


def identity_tree(root: str | PathLike) -> list[Path]:
    """Photos of an identity-per-folder tree ``<root>/<identity>/<photo>`` (sorted by identity, then name).

    Raises:
        InputError: ``root`` is not a folder, holds photos directly (not in identity folders), or no
            identity folder holds a photo.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder (expected <root>/<identity>/<photos>)")
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise InputError(root, f"photos directly in the root (e.g. {loose[0].name}): expected one folder per identity")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    photos = find_photos(folders) if folders else []
    if not photos:
        raise InputError(root, "no identity folder holds a photo")
    return photos


def celeba_identities(path: str | PathLike) -> dict[str, str]:
    """CelebA's ``identity_CelebA.txt`` → ``{photo stem: identity}`` (the identity number as a string).

    Raises:
        InputError: ``<file>:<line>`` for a line that is not ``<photo file> <integer>``, or a photo listed twice.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read identity file ({err.__class__.__name__}: {err})") from None
    out: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise InputError(f"{path}:{number}", f"expected '<photo file> <identity number>', got {line.strip()!r}")
        stem = Path(parts[0]).stem
        if stem in out:
            raise InputError(f"{path}:{number}", f"photo {parts[0]!r} is listed twice")
        out[stem] = parts[1]
    if not out:
        raise InputError(path, "no identities listed")
    return out


def read_mat_landmarks(path: str | PathLike) -> np.ndarray:
    """The 68 landmarks ``(68, 2)`` (0-based px) of a 300W-LP / AFLW2000-3D MATLAB file: ``pt3d_68`` (3 × 68,
    AFLW2000-3D), else ``pt2d`` when 2 × 68 (300W-LP photos' files), else ``pts_2d`` (68 × 2, 300W-LP's
    ``landmarks/`` folder). Read with :func:`scipy.io.loadmat` (numeric arrays only, no code runs).

    Raises:
        InputError: unreadable file, or none of those arrays with 68 finite points.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        data = loadmat(path)
    except Exception as err:  # scipy raises several kinds for a foreign or damaged file
        raise InputError(path, f"cannot read MATLAB file ({err.__class__.__name__}: {err})") from None
    for name, rows in (("pt3d_68", 3), ("pt2d", 2), ("pts_2d", None)):
        a = data.get(name)
        if a is None or not np.issubdtype(np.asarray(a).dtype, np.number):
            continue
        a = np.asarray(a, dtype=np.float64)
        if rows is not None and a.shape == (rows, N_LANDMARKS):
            points = a[:2].T
        elif rows is None and a.shape == (N_LANDMARKS, 2):
            points = a
        else:
            continue
        if not np.isfinite(points).all():
            raise InputError(path, f"'{name}' holds non-finite landmarks")
        return points
    raise InputError(path, "no 68-point landmarks (expected pt3d_68 3x68, pt2d 2x68 or pts_2d 68x2)")


def stage_mat_landmarks(photos: Sequence[str | PathLike], staging: str | PathLike,
                        landmark_dir: str | PathLike | None = None) -> list[Path]:
    """Link each photo into ``staging`` with a ``.pts`` file of its MATLAB landmarks beside it.

    The landmarks come from ``<photo stem>.mat`` beside the photo, or with ``landmark_dir`` from
    ``<landmark_dir>/<stem>_pts.mat`` (300W-LP's layout). Photos without either are skipped.

    Returns:
        the staged photo paths (symbolic links), for :func:`~morphable.train.data.prepare.prepare_dataset`.
    Raises:
        InputError: a landmark file that cannot be read, two photos with one stem, an unwritable staging folder.
    """
    from morphable.detect.formats import write_pts

    staging = Path(staging)
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(staging, f"cannot create folder ({err.strerror or err})") from None
    out: list[Path] = []
    seen: set[str] = set()
    for photo in map(Path, photos):
        mat = photo.with_suffix(".mat") if landmark_dir is None else Path(landmark_dir) / f"{photo.stem}_pts.mat"
        if not mat.is_file():
            continue
        if photo.stem in seen:
            raise InputError(photo, f"a second photo with stem {photo.stem!r}: stage such sets separately")
        seen.add(photo.stem)
        link = staging / photo.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(photo.absolute())
        write_pts(staging / f"{photo.stem}.pts", read_mat_landmarks(mat))
        out.append(link)
    return out
