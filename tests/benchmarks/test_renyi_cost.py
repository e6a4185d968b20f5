"""The Rényi cost benchmark runs end to end at toy sizes."""

from benchmarks import renyi_cost


def test_renyi_cost_smoke():
    report = renyi_cost.main(smoke=True)
    assert "| BNN, 50 tanh units (442 x 10) | 10 |" in report
    assert "nan" not in report
