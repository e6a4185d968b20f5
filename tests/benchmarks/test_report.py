"""The benchmarks' shared scaffolding: the header line and where results go."""

from benchmarks import _report


def test_benchmark_header_names_the_command():
    line = _report.machine("posteriordb", smoke=True)
    assert line.startswith("Machine: ") and line.endswith(
        "Command: `python -m benchmarks.posteriordb --smoke`."
    )
    assert _report.RESULTS.name == "results"
    assert _report.RESULTS.parent.name == "benchmarks"
