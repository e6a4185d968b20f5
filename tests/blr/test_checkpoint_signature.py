"""Checkpoints carry the model's signature (site names and shapes, rule, dtype) and refuse a
mismatch before anything changes; local latents under subsampling resume bit for bit."""

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.rules import rule_from_name
from pyro_blr.blr.steppers import stepper_for
from pyro_blr.blr.steppers.base import step_options

D = torch.float64
N = 12


def data(dtype=D):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, 3, generator=gen, dtype=dtype)
    return X, X @ torch.tensor([1.0, -1.0, 0.5], dtype=dtype) + torch.randn(N, generator=gen)


def one_site(X, y):  # w: 3 coordinates
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
    with pyro.plate("data", N):
        pyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def two_sites(X, y):  # the same D = 3, other sites
    a = pyro.sample("a", dist.Normal(X.new_zeros(()), 1.0))
    b = pyro.sample("b", dist.Normal(X.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", N):
        pyro.sample("y", dist.Normal(a * X[:, 0] + X[:, 1:] @ b, 1.0), obs=y)


def swapped(X, y):  # the same sites, in the other order
    b = pyro.sample("b", dist.Normal(X.new_zeros(2), 1.0).to_event(1))
    a = pyro.sample("a", dist.Normal(X.new_zeros(()), 1.0))
    with pyro.plate("data", N):
        pyro.sample("y", dist.Normal(a * X[:, 0] + X[:, 1:] @ b, 1.0), obs=y)


def reshaped(X, y):  # the same name, D = 3 as a (3, 1) matrix
    w = pyro.sample("w", dist.Normal(X.new_zeros(3, 1), 1.0).to_event(2))
    with pyro.plate("data", N):
        pyro.sample("y", dist.Normal((X @ w).squeeze(-1), 1.0), obs=y)


def params(guide):
    return {name: p.detach().clone() for name, p in guide.named_parameters()}


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def fitted(model, guide_class, rule, dtype=D):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = guide_class(model)
    blr = pb.BLR(model, guide, rule_from_name(rule, lr=0.5))
    blr.step(*data(dtype))
    return guide, blr


@pytest.mark.parametrize(
    "guide_class, rule",
    [(AutoNormal, "ivon"), (AutoDiagonalNormal, "von"), (AutoMultivariateNormal, "newton")],
)
@pytest.mark.parametrize(
    "other, match",
    [
        (two_sites, r"sites \['w'\] are in the checkpoint, not in this model; sites \['a', 'b'\]"),
        (reshaped, r"site 'w' has shape \(3,\) there, \(3, 1\) here"),
    ],
    ids=["other-sites", "other-shape"],
)
def test_a_checkpoint_of_another_model_with_the_same_dimension_is_refused(
    guide_class, rule, other, match
):
    _, blr = fitted(one_site, guide_class, rule)
    checkpoint = round_trip(blr.state_dict())
    guide, target = fitted(other, guide_class, rule)
    before = params(guide)
    with pytest.raises(ValueError, match="state_dict is of another model: " + match):
        target.load_state_dict(checkpoint, *data())
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name


def test_the_same_sites_in_another_order_are_refused():
    _, blr = fitted(two_sites, AutoDiagonalNormal, "von")
    _, target = fitted(swapped, AutoDiagonalNormal, "von")
    with pytest.raises(ValueError, match=r"the sites come in another order \(\['a', 'b'\] there"):
        target.load_state_dict(blr.state_dict(), *data())


def test_a_checkpoint_of_another_dtype_is_refused_naming_the_fix():
    _, blr = fitted(one_site, AutoNormal, "von", dtype=torch.float32)
    guide, target = fitted(one_site, AutoNormal, "von")
    before = params(guide)
    with pytest.raises(ValueError, match=r"dtype torch.float32, this guide is torch.float64.*"):
        target.load_state_dict(blr.state_dict(), *data())
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name


def test_a_stepper_checkpoint_names_its_rule():
    # von and newton keep the same fields (mean, precision): only the signature tells them apart.
    def stepper(name):
        pyro.clear_param_store()
        guide = AutoMultivariateNormal(one_site)
        rule = rule_from_name(name)
        return stepper_for(rule, guide)(one_site, guide, rule, step_options(rule, "auto", None))

    von = stepper("von")
    von.step(data(), {}, 0.5, 1)
    newton = stepper("newton")
    with pytest.raises(ValueError, match="state_dict is of rule 'von', this driver runs 'newton'"):
        newton.load_state_dict(von.state_dict(), data(), {})


def test_a_checkpoint_without_signature_is_refused():
    _, blr = fitted(one_site, AutoNormal, "von")
    state = blr.state_dict()
    state["state"] = {k: v for k, v in state["state"].items() if not k.startswith("signature.")}
    with pytest.raises(ValueError, match="carries no model signature"):
        blr.load_state_dict(state, *data())


# ------------------------------------------------------------------ local latents
G = 16


def random_effects(y, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 5.0))
    with pyro.plate("groups", len(y), subsample_size=subsample_size) as idx:
        b = pyro.sample("b", dist.Normal(y.new_zeros(()), 1.0))
        pyro.sample("y", dist.Normal(mu + b, 0.5), obs=y[idx])


@pytest.mark.parametrize("rule", ["von", "newton"])
def test_local_latents_resume_bit_for_bit_through_torch_save(rule):
    y = torch.linspace(-1.0, 2.0, G, dtype=D)

    def make():
        pyro.clear_param_store()
        guide = AutoNormal(random_effects)
        return guide, pb.BLR(random_effects, guide, rule_from_name(rule, lr=0.5))

    pyro.set_rng_seed(0)
    guide, blr = make()
    for _ in range(2):
        blr.step(y, subsample_size=4)
    checkpoint = round_trip(blr.state_dict())
    rng = torch.get_rng_state()
    expected = [blr.step(y, subsample_size=4) for _ in range(3)]
    expected_params = params(guide)

    pyro.set_rng_seed(1)  # another start, overwritten by the checkpoint
    resumed_guide, resumed = make()
    resumed.load_state_dict(checkpoint, y, subsample_size=4)
    torch.set_rng_state(rng)
    assert [resumed.step(y, subsample_size=4) for _ in range(3)] == expected
    for name, value in params(resumed_guide).items():
        assert torch.equal(value, expected_params[name]), name
    # Into a model with fewer groups: refused, naming the site (the plate's full size counts,
    # not the minibatch's).
    pyro.clear_param_store()
    other = pb.BLR(random_effects, AutoNormal(random_effects), rule_from_name(rule, lr=0.5))
    with pytest.raises(ValueError, match=r"site 'b' has shape \(16,\) there, \(8,\) here"):
        other.load_state_dict(checkpoint, y[:8], subsample_size=4)


# ------------------------------------------------------------------ the other steppers
def mixture(component):
    return lambda model: pb.AutoMixture(model, num_components=2, component=component)


@pytest.mark.parametrize(
    "guide_class, rule",
    [(mixture("diagonal"), "mixture"), (mixture("full"), "mixture")],
    ids=["diagonal-mixture", "full-mixture"],
)
def test_a_mixture_checkpoint_of_another_model_is_refused(guide_class, rule):
    _, blr = fitted(one_site, guide_class, rule)
    guide, target = fitted(two_sites, guide_class, rule)
    before = params(guide)
    with pytest.raises(ValueError, match="state_dict is of another model: sites"):
        target.load_state_dict(round_trip(blr.state_dict()), *data())
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(
    "guide_class, rule",
    [(pb.AutoExpFamily, "expfamily"), (mixture("expfamily"), "mixture")],
    ids=["expfamily", "expfamily-mixture"],
)
def test_an_expfamily_checkpoint_of_another_dtype_is_refused(guide_class, rule):
    _, blr = fitted(one_site, guide_class, rule, dtype=torch.float32)
    _, target = fitted(one_site, guide_class, rule)
    with pytest.raises(ValueError, match=r"dtype torch.float32, this guide is torch.float64"):
        target.load_state_dict(blr.state_dict(), *data())
