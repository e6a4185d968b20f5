"""The safeguards of the mixture rule (pb.MixtureRule on pb.AutoMixture, Gaussian and
exponential-family components): stepping back from a step that made the fit diverge,
checkpoints that are the rule's state (logits, means and precisions, or natural parameters)
plus the model's signature, distributed reduction (two ranks with half the data each equal one
process with all of it), and errors that name the sites and the components at fault with the
guide unchanged."""

import io
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_blr as pb
from pyro_blr.blr.rules import Estimates, ExpFamilyMixtureState
from pyro_blr.core import initialize_guide
from pyro_blr.families import Normal
from tests.blr.gloo import run_ranks

COMPONENTS = ("diagonal", "full", "expfamily")


def params(guide):
    return {name: p.detach().clone() for name, p in guide.named_parameters()}


def saved(blr):
    buffer = io.BytesIO()
    torch.save(blr.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def mixture_moments(guide):
    """Mean and sd of the one latent of a fitted mixture, in closed form."""
    if guide.component == "expfamily":
        family = guide.site_families()["w"]
        parts = family.params(guide.natural_params()["w"])
        locs, variances = parts["loc"], parts["scale"].square()
    else:
        _, locs, precisions = guide.components()
        locs = locs[:, 0]
        variances = 1 / (precisions[:, 0] if precisions.dim() == 2 else precisions[:, 0, 0])
    weights = guide.weights.detach()
    mean = (weights * locs).sum()
    return float(mean), float(((weights * (variances + locs.square())).sum() - mean**2).sqrt())


# ------------------------------------------------------------------ step-back
X = torch.linspace(0.0, 30.0, 40)  # float32: exp(w * 30) overflows above w = 2.96


def poisson_model(x, y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Poisson((w * x).exp()), obs=y)


def exact_posterior(y):
    """Mean and sd of w by quadrature (float64, 20001 points over +-0.05 of the mode)."""
    w = torch.linspace(0.05, 0.15, 20001, dtype=torch.float64)
    log_p = dist.Normal(0.0, 1.0).log_prob(w)
    log_p = log_p + dist.Poisson((w[:, None] * X.double()).exp()).log_prob(y.double()).sum(-1)
    weights = (log_p - log_p.max()).exp()
    weights = weights / weights.sum()
    mean = (weights * w).sum()
    return float(mean), float((weights * (w - mean) ** 2).sum().sqrt())


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_overflowing_step_is_retaken_smaller_and_the_fit_ends_at_the_posterior(component):
    # From w near 0 the first lr-1 step lands where exp(w * x) overflows float32 at the next
    # draws; without stepping back the fit raised at step 2 ("a mixture expectation is not
    # finite").
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    y = torch.poisson((0.1 * X).exp(), generator=torch.Generator().manual_seed(0))
    guide = pb.AutoMixture(poisson_model, num_components=2, component=component, init_spread=0.1)
    blr = pb.BLR(poisson_model, guide, pb.MixtureRule(lr=1.0, mc_samples=4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the loss's climb before a step back
        blr.fit(X, y, num_steps=60, progress=False, check=False)
    assert blr.step_backs >= 1
    mean, sd = exact_posterior(y)
    found_mean, found_sd = mixture_moments(guide)
    # As the Gaussian rules' step-back test: a Gaussian (here both components on the one mode)
    # within 0.1 sd of the exact mean and 5 % of its sd; the Monte Carlo error of the average
    # of 30 iterates with 4 draws per component is far below that.
    assert abs(found_mean - mean) < 0.1 * sd
    assert found_sd == pytest.approx(sd, rel=0.05)


# ------------------------------------------------------------------ checkpoints
D = torch.float64
Y = torch.tensor([0.3, -0.2, 1.1, 0.7, 0.4, -0.5], dtype=D)


def two_sites(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=D), 1.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=D), 2.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(a + b.tanh(), 1.0), obs=y)


def mixture_fit(component, seed=0, num_components=2, lr=0.3):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = pb.AutoMixture(two_sites, num_components=num_components, component=component)
    return guide, pb.BLR(two_sites, guide, pb.MixtureRule(lr=lr, mc_samples=4))


STATE_ENTRIES = {
    "diagonal": {"logits", "locs", "precisions"},
    "full": {"logits", "locs", "precisions"},
    "expfamily": {"logits", "natural.a", "natural.b"},
}


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_checkpoint_is_the_rule_state_and_the_signature(component):
    guide, blr = mixture_fit(component)
    blr.step(Y)
    state = saved(blr)["state"]
    assert {k for k in state if not k.startswith("signature.")} == STATE_ENTRIES[component]
    torch.testing.assert_close(state["logits"], guide.logits.detach(), rtol=0, atol=0)
    assert int(state["signature.components"]) == 2


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_resumed_fit_equals_the_uninterrupted_one_bit_for_bit(component):
    guide, blr = mixture_fit(component)
    for _ in range(3):
        blr.step(Y)
    checkpoint, rng = saved(blr), torch.get_rng_state()
    losses = [blr.step(Y) for _ in range(3)]

    resumed, again = mixture_fit(component, seed=5)  # elsewhere, then the checkpoint
    again.load_state_dict(checkpoint, Y)
    torch.set_rng_state(rng)
    assert [again.step(Y) for _ in range(3)] == losses
    for name, value in params(guide).items():
        assert torch.equal(params(resumed)[name], value), name
    end, resumed_end = blr.state_dict()["state"], again.state_dict()["state"]
    for key, value in end.items():
        assert torch.equal(resumed_end[key], value), key


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_checkpoint_of_another_number_of_components_is_refused_whole(component):
    _, blr = mixture_fit(component, num_components=3)
    blr.step(Y)
    guide, other = mixture_fit(component)
    other.step(Y)
    before = params(guide)
    with pytest.raises(ValueError, match="a mixture of 3 components, this guide has 2"):
        other.load_state_dict(saved(blr), Y)
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("component", ["diagonal", "full"])
def test_a_checkpoint_whose_precision_is_not_positive_definite_is_refused_naming_it(component):
    guide, blr = mixture_fit(component)
    blr.step(Y)
    checkpoint = saved(blr)
    checkpoint["state"]["precisions"][1] *= -1  # component 1's precision negated
    before = params(guide)
    with pytest.raises(ValueError, match=r"'precisions' holds precisions of component\(s\) \[1\]"):
        blr.load_state_dict(checkpoint, Y)
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name


# ------------------------------------------------------------------ errors naming the site
def walled(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=D), 1.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=D), 1.0))
    pyro.factor("wall", -b.exp().exp())  # -inf beyond b = log(709.8) = 6.57
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(a, 1.0), obs=y)


