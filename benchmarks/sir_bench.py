"""SIR networks in the fidelity benchmarks: ``identity_consistency.py`` or ``scan_recover.py`` with a SIR
network (``morphable.nets.sir``) as the identity regressor.

The benchmarks take the identity prior of the landmark fit from ``--shape-from regressor --regressor X``
(``benchmarks/_shape_from.py``), which loads Genova weights; this wrapper makes ``--regressor`` read a SIR
weights file (or a shipped name such as ``sir-ict``) instead, then runs the benchmark unchanged: the SIR shape
is the prior mean, the network's ``prior_precision`` its precision (or ``--lambda-identity``).

**Split.** SIR trains on the odd-numbered deepface identities (person01, 03, …, 13 = the manifest's
deepface01, 03, …); ``benchmarks/data/deepface_ids_sir_heldout.json`` lists the even-numbered ones (6 people,
28 photos), never seen in training. Score Genova on the same file for a fair comparison:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sir_bench.py identity_consistency \\
        --data ../shared/data/deepface/tests/unit/dataset --ids benchmarks/data/deepface_ids_sir_heldout.json \\
        --shape-from regressor --regressor RUN/sir-ict.pt
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/identity_consistency.py \\
        --data ../shared/data/deepface/tests/unit/dataset --ids benchmarks/data/deepface_ids_sir_heldout.json \\
        --shape-from regressor                                   # the shipped Genova regressor
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sir_bench.py scan_recover --shape-from regressor \\
        --regressor RUN/sir-ict.pt

Output and ``RESULT`` line: those of the benchmark run.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("identity_consistency", "scan_recover")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        sys.exit(f"usage: sir_bench.py {{{','.join(BENCHMARKS)}}} [that benchmark's arguments]")
    sys.path.insert(0, str(HERE))
    import _shape_from

    from morphable.nets.sir import load_sir

    _shape_from.load_regressor = load_sir  # --regressor names a SIR weights file or shipped name
    name = sys.argv.pop(1)
    sys.argv[0] = str(HERE / f"{name}.py")
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
