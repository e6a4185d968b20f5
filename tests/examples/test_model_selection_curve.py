"""The model-selection tutorial's evidence curve: sgd_evidence's bound rises then falls along the
chains (the overfitting start), Hutchinson follows the exact log-determinants, Langevin noise keeps
it up, and the numbers behind the notes on the lecture's formulas are what the formulas say."""

import math

import pytest
import torch

from tests.scenarios import load_example

selection = load_example("model_selection")


@pytest.fixture(scope="module")
def curves():
    return selection.evidence_curve(smoke=True, plot=False)


def test_the_bound_rises_then_falls_below_the_evidence(curves):
    for label in ("plain, exact", "preconditioned, exact"):
        curve = curves.curves[label]
        steps = len(curve.bound) - 1
        assert 0 < curve.best_step < steps, label
        # rises from the wide start, falls as the chains shrink past the posterior
        assert curve.best > float(curve.bound[0]) + 100 and curve.best > float(curve.bound[-1])
    falling = curves.curves["preconditioned, exact"]
    assert falling.best - float(falling.bound[-1]) > 20  # measured 40 in smoke mode
    # A lower bound up to the Monte Carlo error of 20 chains' average of log p (its standard
    # deviation is about sqrt(D / 2) = 1.4 nats at the posterior, so 1.4 / sqrt(20) = 0.3; the
    # best of a curve is a maximum over steps, so three of those, 1 nat).
    for label, curve in curves.curves.items():
        if "Langevin" not in label:
            assert curve.best <= curves.exact + 1.0, label


def test_hutchinson_follows_the_exact_log_determinant(curves):
    # Same start and same deterministic steps: the curves differ by the second-order expansion's
    # remainder (tr B^3 / 3 <= 0.003 nats a step at beta * lambda_max = 0.2, times 60 steps:
    # 0.2) and the probes' noise; 0.5 covers both (measured 0.01 and 0.16).
    for kind in ("plain", "preconditioned"):
        exact = curves.curves[f"{kind}, exact"]
        probed = curves.curves[f"{kind}, Hutchinson"]
        assert abs(probed.best - exact.best) < 0.5, kind
        assert abs(probed.best_step - exact.best_step) <= 3, kind


def test_langevin_noise_keeps_the_bound_up(curves):
    langevin = curves.curves["preconditioned, Langevin noise 2β"]
    gradient_descent = curves.curves["preconditioned, exact"]
    assert float(langevin.bound[-1]) > float(gradient_descent.bound[-1]) + 20
    # near the evidence on its plateau, within the 20 chains' Monte Carlo error (see above)
    half = len(langevin.bound) // 2
    assert abs(float(langevin.bound[half:].mean()) - curves.exact) < 1.0


def test_the_numbers_behind_the_lecture_notes(curves):
    log_det = curves.log_det
    # the 1/2 of log(1 - x) = -x - x^2/2 - ...: the package's expansion is nearer the exact
    # log-determinant, and dropping the 1/2 lowers it by exactly tr(B^2) / 2
    assert abs(log_det["with 1/2"] - log_det["exact"]) < abs(
        log_det["without 1/2"] - log_det["exact"]
    )
    x, _ = selection.make_data()
    X = selection.features(x, 3)
    hessian = X.T @ X / selection.NOISE**2 + torch.eye(4, dtype=X.dtype) / selection.PRIOR**2
    B = curves.step_sizes["plain"] * hessian
    half_square = float((B @ B).trace()) / 2
    assert math.isclose(log_det["with 1/2"] - log_det["without 1/2"], half_square, rel_tol=1e-9)
    assert math.isclose(
        log_det["exact"],
        float(torch.linalg.slogdet(torch.eye(4) - B.float()).logabsdet),
        rel_tol=1e-5,
    )
    # Langevin noise of variance 2 beta gives the posterior's variance up to the O(beta)
    # discretization factor 1 / (1 - beta h / 2) (beta h = 0.2 on the narrowest direction);
    # noise of variance beta gives half of it (the posterior at temperature 1/2)
    ratio = curves.variance_ratio
    assert math.isclose(ratio["2β"], 1 / (1 - 0.2 / 2), rel_tol=1e-6)
    assert math.isclose(ratio["β"], ratio["2β"] / 2, rel_tol=1e-12)
