"""Model merging: exact on conjugate models (halves, thirds, a fine-tuning prior, weights), the
diagonal case where it is exact, and the errors it raises instead of a wrong merge."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.merge import merge, natural_parameters
from pyro_blr.blr.merge_maths import GaussianNaturals, merge_naturals
from tests.scenarios import linear_regression

D = torch.float64
CLOSE = dict(atol=1e-8, rtol=0)


@pytest.fixture(autouse=True)
def _local_params():
    """Each guide keeps its own parameters (see merge's Note); restored afterwards."""
    pyro.settings.set(module_local_params=True)
    yield
    pyro.settings.set(module_local_params=False)


def exact_fit(model, guide_class, *args):
    guide = guide_class(model)
    pb.BLR(model, guide, pb.Newton(lr=1.0)).step(*args)  # conjugate: exact in one step
    return guide


def posterior(guide):
    if isinstance(guide, AutoMultivariateNormal):
        return guide.loc.detach(), guide.get_posterior().covariance_matrix.detach()
    naturals = natural_parameters(guide)
    return naturals.mean(), torch.diag(naturals.precision.reciprocal())


@pytest.mark.parametrize("num_parts", [2, 3])
def test_posteriors_of_disjoint_parts_merge_into_the_full_data_posterior(num_parts):
    s = linear_regression(num_data=30, dim=3)
    parts = torch.arange(30).tensor_split(num_parts)
    guides = [exact_fit(s.model, AutoMultivariateNormal, s.X[i], s.y[i]) for i in parts]
    merged = merge(guides, s.X, s.y)
    assert type(merged) is AutoMultivariateNormal and merged is not guides[0]
    loc, covariance = posterior(merged)
    torch.testing.assert_close(loc, s.posterior_mean, **CLOSE)
    torch.testing.assert_close(covariance, s.posterior_covariance, **CLOSE)
    # Each part alone is far from the full posterior: the merge did the work.
    assert (posterior(guides[0])[0] - s.posterior_mean).abs().max() > 1e-2
    # The merged guide is a guide: Predictive draws from it, in the data's dtype, around the
    # full-data posterior mean: 5 Monte Carlo standard errors sqrt(var / 200) per coordinate
    # (a false alarm about once in 10^6 runs per coordinate; seeded).
    draws = Predictive(s.model, guide=merged, num_samples=200)(s.X, s.y)["w"]
    assert draws.dtype == D
    tolerance = 5 * (s.posterior_covariance.diagonal() / 200).sqrt()
    assert ((draws.reshape(200, 3).mean(0) - s.posterior_mean).abs() < tolerance).all()


def independent_model(X, y):
    """Three independent coordinates, each with its own prior and its own data column."""
    loc = torch.tensor([0.5, -1.0, 2.0], dtype=y.dtype)
    scale = torch.tensor([1.0, 0.5, 2.0], dtype=y.dtype)
    mu = pyro.sample("mu", dist.Normal(loc, scale).to_event(1))
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Normal(mu * X, 0.7).to_event(1), obs=y)


@pytest.mark.parametrize("guide_class", [AutoNormal, AutoDiagonalNormal])
def test_diagonal_guides_merge_exactly_where_the_coordinates_are_independent(guide_class):
    gen = torch.Generator().manual_seed(1)
    X = 1 + torch.rand(24, 3, generator=gen, dtype=D)
    y = X * torch.tensor([1.0, -2.0, 0.3], dtype=D) + 0.7 * torch.randn(24, 3, generator=gen)
    guides = [exact_fit(independent_model, guide_class, X[i], y[i]) for i in
              torch.arange(24).tensor_split(3)]  # fmt: skip
    merged = merge(guides, X, y)
    precision = torch.tensor([1.0, 4.0, 0.25], dtype=D) + X.square().sum(0) / 0.49
    eta = torch.tensor([0.5, -4.0, 0.5], dtype=D) + (X * y).sum(0) / 0.49
    loc, covariance = posterior(merged)
    torch.testing.assert_close(loc, eta / precision, **CLOSE)
    torch.testing.assert_close(covariance, torch.diag(precision.reciprocal()), **CLOSE)


def test_a_fine_tuning_prior_is_subtracted_once_from_a_guide_or_from_the_model():
    s = linear_regression(num_data=36, dim=3)
    pretrain, *tasks = torch.arange(36).tensor_split(3)
    pretrained = exact_fit(s.model, AutoMultivariateNormal, s.X[pretrain], s.y[pretrain])
    loc0, cov0 = posterior(pretrained)

    def fine_tune_model(X, y):  # the pretrained posterior is the prior of every task
        w = pyro.sample("w", dist.MultivariateNormal(loc0, covariance_matrix=cov0))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(X @ w, s.noise), obs=y)

    tuned = [exact_fit(fine_tune_model, AutoMultivariateNormal, s.X[i], s.y[i]) for i in tasks]
    for prior in (pretrained, "model"):  # the guide, or the MultivariateNormal read from a trace
        loc, covariance = posterior(merge(tuned, s.X, s.y, prior=prior))
        torch.testing.assert_close(loc, s.posterior_mean, **CLOSE)
        torch.testing.assert_close(covariance, s.posterior_covariance, **CLOSE)


