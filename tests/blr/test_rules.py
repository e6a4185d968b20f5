"""The pure update rules: exactness on quadratics and positive definiteness by construction."""

import pytest
import torch

from pyro_blr.blr.rules import (
    RULES,
    Estimates,
    GaussianState,
    IVONState,
    ivon_update,
    newton_update,
    riemannian_precision_update,
    von_update,
)


def quadratic(dim=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    hess = a @ a.T + torch.eye(dim, dtype=torch.float64)
    mode = torch.randn(dim, generator=gen, dtype=torch.float64)
    return hess, mode


def test_newton_with_unit_step_is_exact_on_a_quadratic():
    hess, mode = quadratic()
    state = GaussianState(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    grad = hess @ (state.loc - mode)
    new = newton_update(state, grad, hess, lr=1.0)
    torch.testing.assert_close(new.loc, mode, rtol=0, atol=1e-12)
    torch.testing.assert_close(new.precision, hess, rtol=0, atol=1e-12)


@pytest.mark.parametrize("diagonal", [True, False])
def test_riemannian_update_stays_positive_definite_for_indefinite_hessians(diagonal):
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
        precision = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64)
        hess = 10 * torch.randn(5, 5, generator=gen, dtype=torch.float64)
        hess = hess + hess.T  # strongly indefinite
        if diagonal:
            precision, hess = precision.diagonal(), hess.diagonal()
        for lr in (0.1, 0.5, 1.0):
            new = riemannian_precision_update(precision, hess, lr)
            if diagonal:
                assert (new > 0).all()
            else:
                assert torch.linalg.eigvalsh(new).min() > 0


def test_newton_falls_back_to_the_riemannian_update_when_leaving_the_cone():
    state = GaussianState(torch.zeros(1), torch.ones(1))
    new = newton_update(state, torch.zeros(1), torch.tensor([-3.0]), lr=0.5)
    assert torch.equal(new.precision, riemannian_precision_update(state.precision, -3.0, 0.5))


@pytest.mark.parametrize("diagonal", [True, False])
def test_von_with_exact_expectations_converges_to_the_gaussian_target(diagonal):
    # On a Gaussian target N(mode, hess^-1) the expectations are exact; the fixed point of the
    # full rule is the target, that of the diagonal rule the mean-field optimum.
    hess, mode = quadratic()
    target_precision = hess.diagonal() if diagonal else hess
    precision = torch.ones(4, dtype=torch.float64)
    state = GaussianState(
        torch.zeros(4, dtype=torch.float64), precision if diagonal else precision.diag()
    )
    for _ in range(2000):
        grad = hess @ (state.loc - mode)
        state = von_update(state, grad, target_precision, lr=0.3)
    torch.testing.assert_close(state.loc, mode, rtol=0, atol=1e-10)
    torch.testing.assert_close(state.precision, target_precision, rtol=1e-10, atol=0)


def test_ivon_keeps_positivity_and_matches_its_closed_form():
    gen = torch.Generator().manual_seed(0)
    state = IVONState(torch.zeros(3), torch.rand(3, generator=gen) + 0.1, torch.zeros(3))
    for step in range(1, 200):
        hess = 100 * torch.randn(3, generator=gen)  # wildly indefinite estimates
        grad = torch.randn(3, generator=gen)
        new = ivon_update(state, grad, hess, lr=0.1, step=step, beta1=0.9, beta2=0.8)
        a = 0.2 * (hess - state.precision) / state.precision
        torch.testing.assert_close(new.precision, state.precision * ((1 + a) ** 2 + 1) / 2)
        assert (new.precision > 0).all()
        momentum = 0.9 * state.momentum + 0.1 * grad
        torch.testing.assert_close(
            new.loc, state.loc - 0.1 * momentum / (1 - 0.9**step) / new.precision
        )
        state = new


def test_ivon_clip_radius_bounds_the_mean_update():
    state = IVONState(torch.zeros(2), torch.full((2,), 1e-3), torch.zeros(2))
    new = ivon_update(
        state, torch.tensor([5.0, -5.0]), torch.full((2,), 1e-3), 1.0, 1, clip_radius=0.5
    )
    torch.testing.assert_close(new.loc, torch.tensor([-0.5, 0.5]))


def test_rule_init_builds_each_state():
    loc, precision = torch.zeros(2), torch.ones(2)
    state = RULES["ivon"]().init(GaussianState(loc, precision))
    assert isinstance(state, IVONState) and torch.equal(state.momentum, torch.zeros(2))
    assert isinstance(RULES["von"]().init(GaussianState(loc, precision)), GaussianState)


@pytest.mark.parametrize("name", ["ivon", "von", "vogn", "ogn", "newton"])
def test_each_gaussian_rule_updates_a_constructed_state_purely(name):
    # update(state, estimates, lr) on a state built by hand: the inputs are left unchanged and
    # a quadratic's exact gradient and Hessian give the rule's own closed-form step
    rule = RULES[name]()
    state = rule.init(GaussianState(torch.zeros(1), torch.ones(1)))
    before = [t.clone() for t in state]
    grad, hess = torch.tensor([-2.0]), torch.tensor([2.0])
    new, info = rule.update(state, Estimates(grad, hess, step=1), lr=1.0)
    assert all(torch.equal(a, b) for a, b in zip(state, before, strict=True))
    assert info.halvings == 0
    if name in ("newton", "ogn"):  # (1 - 1) * 1 + 2 = 2; 0 + 2 / 2 = 1
        assert torch.allclose(new.precision, torch.tensor([2.0]))
        assert torch.allclose(new.loc, torch.tensor([1.0]))
    elif name == "ivon":  # h: 0.999 * 1 + 0.001 * 2 + 0.5 * 1e-6 * 1; clipped to 0.1 a step
        assert torch.allclose(new.precision, torch.tensor([1.0010005]))
        assert torch.allclose(new.loc, torch.tensor([0.1]))
    else:  # Riemannian: 1 + 1 + 0.5 * 1 = 2.5; 0 + 2 / 2.5
        assert torch.allclose(new.precision, torch.tensor([2.5]))
        assert torch.allclose(new.loc, torch.tensor([0.8]))


def test_options_other_than_lr_are_fixed_once_the_rule_is_built():
    # the driver reads them when it is built: a later change would be silently ignored
    import pyro_blr as pb

    rule = pb.VON(lr=0.5, mc_samples=4)
    with pytest.raises(AttributeError, match=r"VON.mc_samples is fixed when the rule is built"):
        rule.mc_samples = 7
    rule.lr = 0.25  # read at every step
    assert rule.lr == 0.25
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        rule.lr = -1.0


def test_an_optimizer_scheduler_is_refused_as_lr():
    import pyro.optim

    import pyro_blr as pb

    scheduler = pyro.optim.ExponentialLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1},
                                          "gamma": 0.9})  # fmt: skip
    with pytest.raises(TypeError, match=r"write the schedule as a function"):
        pb.VON(lr=scheduler)


