"""Landmark fitting, ours vs eos-py, on photos with ground-truth iBUG-68 landmarks.

    python benchmarks/fit_vs_eos.py --data ../shared/data/Spinkoo-Face-alignement/afw/afw [--model sfm] [--iterations 5]

For every ``<stem>.pts`` in DIR with an image beside it (the image is only read for its size), both
methods fit the same model to the same landmarks: eos's ``fit_shape_and_pose`` (SFM shape model + its 6
expression blendshapes, ``ibug_to_sfm.txt`` mapper, contour landmarks, model contour, edge topology,
``--iterations`` iterations) and :func:`morphable.fitting.landmarks.fit_landmarks` (contour on, same
iterations). Each fit is timed on its own (models loaded once, one warm-up fit each excluded); the
median is reported. Ours is also timed on all faces in one batched call (median of three calls, per face):
the throughput of fitting a folder.

Landmark error: mean distance between the model's projected landmarks and the ground truth over the
landmarks both methods fit (the 50 the model defines plus the 16 jawline points), divided by the
outer-eye-corner distance (points 36 and 45, 0-based). The jawline points of *both* fits are read off
their final meshes and cameras by the same rule (:func:`morphable.fitting.contour.contour_correspondences`),
and eos's camera (``get_3x4_affine_camera_matrix``, image pixels, y down) is converted to our
:class:`~morphable.geometry.camera.ScaledOrthographic`, so both are measured in one 0-based pixel frame.
The last line is ``RESULT n=<faces> ours_ms=<median> eos_ms=<median> batched_ms=<per face> ours_nme=<mean>
eos_nme=<mean>``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import morphable
from morphable.fitting.contour import CONTOUR_IDS, contour_correspondences
from morphable.fitting.landmarks import fit_landmarks, fit_terms
from morphable.geometry.camera import ScaledOrthographic
from morphable.geometry.rotation import matrix_to_axis_angle

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm")


def read_pts(path: Path) -> np.ndarray:
    """iBUG ``.pts`` with or without the ``version/n_points/{ }`` header -> ``(68, 2)`` 0-based pixels."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) == 2:
            try:
                rows.append([float(parts[0]), float(parts[1])])
            except ValueError:
                continue
    points = np.asarray(rows, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"{path}: expected 68 points, found {len(rows)}")
    return points - 1.0  # 300-W files are 1-based (MATLAB)


def find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for pts in sorted(folder.glob("*.pts")):
        image = next((pts.with_suffix(s) for s in IMAGE_SUFFIXES if pts.with_suffix(s).exists()), None)
        if image is not None:
            pairs.append((image, pts))
    return pairs


class EosFitter:
    """eos-py 1.5 with the SFM files from the corpus (``eos/share``)."""

    def __init__(self, share: Path, iterations: int):
        import eos

        self.eos = eos
        shape = eos.morphablemodel.load_model(str(share / "sfm_shape_3448.bin"))
        blendshapes = eos.morphablemodel.load_blendshapes(str(share / "expression_blendshapes_3448.bin"))
        self.model = eos.morphablemodel.MorphableModel(shape.get_shape_model(), blendshapes,
                                                       color_model=eos.morphablemodel.PcaModel(),
                                                       vertex_definitions=None,
                                                       texture_coordinates=shape.get_texture_coordinates())
        self.mapper = eos.core.LandmarkMapper(str(share / "ibug_to_sfm.txt"))
        self.topology = eos.morphablemodel.load_edge_topology(str(share / "sfm_3448_edge_topology.json"))
        self.contour_landmarks = eos.fitting.ContourLandmarks.load(str(share / "ibug_to_sfm.txt"))
        self.model_contour = eos.fitting.ModelContour.load(str(share / "sfm_model_contours.json"))
        self.iterations = iterations

    def fit(self, points: np.ndarray, width: int, height: int):
        landmarks = [self.eos.core.Landmark(str(i + 1), [float(x), float(y)]) for i, (x, y) in enumerate(points)]
        return self.eos.fitting.fit_shape_and_pose(self.model, landmarks, self.mapper, width, height, self.topology,
                                                   self.contour_landmarks, self.model_contour,
                                                   num_iterations=self.iterations)

    def camera_and_vertices(self, result, width: int, height: int) -> tuple[ScaledOrthographic, torch.Tensor]:
        """eos's fitted affine camera as our ScaledOrthographic, and its mesh ``(1, V, 3)``."""
        mesh, pose = result[0], result[1]
        P = np.asarray(self.eos.fitting.get_3x4_affine_camera_matrix(pose, width, height), dtype=np.float64)
        s = np.linalg.norm(P[0, :3])
        r0, r1 = P[0, :3] / s, -P[1, :3] / s  # image v = −s (R X)_y + t_y
        R = np.stack([r0, r1, np.cross(r0, r1)])
        cam = ScaledOrthographic(torch.tensor([s]), matrix_to_axis_angle(torch.tensor(R)[None]),
                                 torch.tensor(P[None, :2, 3]))
        return cam, torch.tensor(np.asarray(mesh.vertices), dtype=torch.float64)[None]


