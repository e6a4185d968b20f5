"""The flow benchmark runs end to end at toy sizes (``--quick``) and reports numbers in range."""

import math

from benchmarks import flows
from tests.benchmarks.tables import is_ratio, number, rows


def test_flows_quick():
    report = flows.main(smoke=True)
    table = rows(report, "target")  # the first table: the checks, one row per target
    assert [row["target"] for row in table] == ["banana", "eight schools (centered)"]
    runs = rows(report.split("\n\n")[-1], "target")  # the second: every fit
    guides = {row["guide"] for row in runs}
    assert guides == {*flows.guides(), flows.BLR}, guides
    assert {row["objective"] for row in runs} == {"Trace_ELBO", "Rényi α=0.5", "BLR"}
    for row in runs:
        assert not row["ELBO"].startswith("failed"), row
        elbo, stderr = number(row["ELBO"]), float(row["ELBO"].split("±")[1])
        assert 0 <= stderr < math.inf, row
        if row["target"] == "banana":  # log Z = 0 bounds the ELBO
            assert elbo < 4 * stderr, row
        assert 0 <= number(row["Pareto k̂"]) < 10, row
        assert number(row["worst mean error"]) >= 0, row
        low, high = (float(x) for x in row["sd ratio"].split(" - "))
        assert 0 <= low <= high and math.isfinite(high), row
        assert number(row["ms per step"]) > 0, row
    same = {r["target"]: r for r in runs if r["guide"] == flows.SAME_SIZE}
    default = {r["target"]: r for r in runs if r["guide"] == flows.DEFAULT}
    for row in table:
        target = row["target"]
        cost = row[f"cost / {flows.SAME_SIZE}"]
        assert is_ratio(cost, default[target]["ms per step"], same[target]["ms per step"]), row
