"""Identity consistency of reconstructions: do fits of the same person agree more than of different people?

Every photo is reconstructed on its own (dlib detection, the largest face, 68 landmarks; identity from
``--shape-from``, see ``benchmarks/_shape_from.py``); then over all photo pairs the same-vs-different
person ROC AUC (:mod:`morphable.eval.consistency`) of three distances:

* ``auc_coeff``: Euclidean distance between the identity coefficient vectors;
* ``auc_mesh``: RMS vertex distance between the neutral face-region meshes (expression zero, the model's
  ``face`` region) after a rigid Procrustes alignment without scale;
* ``auc_descriptor``: Euclidean distance between the dlib face descriptors of the photos (our port of
  dlib's ResNet): the ceiling, what a face-recognition network sees in the same photos.

Data: ``--data DIR`` holds ``<person>/<photos>``, or is a flat folder with ``--ids FILE`` (JSON
``{identity: [photo stems]}``); ``benchmarks/data/deepface_ids.json`` lists the 13 identities (61 photos)
of the corpus's ``deepface/tests/unit/dataset``.

**Split.** These identities are evaluation only: the Genova regressor is trained on the corpus's other
photos and on synthetic faces, never on a photo of these 13 people, so its training data must leave out
``deepface/tests/unit/dataset`` (see ``docs/fidelity.md``). A regressor trained on them would be scored on
its training identities and its AUCs would mean nothing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/identity_consistency.py \\
        --data ../shared/data/deepface/tests/unit/dataset --ids benchmarks/data/deepface_ids.json \\
        [--shape-from regressor|landmarks] [--regressor PATH] [--lambda-identity X] [--model ict]

Prints one line per setting (the regressor's own prediction, when used, and the fit) and ends with
``RESULT n_photos= n_ids= auc_coeff= auc_mesh= auc_descriptor=`` for the chosen setting.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import morphable
from morphable.detect.choice import detect_faces
from morphable.errors import InputError, MorphableError
from morphable.eval.consistency import identity_consistency
from morphable.io.image import read_image

from _shape_from import ShapeSource, add_arguments

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")


def list_photos(data: Path, ids_file: Path | None) -> list[tuple[Path, str]]:
    """(photo, identity) pairs: from ``<person>/<photos>`` folders, or a flat folder and an ids JSON."""
    if ids_file is None:
        pairs = [(p, person.name) for person in sorted(d for d in data.iterdir() if d.is_dir())
                 for p in sorted(person.iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES]
        if not pairs:
            raise InputError(data, "no <person>/<photo> files (give --ids FILE for a flat folder)")
        return pairs
    try:
        table = json.loads(ids_file.read_text(encoding="utf-8"))
        assert isinstance(table, dict) and all(isinstance(v, list) for v in table.values())
    except (OSError, ValueError, AssertionError):
        raise InputError(ids_file, "expected a JSON object {identity: [photo stems]}") from None
    by_stem = {p.stem: p for p in data.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES}
    pairs, missing = [], []
    for person, stems in table.items():
        for stem in stems:
            (pairs.append((by_stem[stem], person)) if stem in by_stem else missing.append(stem))
    if missing:
        raise InputError(data, f"photos listed in {ids_file.name} not found: {', '.join(missing[:5])}"
                               + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    return pairs


def descriptors(images: list[torch.Tensor], landmarks: torch.Tensor) -> torch.Tensor:
    """dlib descriptors (N, 128) of the photos' faces (chips as dlib's get_face_chip)."""
    from morphable.identity import DlibFaceNet, extract_face_chips

    net = DlibFaceNet()
    chips = torch.cat([extract_face_chips(img, lmk[None].to(img.dtype)) for img, lmk in zip(images, landmarks)])
    with torch.no_grad():
        return torch.cat([net(chips[i:i + 16]) for i in range(0, len(chips), 16)])


def report_line(label: str, report) -> str:
    return (f"{label:40s} auc_coeff {report.auc_coeff:.3f}  auc_mesh {report.auc_mesh:.3f}  "
            f"(median mesh distance same {report.same_mesh_mm:.2f} mm / different {report.different_mesh_mm:.2f} mm)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="<person>/<photos> folder, or flat with --ids")
    parser.add_argument("--ids", type=Path, default=None, help="JSON {identity: [photo stems]} for a flat folder")
    parser.add_argument("--model", default="ict")
    parser.add_argument("--region", default="face", help="model region of the compared meshes")
    parser.add_argument("--threads", type=int, default=1)
    add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        model = morphable.load_model(args.model)
        source = ShapeSource(model, args)
        pairs = list_photos(args.data, args.ids)
    except MorphableError as err:
        sys.exit(f"error: {err}")
    print(f"model {args.model}, shape from {source.label}, {len(pairs)} photos")

    t0 = time.perf_counter()
    images, landmarks, labels, predicted, failed = [], [], [], [], []
    for path, person in pairs:
        try:
            image = read_image(path)
            chosen, _ = detect_faces(image, "largest")
            if not chosen:
                raise InputError(path, "no face found")
        except MorphableError as err:
            failed.append(str(err))
            continue
        img = torch.from_numpy(np.array(image[..., :3])).float()[None] / 255
        lmk = torch.as_tensor(chosen[0][1].landmarks, dtype=torch.float64)
        images.append(img)
        landmarks.append(lmk)
        labels.append(person)
        mu = source.predict(img, lmk[None].float())
        if mu is not None:
            predicted.append(mu)
    print(f"detected {len(landmarks)} faces in {time.perf_counter() - t0:.1f} s")
    if len(set(labels)) < 2:
        sys.exit("error: need faces of at least two identities")
    lmk = torch.stack(landmarks)
    prior = torch.cat(predicted) if predicted else None
    identity = source.fit_identity(lmk, prior, [tuple(img.shape[1:3]) for img in images])

    if prior is not None:
        print(report_line(f"{source.mode} alone (mu)", identity_consistency(model, prior, labels, region=args.region)))
    report = identity_consistency(model, identity, labels, descriptors=descriptors(images, lmk), region=args.region)
    print(report_line(f"fit ({source.mode})", report))
    print(f"{'dlib descriptors (ceiling)':40s} auc {report.auc_descriptor:.3f}")
    print(f"pairs: {report.n_same} same, {report.n_different} different; {time.perf_counter() - t0:.1f} s in all")
    for line in failed:
        print(f"skipped: {line}")
    print(f"RESULT n_photos={report.n_items} n_ids={report.n_ids} auc_coeff={report.auc_coeff:.4f} "
          f"auc_mesh={report.auc_mesh:.4f} auc_descriptor={report.auc_descriptor:.4f}")


if __name__ == "__main__":
    main()