def test_weights_scale_each_part_like_repeating_its_data():
    s = linear_regression(num_data=20, dim=3)
    first, second = torch.arange(20).tensor_split(2)
    guides = [exact_fit(s.model, AutoMultivariateNormal, s.X[i], s.y[i]) for i in (first, second)]
    loc, covariance = posterior(merge(guides, s.X, s.y, weights=[2.0, 1.0]))
    X, y = torch.cat([s.X, s.X[first]]), torch.cat([s.y, s.y[first]])  # part one counted twice
    precision = torch.eye(3, dtype=D) + X.T @ X / s.noise**2
    torch.testing.assert_close(covariance, torch.linalg.inv(precision), **CLOSE)
    torch.testing.assert_close(loc, torch.linalg.solve(precision, X.T @ y / s.noise**2), **CLOSE)


def test_merge_naturals_is_the_sum_less_the_prior():
    prior = GaussianNaturals(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0]))
    parts = [GaussianNaturals(torch.tensor([2.0, 1.0]), torch.tensor([3.0, 2.0])),
             GaussianNaturals(torch.tensor([0.0, 3.0]), torch.tensor([5.0, 4.0]))]  # fmt: skip
    merged = merge_naturals(parts, prior)
    torch.testing.assert_close(merged.eta, torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(merged.precision, torch.tensor([6.0, 5.0]))
    with pytest.raises(ValueError, match="posterior 1 has a full precision"):
        merge_naturals([parts[0], GaussianNaturals(torch.zeros(2), torch.eye(2))], prior)
    with pytest.raises(ValueError, match="one scale per posterior"):
        merge_naturals(parts, prior, weights=[1.0])


# --- errors: each names the guide or the site, and the fix -------------------------------------


@pytest.fixture
def halves():
    s = linear_regression(num_data=20, dim=3)
    parts = torch.arange(20).tensor_split(2)
    return s, [exact_fit(s.model, AutoMultivariateNormal, s.X[i], s.y[i]) for i in parts]


def test_guides_of_another_family_or_shape_are_named(halves):
    s, guides = halves
    diagonal = exact_fit(s.model, AutoNormal, s.X, s.y)
    with pytest.raises(ValueError, match=r"guide 1 \(AutoNormal\) is not a full-covariance"):
        merge([guides[0], diagonal], s.X, s.y)
    wider = linear_regression(num_data=20, dim=4)
    other = exact_fit(wider.model, AutoMultivariateNormal, wider.X, wider.y)
    with pytest.raises(ValueError, match=r"guide 2 has latent sites \[\('w', \(4,\)\)\]"):
        merge([*guides, other], s.X, s.y)
    with pytest.raises(TypeError, match="merge takes a list of guides"):
        merge(guides[0], s.X, s.y)
    with pytest.raises(TypeError, match="Gaussian guide"):
        merge([guides[0], pyro.infer.autoguide.AutoDelta(s.model)], s.X, s.y)


def test_a_prior_that_is_not_a_fixed_gaussian_is_named_with_the_fix():
    def hierarchical(y):
        tau = pyro.sample("tau", dist.Normal(0.0, 1.0))
        mu = pyro.sample("mu", dist.Normal(tau, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    def positive(y):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Exponential(rate), obs=y)

    y = torch.tensor([0.5, 1.5, 1.0, 2.0])
    fits = [exact_fit(hierarchical, AutoMultivariateNormal, part) for part in y.split(2)]
    with pytest.raises(ValueError, match="prior of latent site 'mu' changes with the other"):
        merge(fits, y)
    fits = [exact_fit(positive, AutoNormal, part) for part in y.split(2)]
    with pytest.raises(ValueError, match=r"latent site 'rate' has prior Gamma.*pass prior="):
        merge(fits, y)


def test_a_merged_precision_that_is_not_positive_definite_is_named(halves):
    s, guides = halves
    with pytest.raises(ValueError, match="not positive definite at latent site 'w'"):
        merge(guides, s.X, s.y, weights=[1.0, -5.0])
    loc = torch.zeros(3, dtype=D)
    huge = GaussianNaturals.from_moments(loc, 1e6 * torch.eye(3, dtype=D))  # not their prior
    with pytest.raises(ValueError, match="were not fitted from this prior"):
        merge(guides, s.X, s.y, prior=huge)


def test_guides_sharing_the_param_store_are_refused_not_merged():
    pyro.settings.set(module_local_params=False)
    s = linear_regression(num_data=20, dim=3)
    first, second = torch.arange(20).tensor_split(2)
    a = exact_fit(s.model, AutoMultivariateNormal, s.X[first], s.y[first])
    b = exact_fit(s.model, AutoMultivariateNormal, s.X[second], s.y[second])
    # Pyro gave b the store's tensors of a: both hold the second half's posterior now.
    with pytest.raises(ValueError, match="guides 0 and 1 share their parameters"):
        merge([a, b], s.X, s.y)
    pyro.clear_param_store()
    c = exact_fit(s.model, AutoMultivariateNormal, s.X[first], s.y[first])
    # Distinct tensors now, but the store holds c's names: a new guide would read c's values.
    with pytest.raises(ValueError, match="param store already holds parameters"):
        merge([c, a], s.X, s.y)
    pyro.clear_param_store()
    loc, _ = posterior(merge([c, a], s.X, s.y))  # an empty store: the merge is its own
    torch.testing.assert_close(loc, s.posterior_mean, **CLOSE)  # a holds the second half's fit
