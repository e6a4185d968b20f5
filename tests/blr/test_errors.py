"""Every documented error, with its message, and the guide left untouched on failure."""

import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoGuideList,
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_value,
)

import pyro_blr as pb
from tests.scenarios import linear_regression


@pytest.fixture
def scenario():
    return linear_regression()


@pytest.mark.parametrize(
    "make_guide",
    [AutoDelta, lambda model: AutoIAFNormal(model, hidden_dim=[4]), AutoGuideList],
    ids=["AutoDelta", "AutoIAFNormal", "AutoGuideList"],
)
def test_guides_without_a_gaussian_are_refused(scenario, make_guide):
    guide = make_guide(scenario.model)
    with pytest.raises(TypeError, match=f"BLR cannot drive {type(guide).__name__}.*AutoNormal"):
        pb.BLR(scenario.model, guide)


def test_a_hand_written_guide_is_refused(scenario):
    with pytest.raises(TypeError, match="BLR cannot drive function"):
        pb.BLR(scenario.model, lambda X, y: None)


def test_ivon_refuses_a_full_covariance_guide(scenario):
    match = r"cannot drive AutoMultivariateNormal with rule 'ivon': this guide takes rule 'newton'"
    with pytest.raises(TypeError, match=match):
        pb.BLR(scenario.model, AutoMultivariateNormal(scenario.model), rule="ivon")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lr": 0.0}, "lr must be a positive finite number, got 0.0"),
        ({"lr": -1}, "lr must be a positive finite number, got -1"),
        ({"beta1": 1.0}, r"beta1 must lie in \[0, 1\), got 1.0"),
        ({"beta2": -0.1}, r"beta2 must lie in \[0, 1\), got -0.1"),
        ({"rule": "adam"}, "unknown rule 'adam'; choose one of"),
        ({"mc_samples": 3}, "mc_samples must be even, got 3"),
        ({"mc_samples": 0}, "mc_samples must be a positive integer, got 0"),
        ({"clip_radius": 0.0}, "clip_radius must be positive"),
        ({"weight_decay": -1.0}, "weight_decay must be non-negative and finite"),
    ],
)
def test_bad_hyperparameters(scenario, options, message):
    with pytest.raises(ValueError, match=message):
        pb.BLR(scenario.model, AutoNormal(scenario.model), **options)


def test_a_schedule_returning_a_bad_lr_is_caught_at_that_step(scenario):
    blr = pb.BLR(scenario.model, AutoNormal(scenario.model), lr=lambda t: 0.1 - 0.1 * t)
    blr.step(scenario.X, scenario.y)
    with pytest.raises(ValueError, match=r"lr must be a positive finite number, got 0\.0"):
        blr.step(scenario.X, scenario.y)


def snapshot():
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


def test_non_finite_log_joint_names_the_step_and_site_and_keeps_the_guide(scenario):
    y = scenario.y.clone()
    guide = AutoDiagonalNormal(scenario.model)
    blr = pb.BLR(scenario.model, guide, lr=0.1, rule="von")
    blr.fit(scenario.X, y, num_steps=2, progress=False)
    before = snapshot()
    y[3] = float("inf")  # inside the support for validation, but log p = -inf
    with pytest.raises(
        FloatingPointError, match=r"BLR step 3: the log joint is not finite at site\(s\) \['y'\]"
    ):
        blr.step(scenario.X, y)
    after = snapshot()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert blr.num_steps == 2


def test_non_finite_gradient_names_the_site():
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        pyro.factor("kink", -b.abs().sqrt() + 0 * a)

    at_zero = init_to_value(values={"a": torch.tensor(0.0), "b": torch.tensor(0.0)})
    guide = AutoNormal(model, init_loc_fn=at_zero)
    blr = pb.BLR(model, guide, lr=0.5, rule="newton")
    with pytest.raises(
        FloatingPointError, match=r"BLR step 1: the gradient is not finite at \['b'\]"
    ):
        blr.step()
    torch.testing.assert_close(guide.locs.b.detach(), torch.tensor(0.0))


def _collinear_regression(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(X @ w, 1e-3), obs=y)


@pytest.mark.parametrize("rule", ["newton", "von"])
def test_a_full_precision_beyond_float32_says_fit_in_float64(rule):
    # Two inputs equal to 1e-4: the posterior precision has eigenvalues about 1 (the prior,
    # along x1 - x2) and 2 * 50 / 1e-6 = 1e8: condition number 1e8, beyond float32's 1 / eps =
    # 8e6, so its Cholesky factorization fails in float32 and succeeds in float64.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 1, generator=generator, dtype=torch.float64)
    X = torch.cat([x, x + 1e-4 * torch.randn(50, 1, generator=generator, dtype=x.dtype)], -1)
    y = X.sum(-1)
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(_collinear_regression)
    blr = pb.BLR(_collinear_regression, guide, lr=1.0, rule=rule)
    guide(X.float(), y.float())  # its parameters, to compare after the failed step
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    assert before
    with pytest.raises(
        FloatingPointError, match=r"fit in float64 \(pass the data as float64"
    ) as error:
        blr.step(X.float(), y.float())
    # the float32 Hessian's own round-off makes the float64 update's condition number larger
    condition = float(re.search(r"condition number (\S+),", str(error.value)).group(1))
    assert condition > 1 / torch.finfo(torch.float32).eps
    for name, value in pyro.get_param_store().items():  # nothing half-written
        assert torch.equal(value.detach(), before[name]), name
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(_collinear_regression)
    blr = pb.BLR(_collinear_regression, guide, lr=1.0, rule=rule)
    blr.step(X, y)  # the same step in float64
    eigenvalues = torch.linalg.eigvalsh(guide.get_posterior().precision_matrix.detach())
    assert eigenvalues.min() > 0
    if rule == "newton":  # at lr 1 it lands on the posterior precision: condition number 9e7
        assert 5e7 < float(eigenvalues.max() / eigenvalues.min()) < 5e8
