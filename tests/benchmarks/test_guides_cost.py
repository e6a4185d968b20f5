"""The guides' cost benchmark runs end to end at toy sizes."""

from benchmarks import guides_cost


def test_guides_cost_smoke():
    report = guides_cost.main(smoke=True)
    assert "| AutoMixture (K=3) + BLR mixture | 2 |" in report
    assert "nan" not in report