def component_beyond_the_wall(component):
    """A mixture whose component 1 sits at b = 10 (sd 0.1), beyond the wall; component 0 at
    b = 0."""
    pyro.clear_param_store()
    guide = pb.AutoMixture(walled, num_components=2, component=component)
    initialize_guide(guide, (Y,), {})
    if component == "expfamily":
        family = Normal()
        loc = torch.tensor([[0.0], [10.0]], dtype=D).squeeze(-1)
        eta_b = family.natural_params(loc, torch.full_like(loc, 0.1))
        guide.set_natural_params({**guide.natural_params(), "b": eta_b})
    else:
        logits, locs, precisions = guide.components()
        locs[:, 1] = torch.tensor([0.0, 10.0], dtype=D)
        guide.set_components(logits, locs, precisions * 100)
    return guide


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_non_finite_log_joint_names_the_site_and_the_component(component):
    guide = component_beyond_the_wall(component)
    before = params(guide)
    blr = pb.BLR(walled, guide, pb.MixtureRule(lr=0.5, mc_samples=4))
    with pytest.raises(FloatingPointError, match=r"site\(s\) \['wall'\] in component\(s\) \[1\]"):
        blr.step(Y)
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name


def kinked(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=D), 1.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=D), 1.0))
    below = 0.0 * b  # sqrt's infinite slope at 0 times 0: a NaN gradient below b = 5
    pyro.factor("kink", torch.where(b > 5.0, b - 5.0, below).sqrt())
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(a, 1.0), obs=y)


