"""Our DlibFaceNet against dlib's own face-recognition network, on every face found in a folder.

For each image: dlib HOG detection (upsampled once) and 68 landmarks, one 150 x 150 chip per face with
``dlib.get_face_chip(img, shape, 150, 0.25)``; dlib's descriptor of that chip
(``face_recognition_model_v1.compute_face_descriptor``) is the anchor, timed face by face; ours is the
whole set of chips in one batch (time per face = batch time / faces); the two are timed in
interleaved rounds so that both see the same machine load. Prints the largest descriptor
difference, the median times and their ratio, and with ``--auc`` the same-vs-different-person ROC AUC on
the deepface identity groups (one face, the largest, per listed photo).

    .venv/bin/python benchmarks/identity_bench.py --images ../shared/data/deepface/tests/unit/dataset --auc

Last line: ``RESULT n=<faces> max_abs_diff=<float> ours_ms=<median> dlib_ms=<median>``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import dlib
import numpy as np
import torch

from morphable.identity import DlibFaceNet
from morphable.identity.dlib_serialization import default_weights_path
from morphable.io.image import read_image
from morphable.losses.identity import pair_scores, roc_auc_pairs, verification_auc

# The 13 identities of deepface/tests/unit/dataset (../shared/data/MANIFEST.md).
DEEPFACE_IDENTITIES = (
    (1, 2, 4, 5, 6, 7, 10, 11), (26, 27, 28, 42, 43, 44, 45, 46), (8, 9, 47, 48, 49, 50, 51),
    (3, 12, 53, 54, 55, 56), (16, 17, 59, 61, 62), (13, 14, 15, 57, 58), (29, 30, 31, 32, 33),
    (38, 39, 40, 41), (34, 35, 36, 37), (18, 19, 67), (20, 21), (22, 23), (24, 25),
)


def identity_of(name: str) -> int | None:
    """Index of the deepface identity group of ``imgN.jpg``, or None."""
    stem = Path(name).stem
    if not (stem.startswith("img") and stem[3:].isdigit()):
        return None
    number = int(stem[3:])
    return next((i for i, group in enumerate(DEEPFACE_IDENTITIES) if number in group), None)


def find_faces(folder: Path) -> list[tuple[str, float, np.ndarray]]:
    """(file name, box area, 150x150x3 uint8 chip) for every face dlib finds in the folder's images."""
    models = default_weights_path().parent
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
    faces = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        image = read_image(path)
        for box in detector(image, 1):
            shape = predictor(image, box)
            faces.append((path.name, float(box.area()), dlib.get_face_chip(image, shape, 150, 0.25)))
    return faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of photos")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds, each: dlib on every chip, then "
                        "our batch (default 3)")
    parser.add_argument("--device", default="cpu", help="torch device for our network (default cpu)")
    parser.add_argument("--auc", action="store_true", help="also print the deepface same/different ROC AUC")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    faces = find_faces(args.images)
    if not faces:
        raise SystemExit(f"no faces found in {args.images}")
    chips = np.stack([chip for _, _, chip in faces])

    recogniser = dlib.face_recognition_model_v1(str(default_weights_path()))
    net = DlibFaceNet().to(device)
    batch = torch.from_numpy(chips).to(device=device, dtype=torch.float32) / 255
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # Rounds interleave the two timings so that both see the same (shared, noisy) machine load.
    dlib_times, our_times, dlib_cpu, our_cpu = [], [], [], []
    with torch.inference_mode():
        ours = net(batch)  # warm-up (allocations, oneDNN kernel selection)
        for _ in range(args.rounds):
            theirs = []
            for chip in chips:
                start, cpu = time.perf_counter(), time.process_time()
                theirs.append(np.array(recogniser.compute_face_descriptor(chip)))
                dlib_times.append(time.perf_counter() - start)
                dlib_cpu.append(time.process_time() - cpu)
            sync()
            start, cpu = time.perf_counter(), time.process_time()
            ours = net(batch)
            sync()
            our_times.append((time.perf_counter() - start) / len(chips))
            our_cpu.append((time.process_time() - cpu) / len(chips))
    theirs = np.stack(theirs)
    ours = ours.double().cpu().numpy()

    diff = float(np.abs(ours - theirs).max())
    ours_ms, dlib_ms = 1000 * statistics.median(our_times), 1000 * statistics.median(dlib_times)
    print(f"faces: {len(faces)} in {len({name for name, _, _ in faces})} images; torch threads {args.threads}, "
          f"device {device}")
    print(f"descriptor |ours - dlib| max {diff:.3g}, mean {np.abs(ours - theirs).mean():.3g} "
          f"(descriptor norm ~{np.linalg.norm(theirs, axis=1).mean():.2f})")
    print(f"median per face: ours {ours_ms:.2f} ms (batch of {len(chips)}), dlib {dlib_ms:.2f} ms (one by one); "
          f"dlib/ours = {dlib_ms / ours_ms:.2f}")
    ours_cpu, theirs_cpu = 1000 * statistics.median(our_cpu), 1000 * statistics.median(dlib_cpu)
    print(f"median CPU time per face (all threads; less sensitive to a busy machine): ours {ours_cpu:.2f} ms, "
          f"dlib {theirs_cpu:.2f} ms; dlib/ours = {theirs_cpu / ours_cpu:.2f}")

    if args.auc:
        largest: dict[str, int] = {}
        for index, (name, area, _) in enumerate(faces):
            if identity_of(name) is not None and (name not in largest or area > faces[largest[name]][1]):
                largest[name] = index
        names = sorted(largest)
        ids = [identity_of(name) for name in names]
        for label, descriptors in (("ours", ours), ("dlib", theirs)):
            d = torch.from_numpy(descriptors[[largest[name] for name in names]])
            scores, same = pair_scores(d, ids, "euclidean")
            print(f"same/different-person ROC AUC ({label}, Euclidean, {len(names)} photos, "
                  f"{len(set(ids))} identities, {int(same.sum())} same / {int((~same).sum())} different pairs): "
                  f"{verification_auc(d, ids):.4f} (pair count: {roc_auc_pairs(scores, same):.4f}); "
                  f"cosine: {verification_auc(d, ids, 'cosine'):.4f}")

    print(f"RESULT n={len(faces)} max_abs_diff={diff:.3g} ours_ms={ours_ms:.2f} dlib_ms={dlib_ms:.2f}")


if __name__ == "__main__":
    main()
