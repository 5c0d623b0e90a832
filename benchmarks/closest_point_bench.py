"""Exact closest points on the corpus's real head scan: the KD-tree index against the brute-force anchor,
and one full NoW evaluation (scan against a transformed copy of itself).

Prints per-point times and the ratio to the brute-force anchor measured in the same run. Timings on a
shared machine are noisy; compare ratios, not seconds.

    .venv/bin/python benchmarks/closest_point_bench.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from morphable.eval.now import now_errors
from morphable.geometry.align import Similarity
from morphable.geometry.closest_point import TriangleIndex, closest_points_brute_force
from morphable.io.mesh import fan_triangles, read_obj


def _best_of(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    default = os.environ.get("MORPHABLE_TEST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(default))
    args = parser.parse_args()
    mesh = read_obj(args.data / "flame-fitting/data/scan.obj")
    vertices, triangles = mesh.vertices * 1000, fan_triangles(mesh.faces)
    rng = np.random.default_rng(0)
    points = vertices[rng.choice(len(vertices), 20000, replace=False)] + rng.normal(size=(20000, 3)) * 0.5
    few = points[:100]
    anchor = _best_of(lambda: closest_points_brute_force(few, vertices, triangles), repeat=1) / len(few)
    build = _best_of(lambda: TriangleIndex(vertices, triangles))
    index = TriangleIndex(vertices, triangles)
    fast = _best_of(lambda: index.query(points)) / len(points)
    assert np.allclose(index.query(few).distance, closest_points_brute_force(few, vertices, triangles).distance)
    print(f"scan: {len(vertices)} vertices, {len(triangles)} triangles; queries 0.5 mm off the surface")
    print(f"  brute force (anchor)  {1e6 * anchor:9.1f} us/point   1.0")
    print(f"  TriangleIndex query   {1e6 * fast:9.1f} us/point   {anchor / fast:.0f}x faster   (build {build:.2f} s)")
    lm = np.load(args.data / "flame-fitting/data/scan_lmks.npy")[[i - 17 for i in (36, 39, 42, 45, 33, 48, 54)]] * 1000
    move = Similarity(0.8, np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), np.array([10.0, 20, 30]))
    start = time.perf_counter()
    result = now_errors(vertices, lm, move.apply(vertices), triangles, move.apply(lm) + rng.normal(size=(7, 3)))
    print(f"  NoW, scan vs moved copy (1 mm landmark noise): {time.perf_counter() - start:.1f} s, "
          f"{len(result.distances)} points, median {result.median_mm:.2e} mm (unreferenced scan vertices count)")


if __name__ == "__main__":
    main()
