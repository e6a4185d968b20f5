"""The Rényi cost benchmark runs end to end at toy sizes and reports plausible timings."""

from benchmarks import renyi_cost
from tests.benchmarks.tables import is_ratio, number, rows


def test_renyi_cost_smoke():
    table = rows(renyi_cost.main(smoke=True), "model")
    assert [(row["model"].split(",")[0].split(" (")[0], row["particles"]) for row in table] == [
        ("logistic regression", "1"),
        ("logistic regression", "10"),
        ("BNN", "1"),
        ("BNN", "10"),
    ]
    for row in table:
        times = [number(cell) for column, cell in row.items() if "(ms)" in column]
        assert len(times) == 5 and all(t > 0 for t in times), row
        ours, base = row["pb.RenyiELBO α=0.5 (ms)"], row["Trace_ELBO (ms)"]
        assert is_ratio(row["pb α=0.5 / Trace_ELBO"], ours, base), row
