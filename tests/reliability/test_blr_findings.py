"""Adversarial findings against the BLR driver: each reproducer gives the right answer or an
error that names the site or argument."""

import io
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.rules import rule_from_name
from tests.scenarios import linear_regression


def test_a_column_observation_against_a_plate_is_refused():
    # y of shape (N, 1) in a plate of size N broadcasts to N x N; Pyro's shape check names it.
    s = linear_regression()
    guide = AutoNormal(s.model)
    with pytest.raises(ValueError, match='at site "y", invalid log_prob shape'):
        pb.BLR(s.model, guide, pb.VON()).step(s.X, s.y[:, None])


def test_an_enumerated_site_hidden_from_the_guide_is_summed_out():
    # (exactness against the hand-summed model: tests/blr/test_enumerated_sites.py)
    def model(y):
        loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
        z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(loc * (2 * z - 1), 1.0), obs=y)

    guide = AutoNormal(pyro.poutine.block(model, hide=["z"]))
    loss = pb.BLR(model, guide, pb.VON()).step(torch.tensor(2.0))
    assert math.isfinite(loss)


def test_a_latent_that_appears_after_set_up_is_refused():
    calls = []

    def model(y):
        calls.append(1)
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        if len(calls) > 2:
            mu = mu + pyro.sample("extra", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, pb.VON(), vectorize_particles=False)
    with pytest.raises(ValueError, match=r"latent site 'extra'.*not in the guide"):
        for _ in range(5):
            blr.step(torch.tensor(1.0))


@pytest.mark.parametrize(
    "rule, option",
    [("von", {"clip_radius": 1.0}), ("von", {"beta1": 0.5}), ("newton", {"mc_samples": 4})],
)
def test_an_option_the_rule_does_not_use_is_refused(rule, option):
    s = linear_regression()
    name = next(iter(option))
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        rule_from_name(rule, **option)
    with pytest.raises(TypeError, match=f"BLR got {name}, which are options of the rule"):
        pb.BLR(s.model, AutoNormal(s.model), rule_from_name(rule), **option)


@pytest.mark.parametrize("bad", [True, float("inf"), float("nan"), "0.1"])
def test_bad_learning_rates_are_refused(bad):
    s = linear_regression()
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        pb.BLR(s.model, AutoNormal(s.model), pb.IVON(lr=bad))


def test_numpy_and_tensor_learning_rates_are_accepted():
    import numpy as np

    s = linear_regression()
    for lr in (np.float64(0.5), torch.tensor(0.5)):
        pb.BLR(s.model, AutoNormal(s.model), pb.VON(lr=lr)).step(s.X, s.y)


def test_negative_num_steps_is_refused():
    s = linear_regression()
    with pytest.raises(ValueError, match="num_steps must be a non-negative integer"):
        pb.BLR(s.model, AutoNormal(s.model)).fit(s.X, s.y, num_steps=-5)


def test_a_diverging_fit_warns_and_raises():
    # Newton at lr 5 overshoots and climbs on a logistic-like loss; the driver must say so as
    # it happens, and a fit that ends there must not return the diverged guide as an answer.
    s = linear_regression()
    blr = pb.BLR(s.model, AutoDiagonalNormal(s.model), pb.Newton(lr=5.0))
    with pytest.warns(RuntimeWarning, match="diverging"):
        with pytest.raises(FloatingPointError, match=r"BLR\.fit: the loss ended at .* diverged"):
            blr.fit(s.X, s.y, num_steps=30, progress=False)


def test_changes_behind_the_drivers_back_are_read_from_the_guide():
    # 300 SVI steps move the guide; the next BLR step must start from there, not from the
    # driver's last write. With lr -> 0 one von step leaves the mean where SVI put it.
    s = linear_regression()
    guide = AutoMultivariateNormal(s.model)
    blr = pb.BLR(s.model, guide, pb.Newton(lr=1.0))
    blr.step(s.X, s.y)
    svi = SVI(s.model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(50):
        svi.step(s.X, s.y)
    moved = guide.loc.detach().clone()
    blr.rule.lr = 1e-12
    blr.step(s.X, s.y)
    torch.testing.assert_close(guide.loc.detach(), moved, rtol=1e-8, atol=1e-8)


def _round_trip(checkpoint):
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("call_guide_first", [False, True])
@pytest.mark.parametrize(
    "rule, make_guide",
    [
        ("ivon", AutoNormal),
        ("von", AutoMultivariateNormal),
        ("expfamily", pb.AutoExpFamily),
        ("mixture", lambda m: pb.AutoMixture(m, num_components=2)),
    ],
    ids=["ivon", "von", "expfamily", "mixture"],
)
def test_checkpoints_resume_bit_for_bit_through_torch_save(rule, make_guide, call_guide_first):
    s = linear_regression()
    data = (s.X, s.y)

    def make():
        pyro.clear_param_store()
        guide = make_guide(s.model)
        return guide, pb.BLR(s.model, guide, rule_from_name(rule, lr=0.2))

    pyro.set_rng_seed(0)
    _, blr = make()
    blr.fit(*data, num_steps=3, progress=False)
    checkpoint = _round_trip(blr.state_dict())
    rng = torch.get_rng_state()
    expected = blr.fit(*data, num_steps=3, progress=False).losses

    guide, resumed = make()
    if call_guide_first:
        guide(*data)
    resumed.load_state_dict(checkpoint)
    torch.set_rng_state(rng)
    assert resumed.fit(*data, num_steps=3, progress=False).losses == expected
    assert resumed.num_steps == 6


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda c: c["state"].pop("precision"), "needs entries"),
        (lambda c: c["state"].__setitem__("precision", -c["state"]["precision"]), "positive"),
        (lambda c: c["state"].__setitem__("loc", torch.zeros(7, dtype=torch.float64)), "shape"),
        (lambda c: c.pop("num_steps"), "keys"),
    ],
    ids=["missing", "negative", "shape", "no-counter"],
)
def test_a_bad_checkpoint_is_rejected_before_anything_changes(corrupt, message):
    s = linear_regression()
    guide = AutoNormal(s.model)
    blr = pb.BLR(s.model, guide, pb.IVON(lr=0.2))
    blr.fit(s.X, s.y, num_steps=2, progress=False)
    checkpoint = blr.state_dict()
    corrupt(checkpoint)
    before = {k: v.detach().clone() for k, v in guide.named_parameters()}
    with pytest.raises(ValueError, match=message):
        blr.load_state_dict(checkpoint, s.X, s.y)
    assert blr.num_steps == 2
    for name, value in guide.named_parameters():
        assert torch.equal(value.detach(), before[name]), name