# ---------------------------------------------------------------- the optimizers as BLR limits
def torch_steps(make, grads_of, start, steps):
    """``steps`` steps of the torch optimizer ``make`` on the gradient field ``grads_of``."""
    param = start.clone().requires_grad_()
    optimizer = make([param])
    path = []
    for _ in range(steps):
        param.grad = grads_of(param.detach())
        optimizer.step()
        path.append(param.detach().clone())
    return path


def quadratic_gradient():
    hess, mode = quadratic()
    return lambda theta: hess @ (theta - mode)


OPTIMIZER_LIMITS = {
    "sgd": (
        lambda: RULES["sgd"](lr=0.02, momentum=0.9, dampening=0.2),
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, dampening=0.2),
    ),
    "sgd-nesterov": (
        lambda: RULES["sgd"](lr=0.02, momentum=0.7, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.7, nesterov=True),
    ),
    "rmsprop": (
        lambda: RULES["rmsprop"](lr=0.05, alpha=0.9, eps=1e-3, momentum=0.6),
        lambda p: torch.optim.RMSprop(p, lr=0.05, alpha=0.9, eps=1e-3, momentum=0.6),
    ),
    "adam": (
        lambda: RULES["adam"](lr=0.05, beta1=0.8, beta2=0.95, eps=1e-3),
        lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.95), eps=1e-3),
    ),
}


