"""The examples' shared scaffolding: markdown tables, reports and figures."""

from examples import _report


def test_markdown_table_lines():
    lines = _report.markdown_table(["method", "error"], [("BLR", "0.02"), ("Adam", 1.5)])
    assert lines == ["| method | error |", "|---|---|", "| BLR | 0.02 |", "| Adam | 1.5 |"]


def test_report_writes_only_outside_smoke_runs(tmp_path, capsys):
    lines = ["title", "", *_report.markdown_table(["a"], [(1,)])]
    assert _report.report(lines, "smoke", smoke=True, folder=tmp_path) == "\n".join(lines)
    assert not (tmp_path / "smoke.md").exists()
    _report.report(lines, "full", smoke=False, folder=tmp_path / "results")
    assert (tmp_path / "results" / "full.md").read_text() == "\n".join(lines) + "\n"
    assert capsys.readouterr().out.count("| 1 |") == 2


def test_save_figure_writes_a_png(tmp_path):
    fig, ax = _report.pyplot().subplots()
    ax.plot([0, 1], [1, 0])
    path = _report.save_figure(fig, "line", dpi=50, folder=tmp_path / "assets")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
