"""``hessian_every``: the exact-Hessian rules reuse their last Hessian between fresh ones."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
import pyro_blr.core.autodiff as autodiff
from pyro_blr.blr.reused_hessian import ReusedHessian
from pyro_blr.blr.rules import rule_from_name
from tests.scenarios import LogisticRegression, linear_regression, logistic_regression


@pytest.fixture
def hessians(monkeypatch):
    """Counts the exact Hessians computed."""
    calls = []
    original = autodiff.hessian_from_grad

    def counted(grad, theta):
        calls.append(theta.shape[0])
        return original(grad, theta)

    monkeypatch.setattr(autodiff, "hessian_from_grad", counted)
    return calls


def _run(s, guide_class, rule, hessian_every, num_steps, seed=0, lr=0.3):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = guide_class(s.model)
    blr = pb.BLR(s.model, guide, rule_from_name(rule, lr=lr, hessian_every=hessian_every))
    losses = [blr.step(s.X, s.y) for _ in range(num_steps)]
    return guide, blr, losses


@pytest.mark.parametrize(
    "rule, guide_class",
    [("von", AutoMultivariateNormal), ("von", AutoDiagonalNormal), ("newton", AutoNormal)],
)
def test_constant_hessian_gives_the_same_run(rule, guide_class):
    # A linear-Gaussian model's Hessian is the same everywhere, so reusing it changes nothing:
    # the runs agree to the last bit (the particles are drawn alike either way). In float32
    # the reported loss of a Hessian step can differ in its last bit, as those steps evaluate
    # particles one model run each; these are float64.
    s = linear_regression()
    every, once = (_run(s, guide_class, rule, k, 20) for k in (1, 7))
    assert every[2] == once[2]
    for a, b in zip(every[0].parameters(), once[0].parameters(), strict=True):
        assert torch.equal(a, b)


def test_one_hessian_per_k_steps_while_it_fits(hessians):
    s = linear_regression()
    _run(s, AutoMultivariateNormal, "von", 4, 10)
    assert len(hessians) == 3  # steps 1, 5 and 9: a constant Hessian always fits


def test_a_guide_changed_outside_gets_a_fresh_hessian(hessians):
    s = linear_regression()
    guide, blr, _ = _run(s, AutoMultivariateNormal, "von", 100, 3)
    assert len(hessians) == 1
    with torch.no_grad():
        guide.loc.add_(0.1)
    blr.step(s.X, s.y)
    assert len(hessians) == 2


def test_newton_reaches_its_exact_fixed_point():
    # The delta method's fixed point is the MAP with the Hessian there as the precision, whatever
    # Hessians led to it: reusing a stale one slows the approach, it does not move the target.
    s = logistic_regression()
    guide, _, _ = _run(s, AutoMultivariateNormal, "newton", 5, 200, lr=0.5)
    w = guide.loc.detach().requires_grad_(True)
    log_joint = (
        -torch.nn.functional.binary_cross_entropy_with_logits(s.X @ w, s.y, reduction="sum")
        - 0.5 * w.square().sum() / s.prior_scale**2
    )
    (grad,) = torch.autograd.grad(log_joint, w, create_graph=True)
    hess = torch.stack([torch.autograd.grad(g, w, retain_graph=True)[0] for g in grad])
    torch.testing.assert_close(grad.detach(), torch.zeros(3, dtype=w.dtype), atol=1e-8, rtol=0)
    precision = torch.linalg.inv(guide.get_posterior().covariance_matrix.detach())
    torch.testing.assert_close(precision, -hess.detach(), rtol=1e-6, atol=1e-8)


def test_von_reaches_the_elbo_optimum():
    # The same tolerance as tests/blr/test_logistic.py (0.015 nats: 0.1 posterior sd of jitter
    # per coordinate on this 3-D problem), with a Hessian every tenth step.
    s = logistic_regression()
    best, _, _ = s.optimum(diagonal=False)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoMultivariateNormal(s.model)
    blr = pb.BLR(s.model, guide, pb.VON(lr=lambda t: 0.5 / (1 + t / 20), hessian_every=10))
    blr.fit(s.X, s.y, num_steps=300, progress=False)
    scale_tril = guide.scale[:, None] * guide.scale_tril
    gap = best - float(s.elbo(guide.loc.detach(), scale_tril.detach()))
    assert -1e-6 < gap < 0.015


def test_checkpoint_keeps_the_reused_hessian():
    s = linear_regression(subsample_size=10)

    def make():
        pyro.clear_param_store()
        guide = AutoMultivariateNormal(s.model)
        guide(s.X, s.y)
        return pb.BLR(s.model, guide, pb.VON(lr=lambda t: 0.3 / (1 + t), hessian_every=3))

    pyro.set_rng_seed(0)
    blr = make()
    blr.fit(s.X, s.y, num_steps=4, progress=False)
    checkpoint = blr.state_dict()
    assert int(checkpoint["state"]["hessian_age"]) == 1  # Hessians at steps 1 and 4
    rng = torch.get_rng_state()
    expected = blr.fit(s.X, s.y, num_steps=5, progress=False).losses

    resumed = make()
    resumed.load_state_dict(checkpoint)
    torch.set_rng_state(rng)
    assert resumed.fit(s.X, s.y, num_steps=5, progress=False).losses == expected


def test_checkpoint_entries_are_checked():
    s = linear_regression()
    blr = _run(s, AutoMultivariateNormal, "von", 3, 2)[1]
    state = blr.state_dict()
    incomplete = {**state, "state": {k: v for k, v in state["state"].items() if k != "hessian"}}
    with pytest.raises(ValueError, match="go together; got only"):
        blr.load_state_dict(incomplete)
    state["state"]["hessian"] = torch.ones(2, 2, dtype=s.X.dtype)
    with pytest.raises(ValueError, match="'hessian' has shape"):
        blr.load_state_dict(state)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_hessian_every_must_be_a_positive_integer(value):
    s = linear_regression()
    with pytest.raises(ValueError, match="hessian_every must be a positive integer"):
        pb.BLR(s.model, AutoNormal(s.model), pb.VON(hessian_every=value))


@pytest.mark.parametrize("rule", ["ivon", "vogn", "ogn"])
def test_rules_without_exact_hessians_do_not_have_it(rule):
    with pytest.raises(TypeError, match="unexpected keyword argument 'hessian_every'"):
        rule_from_name(rule, hessian_every=2)


def test_local_latents_refuse_it():
    def model(y):
        mu = pyro.sample("mu", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", len(y), subsample_size=2) as idx:
            z = pyro.sample("z", pyro.distributions.Normal(mu, 1.0))
            pyro.sample("y", pyro.distributions.Normal(z, 1.0), obs=y[idx])

    y = torch.arange(6.0)
    blr = pb.BLR(model, AutoNormal(model), pb.VON(hessian_every=2))
    with pytest.raises(ValueError, match=r"subsampled plate\(s\) \['data'\].*hessian_every=1"):
        blr.step(y)


def test_a_step_showing_other_curvature_makes_the_next_hessian_fresh():
    zeros, unit = torch.zeros(2), torch.ones(2)
    reused = ReusedHessian(every=100)
    reused.use(zeros, zeros, unit, unit)  # curvature 1 assumed, posterior sd 1
    # A step of 3 sds (3^2 > D = 2) whose gradient changed by 15: curvature 5 along it.
    reused.use(torch.tensor([3.0, 0.0]), torch.tensor([15.0, 0.0]), None, unit)
    assert reused.due()
    reused.use(torch.tensor([3.0, 0.0]), torch.tensor([15.0, 0.0]), 5 * unit, unit)
    # Curvature 1.5 along the next step is within a factor of two of what is assumed, ...
    reused.use(torch.tensor([3.0, 3.0]), torch.tensor([15.0, 22.5]), None, unit)
    assert not reused.due()
    # ... and a step inside the particles' cloud (0.1^2 < 2) is not judged at all.
    reused.use(torch.tensor([3.0, 3.1]), torch.tensor([15.0, 100.0]), None, unit)
    assert not reused.due()


@pytest.mark.slow  # two fits of 101 steps at D = 300
def test_a_hessian_reused_from_a_poor_start_is_dropped():
    # Full-covariance von on logistic regression from AutoMultivariateNormal's start (a prior
    # median, far out): with a Hessian every 50 steps and no check of the steps in between the
    # fit ended 3.4 nats below the exact-Hessian fit (66 nats at D = 500); with the check, 0.3.
    # The ELBOs are exact (Gauss-Hermite), so 1 nat is the fits' own Monte Carlo jitter, which
    # the Polyak average keeps to a few tenths here.
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(3000, 300, generator=gen, dtype=torch.float64)
    w = torch.randn(300, generator=gen, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(X @ (2 * w / w.norm())), generator=gen)
    s = LogisticRegression(X, y, prior_scale=1.0)

    def model(X, y):  # X @ w, as users write it (its Hessian reads X once per product)
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)

    elbos = {}
    for every in (1, 50):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoMultivariateNormal(model)
        blr = pb.BLR(model, guide, pb.VON(lr=0.2, hessian_every=every))
        blr.fit(X, y, num_steps=101, progress=False)
        scale_tril = guide.scale[:, None] * guide.scale_tril
        elbos[every] = float(s.elbo(guide.loc.detach(), scale_tril.detach()))
    assert abs(elbos[50] - elbos[1]) < 1.0


def _poisson_regression():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    y = torch.poisson(torch.exp(X @ torch.tensor([1.0, -0.5], dtype=X.dtype)), generator=gen)

    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(2), 10.0).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Poisson(rate=(X @ w).exp()), obs=y)

    return model, X, y


def test_a_step_back_drops_the_reused_hessian():
    # Newton at lr 1 from a poor start overshoots (rates of e^100): the step is retaken, and
    # the Hessian computed at the rejected point (of order 1e83) must not be reused after it.
    model, X, y = _poisson_regression()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoMultivariateNormal(model, init_loc_fn=lambda site: X.new_tensor([-0.5, 0.0]))
    blr = pb.BLR(model, guide, pb.Newton(lr=1.0, hessian_every=3))
    stepped_back = False
    with pytest.warns(RuntimeWarning, match="returned to the state before it"):
        for _ in range(8):
            blr.step(X, y)
            if blr.stepped_back:
                stepped_back = True
                assert blr._stepper._reused.due()  # the next step computes a fresh one
    assert stepped_back


def test_a_checkpoint_taken_after_a_guide_edit_resumes_alike():
    model, X, y = _poisson_regression()

    def make():
        pyro.clear_param_store()
        guide = AutoMultivariateNormal(model, init_loc_fn=lambda site: X.new_zeros(2))
        guide(X, y)
        return guide, pb.BLR(model, guide, pb.VON(lr=lambda t: 0.3 / (1 + t), hessian_every=100))

    pyro.set_rng_seed(0)
    guide, blr = make()
    for _ in range(3):
        blr.step(X, y)
    with torch.no_grad():
        guide.loc.add_(0.2)  # an edit the next step must answer with a fresh Hessian
    checkpoint, rng = blr.state_dict(), torch.get_rng_state()
    assert "hessian" not in checkpoint["state"]
    expected = [blr.step(X, y) for _ in range(4)]
    _, resumed = make()
    resumed.load_state_dict(checkpoint, X, y)
    torch.set_rng_state(rng)
    assert [resumed.step(X, y) for _ in range(4)] == expected


@pytest.mark.parametrize(
    "entry, value, message",
    [
        ("hessian_age", torch.tensor(float("nan")), "'hessian_age' must be an integer >= 0"),
        ("hessian_age", torch.tensor([1, 2]), "'hessian_age' must be an integer >= 0"),
        ("hessian_age", torch.tensor(-5), "'hessian_age' must be an integer >= 0"),
        ("hessian_stale", torch.tensor([True, False]), "'hessian_stale' must be 0 or 1"),
        ("hessian_stale", torch.tensor(float("nan")), "'hessian_stale' must be 0 or 1"),
    ],
)
def test_bad_reuse_entries_are_refused_before_anything_changes(entry, value, message):
    s = linear_regression()
    blr = _run(s, AutoMultivariateNormal, "von", 3, 4)[1]
    state = blr.state_dict()
    state["state"][entry] = value
    guide, fresh, _ = _run(s, AutoMultivariateNormal, "von", 3, 1)
    before = [p.detach().clone() for p in guide.parameters()]
    with pytest.raises(ValueError, match=message):
        fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(before, guide.parameters(), strict=True))


def test_a_driver_with_a_hessian_every_step_loads_a_reusing_checkpoint():
    s = linear_regression()
    state = _run(s, AutoMultivariateNormal, "von", 3, 4)[1].state_dict()
    exact = _run(s, AutoMultivariateNormal, "von", 1, 1)[1]
    exact.load_state_dict(state)  # the reuse entries describe nothing this driver does
    assert "hessian" not in exact.state_dict()["state"]


def test_numpy_and_tensor_integers_are_taken():
    import numpy as np

    s = linear_regression()
    for value in (np.int64(3), torch.tensor(3)):
        blr = pb.BLR(s.model, AutoNormal(s.model), pb.VON(hessian_every=value))
        blr.step(s.X, s.y)