@pytest.mark.parametrize("component", ["diagonal", "full"])
def test_a_non_finite_gradient_names_the_site_and_the_component_of_its_draws(component):
    pyro.clear_param_store()
    guide = pb.AutoMixture(kinked, num_components=2, component=component)
    initialize_guide(guide, (Y,), {})
    logits, locs, precisions = guide.components()
    locs[:, 1] = torch.tensor([10.0, 0.0], dtype=D)  # component 1 below the kink
    guide.set_components(logits, locs, precisions * 100)
    before = params(guide)
    blr = pb.BLR(kinked, guide, pb.MixtureRule(lr=0.5, mc_samples=4))
    with pytest.raises(
        FloatingPointError,
        match=r"gradient is not finite at site\(s\) \['b'\] in component\(s\) \[1\]",
    ):
        blr.step(Y)
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name


def test_a_non_finite_update_names_the_sites_and_the_components():
    guide, blr = mixture_fit("diagonal", lr=1e154)  # lr^2 g^2 / S overflows float64
    initialize_guide(guide, (Y,), {})
    before = params(guide)
    with pytest.raises(FloatingPointError, match=r"update is not finite at site\(s\) \['a', 'b'\]"):
        blr.step(Y)
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name


def test_a_non_finite_gradient_names_the_site_and_the_component():
    family = Normal()
    eta = family.natural_params(torch.zeros(2, dtype=D), torch.ones(2, dtype=D))  # (K=2, 2)
    state = ExpFamilyMixtureState(torch.zeros(2, dtype=D), {"b": eta}, {"b": family})
    grad = torch.zeros_like(eta)
    grad[1, 0] = float("nan")
    estimates = Estimates({"b": grad}, None, 4, values=torch.zeros(2, dtype=D))
    with pytest.raises(FloatingPointError, match=r"step 4: site 'b' in component\(s\) \[1\]: "):
        pb.MixtureRule().update(state, estimates, 0.5)


# ------------------------------------------------------------------ distributed reduction
N = 40


def data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, 3, generator=gen, dtype=D)
    y = torch.bernoulli(torch.sigmoid(X @ torch.tensor([1.0, -1.0, 0.5], dtype=D)), generator=gen)
    return X, y


def logistic(X, y, idx=None):
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 2.0).to_event(1))
    with pyro.plate("data", N, subsample=idx) as i:
        pyro.sample("y", dist.Bernoulli(logits=X[i] @ w), obs=y[i])


def fit_logistic(component, steps, idx=None):
    X, y = data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pb.AutoMixture(logistic, num_components=2, component=component)
    blr = pb.BLR(logistic, guide, pb.MixtureRule(lr=0.5, mc_samples=4), rank_noise=False)
    losses = [blr.step(X, y, idx) for _ in range(steps)]
    return params(guide), losses


def half_each(rank, world):
    idx = torch.arange(rank * N // 2, (rank + 1) * N // 2)
    return {component: fit_logistic(component, 3, idx) for component in COMPONENTS}


@pytest.mark.slow  # two spawned processes: about 20 s on two shared cores
def test_two_ranks_with_half_the_data_equal_one_process_with_all_of_it():
    ranks = run_ranks(half_each)
    for component in COMPONENTS:
        expected, losses = fit_logistic(component, 3)
        for result in ranks:
            found, found_losses = result[component]
            assert found_losses == pytest.approx(losses, rel=1e-10, abs=1e-10)
            for key, value in expected.items():
                torch.testing.assert_close(found[key], value, rtol=1e-10, atol=1e-10)
        for key, value in ranks[0][component][0].items():  # every rank ends identical
            assert torch.equal(value, ranks[1][component][0][key]), (component, key)
