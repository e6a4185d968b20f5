"""The guides' cost benchmark runs end to end at toy sizes and reports plausible timings."""

from benchmarks import guides_cost
from tests.benchmarks.tables import is_ratio, number, rows


def test_guides_cost_smoke():
    table = rows(guides_cost.main(smoke=True), "guide + driver")
    assert [row["guide + driver"] for row in table] == [
        "AutoExpFamily + SVI",
        "AutoExpFamily + BLR expfamily",
        "AutoMixture (K=3) + SVI",
        "AutoMixture (K=3) + BLR mixture",
    ]
    for row in table:
        ms, base = row["ms per step"], row["AutoNormal + SVI (ms)"]
        assert row["particles"] == "2" and number(ms) > 0 and number(base) > 0, row
        assert is_ratio(row["ratio"], ms, base), row
