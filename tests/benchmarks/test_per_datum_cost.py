"""The per-datum cost benchmark's smoke run: numbers, not only a header."""

import math

from benchmarks import per_datum_cost


def test_per_datum_cost_smoke():
    results = per_datum_cost.main(smoke=True)
    assert [r["model"].split(",")[0] for r in results] == [
        "logistic `X @ w`",
        "logistic `X[idx] @ w`",
        "BNN",
        "logistic `X @ w`",
    ]
    whole, indexed, _, _ = results
    # A model that reads X whole cannot run on one datum; one that reads X[idx] can.
    assert whole["one datum each"] is None and indexed["one datum each"] is not None
    assert [r["taken"] for r in results] == [
        "forward mode",
        "one datum each",
        "one datum each",
        "batched backward",
    ]
    for row in results:
        # float32 rows agree with the batched backward pass's to rounding (measured 1e-7)
        assert row["error"] < 1e-4
        for way in ("gradient", "batched backward", "forward mode", "one datum each"):
            ms = row[way]
            assert ms is None or (math.isfinite(ms) and ms > 0), (row["model"], way)
