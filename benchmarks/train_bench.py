"""Training throughput: samples/s of every registered recipe on a tiny configuration, at 1 and 2 threads,
with the peak memory of the training process.

Every recipe in :func:`morphable.train.recipes.known_recipes` (the built-in registry, ``register``-ed ones
and ``MORPHABLE_EXTRA_RECIPES``) is trained by the real :class:`~morphable.train.trainer.Trainer` in a
child process of its own: the recipe is built from its tiny configuration, then for each thread count
``--warmup`` untimed steps and ``--steps`` timed ones (the trainer logs samples/s per step; the median is
reported). A recipe's tiny configuration is its ``tiny_overrides(folder)`` classmethod when it has one
(``--set`` overrides for a config that builds in seconds, data made under ``folder``), else the entry in
:data:`TINY` below. A recipe with neither, or one that fails to build or train (missing data, a bad
key), is listed as skipped with the one-line reason; the others still run.

Peak memory: the child's maximum resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``): model,
data, autograd graph and the thread pools of one training process, setup included. ``tracemalloc`` would
miss tensor storage (torch allocates outside Python's allocator), so it is not used.

Anchor, measured in the same child right before each timed block: a float32 GEMM (512², forward matrix
product + the two backward products) at the same thread count, in GFLOP/s. ``samples_per_gflop`` =
samples/s ÷ anchor GFLOP/s is the figure that survives a loaded machine; ``scaling`` = samples/s at 2
threads ÷ at 1.

Last line: ``RESULT recipes=<n run> skipped=<n> <name>_1t=<samples/s> <name>_2t=<samples/s>
<name>_peak_mb=<MB> ... anchor_gflops_1t=<> anchor_gflops_2t=<>``.

    python benchmarks/train_bench.py [--steps 5] [--warmup 2] [--threads 1 2] [--only genova] [--set KEY=VALUE ...]

``--set`` adds config overrides after each tiny configuration (with ``--only``, to time one recipe's option:
``--only stn --set net.tune=5 --set net.precision=auto``); a key a recipe does not have skips that recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from morphable.train.recipes import get_recipe, known_recipes


EXAMPLE_PHOTOS = "superviseddescent/examples/data/ibug_lfpw_trainset"
"""Photos with iBUG .pts files in the data mirror (``MORPHABLE_MIRROR``), for recipes that train on real faces."""


def _real_faces(folder: Path, n: int) -> Path:
    """A dataset (``morphable data prepare``) of the first ``n`` example photos, made under ``folder``."""
    from morphable.models.registry import mirror
    from morphable.train.data.prepare import prepare_dataset

    root = mirror()
    photos = sorted((root / EXAMPLE_PHOTOS).glob("*.png"))[:n] if root is not None else []
    if not photos:
        raise FileNotFoundError(f"no example photos: {EXAMPLE_PHOTOS} not under MORPHABLE_MIRROR ({root})")
    prepare_dataset(photos, folder / "real", progress=False)
    return folder / "real"


def _genova_tiny(folder: Path) -> list[str]:
    """Genova at test size, stage 2 from the first step (the renderer + face-recognition path that dominates a
    real run): 3 real photos, 24 + 8 synthetic faces, 2 photos × 2 views a step."""
    return [f"data.real={_real_faces(folder, 3)}", f"data.cache={folder / 'cache'}", "data.synthetic=24",
            "data.synthetic_val=8", "data.real_val_fraction=0.0", "stages.stage1_steps=0", "stages.batch_real=2",
            "stages.batch_synthetic=8", "loss.views=2", "net.hidden=64", "model.albedo_modes=2"]


def _ringnet_tiny(folder: Path) -> list[str]:
    """RingNet at its test size (tests/train/test_ringnet_recipe.py): 2 real photos, 3 synthetic identities."""
    return [f"data.cache={folder / 'cache'}", f"data.real={_real_faces(folder, 2)}", "data.synthetic_identities=3",
            "data.synthetic_images=5", "data.synthetic_val_identities=2", "data.crops=3", "ring.identities=2",
            "net.hidden=32"]


def _stn_tiny(folder: Path) -> list[str]:
    """3DMM-STN at its test size (tests/train/test_stn_recipe.py): SFM, 32 synthetic identities × 2 views."""
    return [f"data.cache={folder / 'cache'}", "net.hidden=0", "data.identities=32", "data.val_identities=4",
            "data.views=2", "model.n_shape=4", "model.texture_size=16", "model.visibility_resolution=64",
            "loss.batch=8"]


def _sir_tiny(folder: Path) -> list[str]:
    """SIR at its test size (tests/train/test_sir_recipe.py), stage 2 (pixel and face-recognition terms) from the
    first step: 3 example photos as identity rows of two made-up people (``b`` held out), 2 as landmark rows,
    3 synthetic identities."""
    from morphable.models.registry import mirror
    from morphable.train.data.prepare import prepare_dataset

    root = mirror()
    photos = sorted((root / EXAMPLE_PHOTOS).glob("*.png"))[:3] if root is not None else []
    if len(photos) < 3:
        raise FileNotFoundError(f"no example photos: {EXAMPLE_PHOTOS} not under MORPHABLE_MIRROR ({root})")
    ident = folder / "ident"
    prepare_dataset(photos, ident, identities={photos[0].stem: "a", photos[1].stem: "a", photos[2].stem: "b"},
                    progress=False)
    return [f"data.cache={folder / 'cache'}", f"data.identity_real={ident}", "data.train_identities=a",
            f"data.landmark_real={_real_faces(folder, 2)}", "data.synthetic_identities=3", "data.synthetic_images=2",
            "data.synthetic_val_identities=2", "data.real_identity_share=0.5", "batch.identities=2", "batch.images=2",
            "batch.landmark=2", "batch.pixel=2", "stages.stage1_steps=0", "net.hidden=32"]


TINY: dict[str, Callable[[Path], list[str]]] = {"genova": _genova_tiny, "ringnet": _ringnet_tiny, "sir": _sir_tiny,
                                                "stn": _stn_tiny}
"""Tiny configurations of recipes that do not define ``tiny_overrides`` themselves."""


def anchor_gflops(seconds: float = 0.3) -> float:
    """GFLOP/s of a 512² float32 matrix product with its two backward products, at the current thread count."""
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    g = torch.randn(512, 512)
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _ = a @ b, g @ b.T, a.T @ g
        runs += 1
    return 3 * 2 * 512 ** 3 * runs / (time.perf_counter() - t0) / 1e9


def child(name: str, threads: list[int], warmup: int, steps: int, extra: list[str] = ()) -> dict:
    """Build recipe ``name`` tiny (then ``extra`` overrides), train it at each thread count; the figures as a dict
    (or a skip reason)."""
    from morphable.train.config import load_config
    from morphable.train.logging import read_log
    from morphable.train.trainer import Trainer, seed_everything

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        try:
            cls = get_recipe(name)
            tiny = getattr(cls, "tiny_overrides", None) or TINY.get(name)
            if tiny is None:
                return {"skipped": f"no tiny configuration (give {cls.__name__} a tiny_overrides(folder) classmethod)"}
            per_block = warmup + steps
            overrides = list(tiny(folder)) + list(extra) + [
                f"train.steps={per_block * len(threads)}", "train.log_every=1", "train.val_every=0",
                "train.image_every=0", "train.checkpoint_every=0", "train.threads=0"]
            config = load_config(cls.Config, None, overrides)
            seed_everything(config.train.seed)
            trainer = Trainer(cls(config, folder), config, folder / "run", progress=False)
        except Exception as err:  # a recipe that cannot build a tiny config is skipped, the others still run
            return {"skipped": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        out: dict = {"peak_mb": 0.0}
        for k, n in enumerate(threads):
            torch.set_num_threads(n)
            gflops = anchor_gflops()
            trainer.run(until=k * per_block + warmup)
            trainer.run(until=(k + 1) * per_block)
            rows = [r for r in read_log(folder / "run" / "log.jsonl")
                    if "samples_per_s" in r and k * per_block + warmup < r["step"] <= (k + 1) * per_block]
            rate = float(np.median([r["samples_per_s"] for r in rows]))
            out[f"{n}t"] = {"samples_per_s": rate, "anchor_gflops": gflops, "samples_per_gflop": rate / gflops,
                            "steps": len(rows)}
        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per thread count")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="*", default=None, help="these recipes only")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override after each tiny configuration (repeatable)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.threads, args.warmup, args.steps, args.overrides)))
        return
    names = sorted(known_recipes()) if args.only is None else args.only
    result = {}
    ran = skipped = 0
    anchors: dict[int, list[float]] = {n: [] for n in args.threads}
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", *map(str, args.threads), *(f"--set={o}" for o in args.overrides)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        lines = proc.stdout.strip().splitlines()
        try:
            out = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            out = {"skipped": f"the child process failed (exit {proc.returncode}): {err}"}
        if "skipped" in out:
            skipped += 1
            print(f"{name:12s} skipped: {out['skipped']}", flush=True)
            continue
        ran += 1
        cells = []
        for n in args.threads:
            f = out[f"{n}t"]
            anchors[n].append(f["anchor_gflops"])
            result[f"{name}_{n}t"] = f"{f['samples_per_s']:.2f}"
            cells.append(f"{n} thread{'s' if n > 1 else ''}: {f['samples_per_s']:.2f} samples/s "
                         f"({f['samples_per_gflop']:.3f} per anchor GFLOP/s, anchor {f['anchor_gflops']:.1f} GFLOP/s)")
        if len(args.threads) > 1:
            lo, hi = out[f"{args.threads[0]}t"], out[f"{args.threads[-1]}t"]
            scaling = hi["samples_per_s"] / lo["samples_per_s"]
            result[f"{name}_scaling"] = f"{scaling:.2f}"
            cells.append(f"scaling {args.threads[-1]}/{args.threads[0]} threads {scaling:.2f}")
        result[f"{name}_peak_mb"] = f"{out['peak_mb']:.0f}"
        print(f"{name:12s} " + "; ".join(cells) + f"; peak RSS {out['peak_mb']:.0f} MB", flush=True)
    for n in args.threads:
        if anchors[n]:
            result[f"anchor_gflops_{n}t"] = f"{np.median(anchors[n]):.1f}"
    print("RESULT " + " ".join([f"recipes={ran}", f"skipped={skipped}"] + [f"{k}={v}" for k, v in result.items()]))


if __name__ == "__main__":
    main()
