"""Photometric fitting on real photos: is the rendered face closer to the photo than the landmark fit's?

For every photo (dlib landmarks, ICT model): the landmark-only fit, then two inverse renderings from it —
``sparse``: the landmark fit's geometry held fixed, only light and albedo fitted (the best the sparse
geometry can render), and ``photometric``: the full fit (geometry too). Both are scored by the mean RGB
distance between the rendering and the photo over the rendered face pixels (``photometric_error``).
``--multi ID`` also fits the listed photos of one person with one shared identity and albedo.

    python benchmarks/photometric_real.py [--images F ...] [--multi F ...] [--out DIR]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import morphable
from morphable.errors import InputError
from morphable.fitting.landmarks import fit_landmarks
from morphable.fitting.photometric import PhotometricConfig, Stage, fit_photometric, photometric_error
from morphable.io import write_image
from morphable.reconstruct import find_faces
from morphable.viz.comparison import side_by_side

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_IMAGES = sorted((DATA / "PRNet/TestImages/AFLW2000").glob("*.jpg")) + [
    DATA / "3DDFA/samples/emma_input.jpg", DATA / "deepface/tests/unit/dataset/img1.jpg",
    DATA / "deepface/tests/unit/dataset/img16.jpg", DATA / "deepface/tests/unit/dataset/img26.jpg"]
APPEARANCE_ONLY = PhotometricConfig(schedule=(Stage(64, 20, ("light",)), Stage(96, 40, ("albedo_lowfreq", "light")),
                                              Stage(160, 20, ("albedo_lowfreq", "light")),
                                              Stage(160, 10, ("albedo", "light"))),
                                    tolerance=5e-4, patience=20)  # the anchor keeps its long, patient schedule
MAX_SIDE = 512  # photos are shrunk so that the final full-size rendering stays cheap


def load(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Photo (shrunk to MAX_SIDE) as ``(1, H, W, 3)`` in [0, 1] and its largest face's landmarks ``(1, 68, 2)``
    in the shrunk photo's pixels (the choice and the working copy of :func:`morphable.reconstruct`)."""
    try:
        (face,) = find_faces(path, max_side=MAX_SIDE)
    except InputError:
        return None
    return (torch.from_numpy(np.array(face.photo)).float()[None] / 255,
            torch.as_tensor(face.landmarks, dtype=torch.float32)[None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="*", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--multi", nargs="*", type=Path,
                        default=[DATA / f"deepface/tests/unit/dataset/img{i}.jpg" for i in (1, 2, 4, 5)])
    parser.add_argument("--out", type=Path, default=Path("out/photometric_real"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = morphable.load_model("ict")
    rows = []
    for path in args.images:
        loaded = load(path)
        if loaded is None:
            print(f"{path.name}: no face found")
            continue
        image, lmk = loaded
        sparse = fit_landmarks(model, lmk)
        t0 = time.perf_counter()
        fixed = fit_photometric(model, image, lmk, init=sparse, config=APPEARANCE_ONLY)
        full = fit_photometric(model, image, lmk, init=sparse)
        seconds = time.perf_counter() - t0
        e_sparse = photometric_error(fixed.render, image, fixed.alpha)
        e_photo = photometric_error(full.render, image, full.alpha)
        rows.append((path.name, e_sparse, e_photo))
        args.out.mkdir(parents=True, exist_ok=True)
        panel = np.concatenate([side_by_side(image[0].numpy(), fixed.render[0].numpy(), fixed.alpha[0].numpy()),
                                side_by_side(image[0].numpy(), full.render[0].numpy(), full.alpha[0].numpy())], 0)
        write_image(args.out / f"{path.stem}.png", panel)
        print(f"{path.name:28s} sparse {e_sparse:.4f}  photometric {e_photo:.4f}  ({seconds:.1f} s for both)", flush=True)
    better = sum(p < s for _, s, p in rows)
    print(f"photometric error lower than the sparse fit's on {better} of {len(rows)} photos; mean "
          f"{np.mean([r[1] for r in rows]):.4f} -> {np.mean([r[2] for r in rows]):.4f}")

    loaded = [load(p) for p in args.multi]
    if loaded and all(x is not None for x in loaded):
        H = max(x[0].shape[1] for x in loaded)
        W = max(x[0].shape[2] for x in loaded)
        images = torch.zeros(len(loaded), H, W, 3)
        for i, (img, _) in enumerate(loaded):
            images[i, :img.shape[1], :img.shape[2]] = img[0]
        lmk = torch.cat([x[1] for x in loaded])
        from morphable.fitting.multi import fit_landmarks_multi

        init = fit_landmarks_multi(model, lmk)
        multi = fit_photometric(model, images, lmk, init=init, shared_identity=True)
        for i, p in enumerate(args.multi):
            h, w = loaded[i][0].shape[1:3]
            err = photometric_error(multi.render[i:i + 1, :h, :w], images[i:i + 1, :h, :w], multi.alpha[i:i + 1, :h, :w])
            write_image(args.out / f"multi_{p.stem}.png",
                        side_by_side(images[i, :h, :w].numpy(), multi.render[i, :h, :w].numpy(), multi.alpha[i, :h, :w].numpy()))
            print(f"multi-image {p.name}: photometric error {err:.4f} with the shared identity")
        same = bool(torch.allclose(multi.identity[0], multi.identity[1:]))
        print(f"one identity for {len(args.multi)} photos: {same}")


if __name__ == "__main__":
    main()
