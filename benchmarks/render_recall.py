"""Are the regressed faces recognisable? Recall@1 of renders of the predictions against the photos.

Genova et al. (2018, Sec. 4.3) measure likeness by a face-recognition network's similarity between a photo
and a rendering of its predicted face. Here: for every face of a prepared dataset with identity labels
(``morphable data prepare PHOTOS -o DIR --identities FILE``), the Genova regressor predicts identity and
albedo from the photo's chip; the prediction is rendered frontally by our renderer (the recipe's validation lights, grey
background) straight into a dlib chip; each render's dlib descriptor queries the gallery of all photo
descriptors, and recall@1 is the share whose nearest photo shows the same person. Anchor in the same
run: the same renders with the model's **mean shape** (predicted albedo kept), which shows what the shape
adds. (dlib's descriptors are also the training loss's, so this is a likeness check, not an independent
recognition benchmark.)

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/render_recall.py --dataset DIR [--regressor PATH|ict]

Last line: ``RESULT n= n_ids= recall_at_1= recall_at_1_mean_shape= cos_photo_render= cos_photo_mean_shape=``.
"""
from __future__ import annotations

import argparse
import sys

import torch

import morphable
from morphable.errors import MorphableError
from morphable.losses.identity import cosine_similarity, identity_recall_at_k
from morphable.nets.genova import load_regressor
from morphable.train.chip_render import ChipRenderer
from morphable.train.data.manifest import load_dataset
from morphable.train.recipes.genova import drawn_albedo_space, frontal_chips


def frontal_descriptors(renderer: ChipRenderer, space, encoder, identity: torch.Tensor,
                        albedo: torch.Tensor) -> torch.Tensor:
    """dlib descriptors ``(N, 128)`` of frontal renders of neutral faces with these coefficients."""
    return torch.cat([encoder(frontal_chips(renderer, space, identity[i:i + 16], albedo[i:i + 16])).descriptor
                      for i in range(0, len(identity), 16)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a prepared dataset with identity labels")
    parser.add_argument("--regressor", default="ict", help="shipped name or weights file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        reg = load_regressor(args.regressor)
        ds = load_dataset(args.dataset)
    except MorphableError as err:
        sys.exit(f"error: {err}")
    ids = [item.identity for item in ds.items]
    if any(i is None for i in ids):
        sys.exit(f"error: {args.dataset}: every face needs an identity label (prepare with --identities)")
    model = morphable.load_model(reg.model_name)
    renderer = ChipRenderer(model)
    with torch.no_grad():
        pred = reg.eval()(ds.pooled)
        space = drawn_albedo_space(renderer, reg.albedo_modes)  # the space the regressor was trained in
        renders = frontal_descriptors(renderer, space, reg.encoder, pred["identity"], pred["albedo"])
        mean_shape = frontal_descriptors(renderer, space, reg.encoder, torch.zeros_like(pred["identity"]), pred["albedo"])
    recall = identity_recall_at_k(renders, ids, ds.descriptors, ids, ks=(1,))[1]
    recall_mean = identity_recall_at_k(mean_shape, ids, ds.descriptors, ids, ks=(1,))[1]
    cos = float(cosine_similarity(ds.descriptors, renders).mean())
    cos_mean = float(cosine_similarity(ds.descriptors, mean_shape).mean())
    print(f"{len(ids)} faces, {len(set(ids))} identities; regressor {args.regressor}")
    print(f"recall@1 of renders among the photos: {recall:.3f} (mean shape, same albedo: {recall_mean:.3f})")
    print(f"RESULT n={len(ids)} n_ids={len(set(ids))} recall_at_1={recall:.4f} recall_at_1_mean_shape={recall_mean:.4f} "
          f"cos_photo_render={cos:.4f} cos_photo_mean_shape={cos_mean:.4f}")


if __name__ == "__main__":
    main()
