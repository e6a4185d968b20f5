"""log_evidence on conjugate regression, whose log evidence is known exactly."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.core import GaussianGuide, latent_layout
from tests.scenarios import (
    MIXTURE_DATA,
    beta_bernoulli_gamma_poisson,
    impossible_counts,
    linear_regression,
    mixture,
    mixture_guide,
    normal_normal,
)


@pytest.fixture(scope="module")
def fitted():
    # A mean-field fit of a correlated posterior: a good but inexact proposal.
    pyro.set_rng_seed(0)
    s = linear_regression()
    guide = AutoDiagonalNormal(s.model)
    pb.BLR(s.model, guide, pb.Newton(lr=0.5)).fit(s.X, s.y, num_steps=100, progress=False)
    return s, guide


def test_elbo_below_iwae_below_log_evidence_and_iwae_converges(fitted):
    s, guide = fitted
    log_z = s.log_evidence
    elbo = pb.log_evidence(s.model, guide, s.X, s.y, method="elbo", num_particles=20000)
    iwae = {
        k: pb.log_evidence(s.model, guide, s.X, s.y, method="iwae", num_particles=k)
        for k in (10, 100, 20000)
    }
    renyi = pb.log_evidence(
        s.model, guide, s.X, s.y, method="renyi", alpha=0.5, num_particles=20000
    )
    # Each comparison allows four standard errors of the estimates involved.
    assert elbo.value < renyi.value + 4 * (elbo.stderr + renyi.stderr)
    assert renyi.value < iwae[20000].value + 4 * (renyi.stderr + iwae[20000].stderr)
    assert iwae[20000].value < log_z + 4 * iwae[20000].stderr
    assert log_z - elbo.value > 0.05  # the mean-field guide is not exact
    assert abs(log_z - iwae[20000].value) < 0.1 * (log_z - elbo.value)  # IWAE closes the gap
    assert iwae[10].value < iwae[20000].value


@pytest.mark.parametrize("method", ["elbo", "iwae", "renyi"])
def test_every_method_is_the_exact_log_evidence_at_the_exact_posteriors(method):
    # At q = p(z | D) every weight p(D, z)/q(z) equals Z: each estimate is log Z with zero
    # standard error whatever the draws, so the tolerance is float64 round-off. This also checks
    # the scenarios' closed-form posteriors and log evidences against each other.
    s = normal_normal()
    guide = AutoNormal(s.model)
    guide(s.y)
    view = GaussianGuide(guide, latent_layout(guide.prototype_trace))
    view.write(torch.tensor([s.posterior_mean], dtype=torch.float64),
               torch.tensor([s.posterior_precision], dtype=torch.float64))  # fmt: skip
    estimate = pb.log_evidence(s.model, guide, s.y, method=method, num_particles=50)
    assert estimate.value == pytest.approx(s.log_evidence, abs=1e-10)
    assert estimate.stderr < 1e-10

    pair = beta_bernoulli_gamma_poisson()
    guide = pb.AutoExpFamily(pair.model)
    guide(*pair.data)
    families = guide.site_families()
    exact = {
        name: families[name].natural_params(*(torch.tensor(v, dtype=torch.float64) for v in p))
        for name, p in pair.exact.items()
    }
    guide.set_natural_params(exact)
    estimate = pb.log_evidence(pair.model, guide, *pair.data, method=method, num_particles=50)
    assert estimate.value == pytest.approx(pair.log_evidence, abs=1e-9)
    assert estimate.stderr < 1e-9


def test_standard_errors_shrink_like_one_over_root_k(fitted):
    s, guide = fitted
    small = pb.log_evidence(s.model, guide, s.X, s.y, method="elbo", num_particles=400)
    large = pb.log_evidence(s.model, guide, s.X, s.y, method="elbo", num_particles=6400)
    assert large.stderr == pytest.approx(small.stderr / 4, rel=0.25)


def test_chunking_does_not_change_the_estimate(fitted):
    s, guide = fitted
    pyro.set_rng_seed(5)
    one = pb.log_evidence(s.model, guide, s.X, s.y, num_particles=600, chunk_size=600)
    pyro.set_rng_seed(5)
    many = pb.log_evidence(s.model, guide, s.X, s.y, num_particles=600, chunk_size=64)
    assert many.value == pytest.approx(one.value, abs=0.05)  # different draws, same target


def test_bad_arguments_and_subsampling(fitted):
    s, guide = fitted
    with pytest.raises(ValueError, match="unknown method 'laplace'"):
        pb.log_evidence(s.model, guide, s.X, s.y, method="laplace")
    with pytest.raises(ValueError, match="finite alpha != 1"):
        pb.log_evidence(s.model, guide, s.X, s.y, method="renyi", alpha=1.0)
    mini = linear_regression(subsample_size=5)
    with pytest.raises(ValueError, match=r"plate \['data'\] is subsampled"):
        pb.log_evidence(mini.model, guide, mini.X, mini.y)
    assert torch.get_default_dtype() == torch.float32


def test_local_latents_are_estimated_per_datum():
    # z_i ~ N(0, 1), x_i ~ N(z_i, 1): log p(x_i) = log N(x_i; 0, 2) exactly. The guide
    # N(x_i / 2, 1) has the right mean and twice the right variance: an inexact proposal.
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(x / 2, 1.0))

    pyro.set_rng_seed(0)
    x = torch.randn(50, dtype=torch.float64) * 2**0.5
    exact = float(dist.Normal(0.0, 2**0.5).log_prob(x).sum())
    elbo = pb.log_evidence(model, guide, x, method="elbo", num_particles=2000)
    iwae = pb.log_evidence(model, guide, x, method="iwae", num_particles=2000)
    # The ELBO gap is KL(q || posterior) = 0.5 (2 - 1 - log 2) per datum, summed over 50.
    kl = 50 * 0.5 * (1 / 0.5 - 1 - math.log(1 / 0.5))
    assert elbo.value == pytest.approx(exact - kl, abs=4 * elbo.stderr)
    # Per-datum IWAE with 2000 particles closes the gap; on the joint weight it could not.
    assert abs(iwae.value - exact) < 4 * iwae.stderr + 0.01 * kl
    assert 0 < iwae.stderr < elbo.stderr


def test_argument_validation_names_the_argument(fitted):
    s, guide = fitted
    for options, name in [
        ({"num_particles": 0}, "num_particles"),
        ({"num_particles": True}, "num_particles"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": -3}, "chunk_size"),
    ]:
        with pytest.raises(ValueError, match=f"{name} must be an integer"):
            pb.log_evidence(s.model, guide, s.X, s.y, **options)
    for alpha in (math.inf, -math.inf):  # no delta-method standard error: refused, explained
        with pytest.raises(ValueError, match=r"finite alpha != 1.*use pb.RenyiELBO"):
            pb.log_evidence(s.model, guide, s.X, s.y, method="renyi", alpha=alpha)
    for alpha in (float("nan"), True, torch.ones(2)):
        with pytest.raises(ValueError, match="alpha must be a real number"):
            pb.log_evidence(s.model, guide, s.X, s.y, method="renyi", alpha=alpha)


def test_alpha_may_be_a_numpy_scalar_or_a_0d_tensor(fitted):
    s, guide = fitted
    values = []
    for alpha in (0.5, np.float32(0.5), torch.tensor(0.5)):
        pyro.set_rng_seed(4)
        values.append(
            pb.log_evidence(
                s.model, guide, s.X, s.y, method="renyi", alpha=alpha, num_particles=50
            ).value
        )
    assert values[0] == values[1] == values[2]


def test_an_enumerated_site_hidden_from_the_guide_is_summed_out():
    # exactness against the hand-summed model: tests/evidence/test_enumeration.py
    guide = mixture_guide()
    estimate = pb.log_evidence(mixture, guide, MIXTURE_DATA, num_particles=10)
    assert math.isfinite(estimate.value) and math.isfinite(estimate.stderr)


def test_an_impossible_likelihood_is_blamed_on_its_site():
    y = torch.ones(6)
    guide = AutoNormal(impossible_counts)
    with pytest.raises(ValueError, match=r"model site 'y' \(observed\) is -inf"):
        pb.log_evidence(impossible_counts, guide, y, num_particles=10)
