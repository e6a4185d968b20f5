"""Adversarial findings against the BLR driver: each reproducer gives the right answer or an
error that names the site or argument."""

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from tests.scenarios import linear_regression


def test_a_column_observation_against_a_plate_is_refused():
    # y of shape (N, 1) in a plate of size N broadcasts to N x N; Pyro's shape check names it.
    s = linear_regression()
    guide = AutoNormal(s.model)
    with pytest.raises(ValueError, match='at site "y", invalid log_prob shape'):
        pb.BLR(s.model, guide, rule="von").step(s.X, s.y[:, None])


def test_an_enumerated_site_hidden_from_the_guide_is_refused():
    def model(y):
        loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
        z = pyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(loc * (2 * z - 1), 1.0), obs=y)

    guide = AutoNormal(pyro.poutine.block(model, hide=["z"]))
    with pytest.raises(ValueError, match=r"latent site 'z'.*enumerate"):
        pb.BLR(model, guide, rule="von").step(torch.tensor(2.0))


def test_a_latent_that_appears_after_set_up_is_refused():
    calls = []

    def model(y):
        calls.append(1)
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        if len(calls) > 2:
            mu = mu + pyro.sample("extra", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, rule="von", vectorize_particles=False)
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
    with pytest.raises(ValueError, match=f"{name}=.* does not apply to rule '{rule}'"):
        pb.BLR(s.model, AutoNormal(s.model), rule=rule, **option)


@pytest.mark.parametrize("bad", [True, float("inf"), float("nan"), "0.1"])
def test_bad_learning_rates_are_refused(bad):
    s = linear_regression()
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        pb.BLR(s.model, AutoNormal(s.model), lr=bad)


def test_numpy_and_tensor_learning_rates_are_accepted():
    import numpy as np

    s = linear_regression()
    for lr in (np.float64(0.5), torch.tensor(0.5)):
        pb.BLR(s.model, AutoNormal(s.model), lr=lr, rule="von").step(s.X, s.y)


def test_negative_num_steps_is_refused():
    s = linear_regression()
    with pytest.raises(ValueError, match="num_steps must be a non-negative integer"):
        pb.BLR(s.model, AutoNormal(s.model)).fit(s.X, s.y, num_steps=-5)


def test_a_diverging_fit_warns():
    # Newton at lr 5 overshoots and climbs on a logistic-like loss; the driver must say so.
    s = linear_regression()
    blr = pb.BLR(s.model, AutoDiagonalNormal(s.model), lr=5.0, rule="newton")
    with pytest.warns(RuntimeWarning, match="diverging"):
        blr.fit(s.X, s.y, num_steps=30, progress=False)


def test_changes_behind_the_drivers_back_are_read_from_the_guide():
    # 300 SVI steps move the guide; the next BLR step must start from there, not from the
    # driver's last write. With lr -> 0 one von step leaves the mean where SVI put it.
    s = linear_regression()
    guide = AutoMultivariateNormal(s.model)
    blr = pb.BLR(s.model, guide, lr=1.0, rule="newton")
    blr.step(s.X, s.y)
    svi = SVI(s.model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(50):
        svi.step(s.X, s.y)
    moved = guide.loc.detach().clone()
    blr.lr = 1e-12
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
        return guide, pb.BLR(s.model, guide, lr=0.2, rule=rule)

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
    blr = pb.BLR(s.model, guide, lr=0.2, rule="ivon")
    blr.fit(s.X, s.y, num_steps=2, progress=False)
    checkpoint = blr.state_dict()
    corrupt(checkpoint)
    before = {k: v.detach().clone() for k, v in guide.named_parameters()}
    with pytest.raises(ValueError, match=message):
        blr.load_state_dict(checkpoint, s.X, s.y)
    assert blr.num_steps == 2
    for name, value in guide.named_parameters():
        assert torch.equal(value.detach(), before[name]), name
