"""The benchmark runs end to end at toy sizes (parts that need no data outside the project)."""

from benchmarks import blr_vs_adam


def test_benchmark_smoke(capsys):
    report = blr_vs_adam.main(smoke=True, parts="abc")
    for heading in ["(a) Time to within 1 nat", "(b) Time per step", "(c) Time per step as"]:
        assert heading in report
    assert "| BLR von (mc_samples=4) |" in report
    assert "nan" not in report