@pytest.mark.parametrize("name", list(OPTIMIZER_LIMITS))
def test_the_optimizer_rules_at_the_mean_are_torch_optims_updates(name):
    # the pure update fed the gradient at the mean (and its square, the "squared_gradient"
    # curvature at one particle) against torch.optim on the same gradient field, 50 steps in
    # float64: equal to round-off (1e-12, a few ulps of the order-one iterates times 50 steps)
    make_rule, make_optimizer = OPTIMIZER_LIMITS[name]
    rule, grad_of = make_rule(), quadratic_gradient()
    start = torch.linspace(-1.0, 1.0, 4, dtype=torch.float64)
    precision = torch.full((4,), 7.0, dtype=torch.float64)
    state = rule.init(GaussianState(start, precision))
    expected = torch_steps(make_optimizer, grad_of, start, 50)
    for step, want in enumerate(expected, 1):
        grad = grad_of(state.loc)
        state, _ = rule.update(state, Estimates(grad, grad * grad, step=step), rule.lr)
        torch.testing.assert_close(state.loc, want, rtol=1e-12, atol=1e-12)
        assert torch.equal(state.precision, precision)  # the fixed covariance: never moved
    assert (expected[-1] - start).abs().max() > 0.1


def test_vadam_precision_is_the_squared_gradients_over_n_plus_the_prior():
    # with ess the perturbed rules write N(s + delta/N) = v_hat / N + delta (Khan et al. 2018)
    from pyro_blr.blr.rules import AdamState, RMSpropState, adam_update, rmsprop_update

    zeros, ones = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    grad = torch.tensor([3.0, -1.0], dtype=torch.float64)
    squared = torch.tensor([10.0, 4.0], dtype=torch.float64)  # E[g^2] >= E[g]^2 at draws
    delta = torch.tensor([0.25, 2.0], dtype=torch.float64)
    state = AdamState(zeros, ones, zeros, zeros)
    new = adam_update(state, grad, squared, 0.1, 1, 0.9, 0.99, 1e-8, ess=8.0, prior_precision=delta)
    torch.testing.assert_close(new.precision, squared / 8.0 + delta)  # v_hat = E[g^2] at step 1
    new = adam_update(new, grad, squared, 0.1, 2, 0.9, 0.99, 1e-8, ess=8.0, prior_precision=delta)
    torch.testing.assert_close(new.precision, squared / 8.0 + delta)  # a constant stays put
    state = RMSpropState(zeros, ones, zeros, zeros)
    new = rmsprop_update(state, grad, squared, 0.1, 1, 0.5, ess=8.0, prior_precision=delta)
    torch.testing.assert_close(new.precision, squared / 8.0 + delta)  # bias-corrected
    # without ess the precision is the guide's, bit for bit
    assert (
        adam_update(AdamState(zeros, ones, zeros, zeros), grad, squared, 0.1, 1).precision is ones
    )


def test_the_optimizer_rules_refuse_options_that_would_be_ignored():
    with pytest.raises(ValueError, match=r"Adam\(mc_samples=4\) applies only to the perturbed"):
        RULES["adam"](mc_samples=4)
    with pytest.raises(ValueError, match=r"RMSprop\(ess=100\) applies only.*perturb=True"):
        RULES["rmsprop"](ess=100)
    with pytest.raises(ValueError, match=r"nesterov=True\) needs momentum > 0 and dampening = 0"):
        RULES["sgd"](nesterov=True)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\), got 1.5"):
        RULES["sgd"](momentum=1.5)
    assert RULES["adam"](perturb=True, mc_samples=4).at_mean is False
    assert RULES["adam"]().at_mean is True and RULES["sgd"]().at_mean is True