def test_half_precision_data_is_refused_by_name():
    s = linear_regression(dtype=torch.float16)
    with pytest.raises(TypeError, match=r"float16.*float32 or float64"):
        pb.BLR(s.model, AutoNormal(s.model), pb.VON()).step(s.X, s.y)


def test_a_max_plate_nesting_below_the_models_is_refused():
    s = linear_regression()
    blr = pb.BLR(s.model, AutoNormal(s.model), pb.VON(), max_plate_nesting=0)
    with pytest.raises(ValueError, match="max_plate_nesting=0 is less than the 1 plate"):
        blr.step(s.X, s.y)
    with pytest.raises(ValueError, match="max_plate_nesting must be a non-negative integer"):
        pb.BLR(s.model, AutoNormal(s.model), max_plate_nesting=-1)


def test_a_site_the_log_joint_ignores_is_named_at_the_first_step():
    # A latent whose every density term is masked out has zero gradient and curvature: von's
    # precision would decay until the update overflowed a hundred steps later.
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.poutine.mask(mask=False):
            pyro.sample("ghost", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    blr = pb.BLR(model, AutoNormal(model), pb.VON())
    with pytest.raises(ValueError, match=r"'ghost'.*improper"):
        blr.step(torch.tensor(1.0))


def test_an_interrupted_write_leaves_the_guide_as_it_was(monkeypatch):
    # A KeyboardInterrupt between two per-site writes must not leave some sites updated.
    import pyro_blr.core.gaussian_guide as gaussian_guide

    s = linear_regression()

    def model(X, y):
        a = pyro.sample("a", dist.Normal(X.new_zeros(()), 1.0))
        b = pyro.sample("b", dist.Normal(X.new_zeros(2), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(a * X[:, 0] + X[:, 1:] @ b, 0.5), obs=y)

    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, pb.VON(lr=0.5))
    blr.step(s.X, s.y)
    before = {k: v.detach().clone() for k, v in guide.named_parameters()}
    real, calls = gaussian_guide.write_param, []

    def interrupted(module, name, value):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(module, name, value)

    monkeypatch.setattr(gaussian_guide, "write_param", interrupted)
    with pytest.raises(KeyboardInterrupt):
        blr.step(s.X, s.y)
    for name, value in guide.named_parameters():
        assert torch.equal(value.detach(), before[name]), name
    assert blr.num_steps == 1


def test_diagonal_von_does_not_overflow_float32_on_large_gradients():
    # g^2 / s overflows float32 for |g| > 1.8e19 even when g * (g / s) is representable.
    from pyro_blr.blr.rules import riemannian_precision_update

    precision = torch.tensor([1e20])
    hess = torch.tensor([3e19])
    out = riemannian_precision_update(precision, hess, 0.5)
    assert torch.isfinite(out).all() and out.item() > 0


def test_latent_sites_of_mixed_dtypes_are_named():
    s = linear_regression()

    def model(X, y):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))  # float32 beside float64 data
        b = pyro.sample("b", dist.Normal(X.new_zeros(2), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(a * X[:, 0] + X[:, 1:] @ b, 0.5), obs=y)

    with pytest.raises(TypeError, match=r"mix dtypes.*'a': torch.float32"):
        pb.BLR(model, AutoNormal(model), pb.VON()).step(s.X, s.y)


def test_sgd_evidence_refuses_a_column_observation_against_a_plate():
    s = linear_regression()
    with pytest.raises(ValueError, match='at site "y", invalid log_prob shape'):
        pb.sgd_evidence(s.model, s.X, s.y[:, None], num_chains=2, num_steps=1)


def test_a_checkpoint_from_before_the_first_step_is_refused_by_a_driver_that_stepped():
    # It holds no guide or rule state: loading it reset the step count to 0 and kept the guide
    # and IVON's momentum of the later run, a state no run ever had.
    s = linear_regression()
    guide = AutoNormal(s.model)
    blr = pb.BLR(s.model, guide)
    early = blr.state_dict()
    for _ in range(3):
        blr.step(s.X, s.y)
    before = {k: v.detach().clone() for k, v in guide.named_parameters()}
    for args in [(s.X, s.y), ()]:
        with pytest.raises(ValueError, match="taken before the first step"):
            blr.load_state_dict(early, *args)
    assert blr.num_steps == 3
    for name, value in guide.named_parameters():
        torch.testing.assert_close(value.detach(), before[name], rtol=0, atol=0)
    fresh = pb.BLR(s.model, AutoNormal(s.model))
    fresh.load_state_dict(early)  # a driver that has not stepped takes it: nothing to restore
    assert fresh.num_steps == 0
