"""Prints the fuzzing table (cases, accepted, rejected with our error, foreign exceptions per parser) at the
end of a run that fuzzed anything; writes it as JSON to ``MORPHABLE_FUZZ_REPORT`` when set."""
from __future__ import annotations

import json
import os

from tests.fuzz.harness import EXAMPLES, STATS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not STATS:
        return
    write = terminalreporter.write_line
    write(f"fuzz cases per parser (MORPHABLE_FUZZ_EXAMPLES={EXAMPLES} per property):")
    write(f"  {'parser':<28} {'cases':>7} {'accepted':>9} {'rejected':>9} {'foreign':>8}")
    for name in sorted(STATS):
        s = STATS[name]
        write(f"  {name:<28} {s['cases']:>7} {s['accepted']:>9} {s['rejected']:>9} {s['foreign']:>8}")
    total = sum(s["cases"] for s in STATS.values())
    foreign = sum(s["foreign"] for s in STATS.values())
    write(f"  {'total':<28} {total:>7} {'':>9} {'':>9} {foreign:>8}")
    report = os.environ.get("MORPHABLE_FUZZ_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump({name: dict(s) for name, s in STATS.items()}, f, indent=1, sort_keys=True)
