"""AutoExpFamily: support-matched families recover conjugate posteriors exactly."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO

import pyro_blr as pb
from pyro_blr.distributions import VonMises
from tests.scenarios import beta_bernoulli_gamma_poisson

D = torch.float64


# Beta-Bernoulli (site "p") and Gamma-Poisson (site "rate") side by side, with exact posteriors.
CONJUGATE = beta_bernoulli_gamma_poisson(D)
conjugate_model = CONJUGATE.model
FLIPS, COUNTS = CONJUGATE.data
EXACT = CONJUGATE.exact  # Beta(a, b) and Gamma(shape, rate) of the posteriors
assert_exact_posteriors = CONJUGATE.assert_exact_posteriors


def test_families_follow_the_supports():
    guide = pb.AutoExpFamily(conjugate_model)
    kinds = {k: type(d).__name__ for k, d in guide.distributions(FLIPS, COUNTS).items()}
    assert kinds == {"p": "Beta", "rate": "Gamma"}
    guide = pb.AutoExpFamily(conjugate_model, families={"rate": "lognormal"})
    assert type(guide.distributions(FLIPS, COUNTS)["rate"]).__name__ == "LogNormal"


def test_svi_recovers_the_exact_conjugate_posteriors():
    # The families contain the posteriors, which maximize the ELBO. Concentrations are
    # log-parameterized, so Adam moves them by ratios; with the step decayed a hundredfold over
    # 3000 steps the parameters settle within 1% (measured 0.8%). Tolerance: 3%.
    guide = pb.AutoExpFamily(conjugate_model, init_scale=0.5)
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.01 ** (1 / 3000)})
    svi = SVI(conjugate_model, guide, optim, Trace_ELBO(num_particles=16, vectorize_particles=True))
    for _ in range(3000):
        svi.step(FLIPS, COUNTS)
    assert_exact_posteriors(guide)


def test_predictive_median_quantiles_and_dtype():
    guide = pb.AutoExpFamily(conjugate_model)
    draws = Predictive(conjugate_model, guide=guide, num_samples=30)(FLIPS, COUNTS)
    assert draws["p"].numel() == 30 and draws["p"].dtype == D  # Pyro pads plate dims
    assert ((draws["p"] > 0) & (draws["p"] < 1)).all() and (draws["rate"] > 0).all()
    median = guide.median(FLIPS, COUNTS)
    assert set(median) == {"p", "rate"}
    q = guide.quantiles([0.1, 0.9], FLIPS, COUNTS)
    assert (q["p"][0] < q["p"][1]).all()


def test_simplex_circular_and_local_sites():
    def model(angles):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3)))
        with pyro.plate("data", len(angles)):
            mu = pyro.sample("mu", dist.VonMises(torch.tensor(0.0), 1.0))
            pyro.sample("obs", VonMises(mu, 4.0), obs=angles)
        return weights

    guide = pb.AutoExpFamily(model)
    kinds = {k: type(d).__name__ for k, d in guide.distributions(torch.zeros(5)).items()}
    assert kinds == {"weights": "Dirichlet", "mu": "VonMises"}
    loss = Trace_ELBO().differentiable_loss(model, guide, torch.zeros(5))
    grads = torch.autograd.grad(loss, list(guide.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert guide.median(torch.zeros(5))["mu"].shape == (5,)


def test_discrete_and_unknown_sites_are_refused():
    def discrete():
        pyro.sample("k", dist.Categorical(torch.ones(3) / 3))

    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        pb.AutoExpFamily(discrete)()
    with pytest.raises(ValueError, match="unknown family 'weibull' for site 'p'"):
        pb.AutoExpFamily(conjugate_model, families={"p": "weibull"})

    def lower_cholesky():
        pyro.sample("L", dist.LKJCholesky(3, 1.0))

    with pytest.raises(ValueError, match="no family for site 'L'"):
        pb.AutoExpFamily(lower_cholesky)()


def params_snapshot(guide):
    return {k: v.detach().clone() for k, v in guide.named_parameters()}


def assert_unchanged(guide, before):
    for name, value in guide.named_parameters():
        assert torch.equal(value.detach(), before[name]), name


def test_site_families_and_natural_params_round_trip():
    guide = pb.AutoExpFamily(conjugate_model)
    with pytest.raises(RuntimeError, match="needs the guide set up"):
        guide.site_families()
    guide(FLIPS, COUNTS)
    families = guide.site_families()
    assert list(families) == ["p", "rate"]
    assert [f.name for f in families.values()] == ["beta", "gamma"]
    # Writing the exact posterior's natural parameters and reading them back (float64).
    target = {
        "p": families["p"].natural_params(*(torch.tensor(v, dtype=D) for v in EXACT["p"])),
        "rate": families["rate"].natural_params(*(torch.tensor(v, dtype=D) for v in EXACT["rate"])),
    }
    guide.set_natural_params(target)
    etas = guide.natural_params()
    for name in target:
        assert not etas[name].requires_grad
        torch.testing.assert_close(etas[name], target[name], rtol=1e-13, atol=1e-13)
    assert_exact_posteriors(guide, rel=1e-12)
    before = params_snapshot(guide)
    guide.set_natural_params(guide.natural_params())  # a no-op up to round-off
    for name, value in guide.named_parameters():
        torch.testing.assert_close(value.detach(), before[name], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"rate": torch.tensor([float("nan"), -1.0], dtype=D)}, "site 'rate' are not finite"),
        ({"rate": torch.tensor([1.0, 2.0], dtype=D)}, "site 'rate' are outside the domain"),
        ({"rate": torch.tensor([1.0, -1.0, 0.0], dtype=D)}, "site 'rate' needs natural"),
        ({"p": torch.tensor([1e308, 1e308], dtype=D)}, "site 'p'"),
    ],
)
def test_bad_natural_parameters_are_refused_before_anything_is_written(bad, match):
    # 'p' comes first: a valid new value there must not be written when 'rate' is refused.
    guide = pb.AutoExpFamily(conjugate_model)
    guide(FLIPS, COUNTS)
    before = params_snapshot(guide)
    etas = {"p": torch.tensor([3.0, 4.0], dtype=D), "rate": torch.tensor([1.0, -1.0], dtype=D)}
    etas.update(bad)
    with pytest.raises(ValueError, match=match):
        guide.set_natural_params(etas)
    assert_unchanged(guide, before)
    with pytest.raises(ValueError, match="needs every site"):
        guide.set_natural_params({"p": etas["p"]})
    assert_unchanged(guide, before)


def test_an_underflowing_median_gives_finite_moderate_parameters():
    # The median of Gamma(0.01, 1) is about 1e-30 and its draws underflow float32: the rate
    # 1/(init_scale^2 * value) used to start near 1e38. The value is clamped into [eps, 1/eps].
    def model(counts):
        rate = pyro.sample("rate", dist.Gamma(0.01, 1.0))
        weight = pyro.sample("weight", dist.Beta(0.01, 0.01))
        with pyro.plate("counts", len(counts)):
            pyro.sample("count", dist.Poisson(rate * weight), obs=counts)

    counts = torch.tensor([1.0, 0.0, 2.0])
    guide = pb.AutoExpFamily(model)
    guide(counts)
    big = torch.finfo(torch.float32).max ** 0.5  # 1.8e19: moderate, and squares stay finite
    for name, value in guide.named_parameters():
        assert torch.isfinite(value).all(), name
    for d in guide.distributions(counts).values():
        for param in d.arg_constraints:
            value = getattr(d, param).detach()
            assert torch.isfinite(value).all() and (value.abs() < big).all(), param
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert all(math.isfinite(svi.step(counts)) for _ in range(5))


@pytest.mark.parametrize(
    "site, family, support",
    [
        ("rate", "beta", "GreaterThan"),
        ("p", "gamma", "Interval"),
        ("p", "lognormal", "Interval"),
        ("rate", "normal", "GreaterThan"),
        ("rate", "dirichlet", "GreaterThan"),
        ("p", "von_mises", "Interval"),
    ],
)
def test_an_override_off_the_sites_support_is_refused(site, family, support):
    guide = pb.AutoExpFamily(conjugate_model, families={site: family})
    with pytest.raises(
        ValueError, match=rf"family '{family}' does not fit site '{site}'.*{support}"
    ):
        guide(FLIPS, COUNTS)


def test_overrides_on_matching_supports_and_on_missing_sites():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("s", dist.HalfNormal(1.0))
        pyro.sample("angle", dist.VonMises(0.0, 2.0))

    guide = pb.AutoExpFamily(model, families={"s": "lognormal", "x": "normal", "angle": "normal"})
    kinds = {k: type(d).__name__ for k, d in guide.distributions().items()}
    assert kinds == {"x": "Normal", "s": "LogNormal", "angle": "Normal"}
    assert type(pb.AutoExpFamily(model).distributions()["angle"]).__name__ == "VonMises"
    with pytest.raises(ValueError, match=r"names \['y'\], which are not latent sites"):
        pb.AutoExpFamily(model, families={"y": "normal"})()


def test_a_vector_site_draws_under_an_outer_plate_of_particles():
    # w ~ Normal(0, 1).to_event(1) holds one location per coordinate, all of one draw: its
    # parameters are not a batch, so an outer plate (as the fit's end and the evidence
    # estimators draw particles) must not take their length for a plate's size.
    def model():
        pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    guide = pb.AutoExpFamily(model)
    guide()
    with pyro.plate("particles", 5, dim=-1):
        draws = guide()["w"]
    assert draws.shape == (5, 3)