def model_landmarks(model, vertices: torch.Tensor, camera: ScaledOrthographic, gt: torch.Tensor) -> torch.Tensor:
    """The model's 68 projected landmarks ``(1, 68, 2)``, jawline by the pose-dependent rule (nan = undefined)."""
    terms = fit_terms(model)
    vertices = vertices.to(torch.float64)
    proj = camera.project(model.landmarks(vertices))
    proj[:, ~model.landmark_mask] = float("nan")
    ids = contour_correspondences(lambda pos: camera.project(vertices[:, terms.contour.region[pos]]),
                                  camera.rotation_matrix.to(torch.float64), gt, terms.contour)
    proj[:, list(CONTOUR_IDS)] = camera.project(vertices[:, ids[0]])
    return proj


def nme(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean point error over the defined landmarks / outer-eye-corner distance."""
    ok = torch.isfinite(pred[0]).all(-1)
    d = (pred[0, ok] - gt[0, ok]).norm(dim=-1).mean()
    return float(d / (gt[0, 36] - gt[0, 45]).norm())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of images with iBUG .pts files")
    parser.add_argument("--model", default="sfm", help="our model (the eos side always uses the SFM files)")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--eos-share", type=Path, default=None,
                        help="eos's share folder (default: eos/share in the corpus mirror)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (eos is single-threaded)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = Path(__file__).resolve().parents[2] / "shared" / "data"
    if corpus.exists():  # fetch the open models from the local corpus mirror (see DESIGN.md)
        os.environ.setdefault("MORPHABLE_MIRROR", str(corpus))

    pairs = find_pairs(args.data)
    if not pairs:
        print(f"no image + .pts pairs in {args.data}", file=sys.stderr)
        return 1
    model = morphable.load_model(args.model)
    sfm = model if args.model == "sfm" else morphable.load_model("sfm")  # eos's fits are measured on the SFM
    eos_fitter = EosFitter(args.eos_share or Path(os.environ["MORPHABLE_MIRROR"]) / "eos" / "share", args.iterations)
    faces = []
    for image, pts in pairs:
        try:
            points = read_pts(pts)
            with Image.open(image) as im:
                faces.append((points, im.size))
        except (ValueError, OSError) as err:  # not a 68-point file, unreadable image: skip it, say so
            print(f"skipped {pts.name}: {err}", file=sys.stderr)
    if not faces:
        print(f"no usable image + 68-point .pts pairs in {args.data}", file=sys.stderr)
        return 1

    warm = torch.tensor(faces[0][0])[None]
    fit_landmarks(model, warm, iterations=args.iterations)
    eos_fitter.fit(faces[0][0], *faces[0][1])

    ours_ms, eos_ms, ours_err, eos_err = [], [], [], []
    for points, (width, height) in faces:
        gt = torch.tensor(points)[None]
        t0 = time.perf_counter()
        fit = fit_landmarks(model, gt, iterations=args.iterations)
        ours_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        result = eos_fitter.fit(points, width, height)
        eos_ms.append((time.perf_counter() - t0) * 1e3)
        ours_err.append(nme(model_landmarks(model, fit.vertices, fit.camera, gt), gt))
        cam, verts = eos_fitter.camera_and_vertices(result, width, height)
        eos_err.append(nme(model_landmarks(sfm, verts, cam, gt), gt))

    batch = torch.tensor(np.stack([f[0] for f in faces]))
    batched = []
    for _ in range(3):
        t0 = time.perf_counter()
        fit_landmarks(model, batch, iterations=args.iterations)
        batched.append((time.perf_counter() - t0) * 1e3 / len(faces))
    batched_ms = statistics.median(batched)

    o_ms, e_ms = statistics.median(ours_ms), statistics.median(eos_ms)
    o_nme, e_nme = float(np.mean(ours_err)), float(np.mean(eos_err))
    print(f"faces: {len(faces)} from {args.data}; model {args.model}; iterations {args.iterations}")
    print(f"time per fit (median ms): ours {o_ms:.2f}, eos {e_ms:.2f}, ratio ours/eos {o_ms / e_ms:.3f}")
    print(f"ours batched (all {len(faces)} faces in one call): {batched_ms:.2f} ms per face, "
          f"ratio batched/eos {batched_ms / e_ms:.3f}")
    print(f"landmark NME (mean, outer-eye-corner normalised): ours {o_nme:.4f}, eos {e_nme:.4f}, "
          f"ratio {o_nme / e_nme:.3f}; ours better on {sum(o < e for o, e in zip(ours_err, eos_err))}/{len(faces)} faces")
    print(f"RESULT n={len(faces)} ours_ms={o_ms:.2f} eos_ms={e_ms:.2f} batched_ms={batched_ms:.2f} "
          f"ours_nme={o_nme:.4f} eos_nme={e_nme:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
