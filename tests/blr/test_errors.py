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
    match = r"cannot drive AutoMultivariateNormal with IVON: this guide takes VON or VOGN or OGN"
    with pytest.raises(TypeError, match=match):
        pb.BLR(scenario.model, AutoMultivariateNormal(scenario.model), pb.IVON())


def test_an_unknown_rule_name_is_refused(scenario):
    with pytest.raises(ValueError, match="unknown rule 'lbfgs'; choose one of"):
        pb.BLR(scenario.model, AutoNormal(scenario.model), "lbfgs")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lr": 0.0}, "lr must be a positive finite number, got 0.0"),
        ({"lr": -1}, "lr must be a positive finite number, got -1"),
        ({"beta1": 1.0}, r"beta1 must lie in \[0, 1\), got 1.0"),
        ({"beta2": -0.1}, r"beta2 must lie in \[0, 1\), got -0.1"),
        ({"mc_samples": 3}, "mc_samples must be even, got 3"),
        ({"mc_samples": 0}, "mc_samples must be a positive integer, got 0"),
        ({"clip_radius": 0.0}, "clip_radius must be positive"),
        ({"weight_decay": -1.0}, "weight_decay must be non-negative and finite"),
    ],
)
def test_bad_hyperparameters(scenario, options, message):
    with pytest.raises(ValueError, match=message):
        pb.BLR(scenario.model, AutoNormal(scenario.model), pb.IVON(**options))


def test_a_schedule_returning_a_bad_lr_is_caught_at_that_step(scenario):
    blr = pb.BLR(scenario.model, AutoNormal(scenario.model), pb.IVON(lr=lambda t: 0.1 - 0.1 * t))
    blr.step(scenario.X, scenario.y)
    with pytest.raises(ValueError, match=r"lr must be a positive finite number, got 0\.0"):
        blr.step(scenario.X, scenario.y)


def snapshot():
    return {name: value.detach().clone() for name, value in pyro.get_param_store().items()}


def test_non_finite_log_joint_names_the_step_and_site_and_keeps_the_guide(scenario):
    y = scenario.y.clone()
    guide = AutoDiagonalNormal(scenario.model)
    blr = pb.BLR(scenario.model, guide, pb.VON(lr=0.1))
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
    blr = pb.BLR(model, guide, pb.Newton(lr=0.5))
    with pytest.raises(
        FloatingPointError, match=r"BLR step 1: the gradient is not finite at \['b'\]"
    ):
        blr.step()
    torch.testing.assert_close(guide.locs.b.detach(), torch.tensor(0.0))


def _badly_scaled(y):
    w = pyro.sample("w", dist.Normal(y.new_zeros(2), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(w, y.new_tensor([1.0, 3e-4])).to_event(1), obs=y)


@pytest.mark.parametrize("float64_fails_too", [False, True])
def test_a_full_precision_float32_cannot_factorize_says_refit_in_float64(float64_fails_too):
    # Newton at lr 1 lands on the posterior precision diag(2, 1 + 1 / 3e-4^2): condition number
    # 5.6e6, beyond what float32 factorizes reliably. The rule is made to fail in float32 (a
    # Cholesky factorization's rounding depends on the BLAS; the decision after it does not).
    y = torch.tensor([0.5, 0.1])
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(_badly_scaled)

    class FailingNewton(pb.Newton):
        def update(self, state, estimates, lr):
            if state.precision.dtype == torch.float32 or float64_fails_too:
                raise torch.linalg.LinAlgError("linalg.cholesky: not positive-definite")
            return super().update(state, estimates, lr)

    blr = pb.BLR(_badly_scaled, guide, FailingNewton(lr=1.0))
    guide(y)
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    message = "the fit diverged; lower lr" if float64_fails_too else "refit in float64, a new"
    with pytest.raises(FloatingPointError, match=message) as error:
        blr.step(y)
    if not float64_fails_too:
        condition = float(re.search(r"condition number (\S+),", str(error.value)).group(1))
        assert condition == pytest.approx((1 + 3e-4**-2) / 2, rel=0.01)  # printed to 2 digits
    assert before and all(
        torch.equal(value.detach(), before[name]) for name, value in pyro.get_param_store().items()
    )


def test_condition_in_float64_only_blames_the_dtype_beyond_its_reach():
    from pyro_blr.blr.rules import GaussianState, newton_update
    from pyro_blr.blr.steppers.gaussian_diagnosis import condition_in_float64

    def newton(state, grad, hess, lr, step):  # at lr 1 the new precision is the Hessian given
        return newton_update(state, grad, hess, lr)

    def condition(hess, precision=None):
        precision = torch.eye(2, dtype=hess.dtype) if precision is None else precision
        state = GaussianState(torch.zeros(len(hess), dtype=hess.dtype), precision)
        return condition_in_float64(newton, state, torch.zeros(len(hess)), hess, 1.0, 1, {})

    # exact in float32: eigenvalues 2^25 - 2 and 2
    hess = torch.tensor([[2.0**24, 2.0**24 - 2], [2.0**24 - 2, 2.0**24]])
    assert condition(hess) == pytest.approx(2.0**24 - 1)
    assert condition(torch.diag(torch.tensor([1.0, 1e3]))) is None  # float32 can: the fit's fault
    assert condition(torch.tensor([[1.0, 2.0], [2.0, 1.0]])) is None  # indefinite in float64 too
    assert condition(hess.double()) is None  # already float64
    assert condition(torch.tensor([1.0, 1e8]), torch.ones(2)) is None  # diagonal: no factorization
