"""The benchmarks' partial reruns: the runs that check a stale table's headline in minutes (the
BLR's defaults alone on posteriordb; IVON's two starts alone on the UCI BNN) run end to end and
say, in their header, which command and which pyro_blr made them."""

import pytest

from benchmarks import _report, posteriordb, uci_bnn
from tests.benchmarks.tables import rows


def test_every_header_names_the_pyro_blr_it_measured():
    line = _report.machine("deep", smoke=False)
    assert "pyro_blr " in line and line.endswith("Command: `python -m benchmarks.deep`.")


@pytest.mark.slow  # IVON's automatic start on 752 coordinates: 10-140 s on a shared machine
def test_uci_ivon_only_measures_both_starts_side_by_side():
    report = uci_bnn.main(smoke=True, datasets=("boston",), ivon_hess_init=1.0, ivon_only=True)
    assert "`python -m benchmarks.uci_bnn --smoke --ivon-only --ivon-hess-init 1`" in report
    assert [row["method"] for row in rows(report, "method")] == [
        "BLR ivon",
        "BLR ivon, hess_init=1",
    ]  # no published rows, no other method


@pytest.mark.slow  # three posteriors' BLR fits and draws: about 10 s
def test_posteriordb_defaults_only_runs_the_blr_defaults_alone():
    report = posteriordb.defaults_only(smoke=True)
    assert "`python -m benchmarks.posteriordb --smoke --defaults-only`" in report
    methods = {row["method"] for row in rows(report, "posterior")}
    assert methods == {posteriordb.BLR_DEFAULTS, posteriordb.BLR_DEFAULTS + " + PSIS"}
    # the headline counts the target with its seconds and, apart, the accuracy alone
    assert " of 3** posteriors; its accuracy, the seconds aside" in report
