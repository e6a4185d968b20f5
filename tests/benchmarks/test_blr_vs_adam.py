"""The BLR-vs-Adam benchmark runs end to end at toy sizes and reports plausible numbers."""

import re

from benchmarks import blr_vs_adam
from tests.benchmarks.tables import is_ratio, number, rows


def test_benchmark_smoke():
    report = blr_vs_adam.main(smoke=True)
    assert "(d)" not in report  # accuracy against references is benchmarks/posteriordb.py

    # (a) The target is 1 nat below the "optimum" of a 20-step BLR run, on the same fixed
    # draws; BLR reaches it within its 200 steps. Every ELBO lies below the log evidence of
    # this model (about -57: benchmarks/results/blr_vs_adam.md), far below -50.
    optimum = float(re.search(r"optimum (-?\d+\.\d+)", report).group(1))
    methods = {row["method"]: row for row in rows(report, "method")}
    assert len(methods) == 1 + len(blr_vs_adam.ADAM_LRS) + 1
    blr = methods["BLR von (mc_samples=4)"]
    assert number(blr["seconds"]) > 0 and 1 <= int(blr["steps"]) <= 200
    assert optimum - 1 <= number(blr["ELBO at stop"]) < -50
    for name, row in methods.items():
        assert number(row["ELBO at stop"]) < -50, name
        if row["seconds"] != "not reached":
            assert number(row["seconds"]) > 0 and number(row["ELBO at stop"]) >= optimum - 1

    # (b), (c) Milliseconds per step are positive and the ratio column is their ratio.
    for first, adam, blr_ms in [
        ("particles", "SVI + Adam + Trace_ELBO (ms)", "BLR ivon (ms)"),
        ("N", "SVI + Adam (ms)", "BLR ivon (ms)"),
    ]:
        table = rows(report, first)
        assert len(table) == 2
        for row in table:
            assert number(row[adam]) > 0 and number(row[blr_ms]) > 0
            assert is_ratio(row["BLR / Adam"], row[blr_ms], row[adam])
            assert first != "N" or number(row["randperm(N) (ms)"]) >= 0
