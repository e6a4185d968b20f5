"""AutoExpFamily on latent OneHotCategorical sites: a categorical factor, one-hot draws where a
user looks (Predictive, median), exact marginal quantiles, and Categorical index sites refused
naming the fix."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO

import pyro_blr as pb

D = torch.float64
LOCS = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]], dtype=D)
PRIOR = torch.tensor([0.2, 0.3, 0.5], dtype=D)


def choices(X, y):
    with pyro.plate("features", 2):
        z = pyro.sample("z", dist.OneHotCategorical(PRIOR))
    sigma = pyro.sample("sigma", dist.Gamma(torch.tensor(4.0, dtype=D), 4.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(X @ (z * LOCS).sum(-1), sigma), obs=y)


def data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(10, 2, generator=gen, dtype=D)
    return X, X @ LOCS[:, 0] + torch.randn(10, generator=gen, dtype=D)


def test_a_latent_one_hot_site_gets_a_categorical_factor_with_one_hot_draws():
    pyro.clear_param_store()
    X, y = data()
    guide = pb.AutoExpFamily(choices)
    kinds = {k: type(d).__name__ for k, d in guide.distributions(X, y).items()}
    assert kinds == {"z": "OneHotCategorical", "sigma": "Gamma"}
    eta = guide.natural_params()["z"]
    assert eta.shape == (2, 2) and eta.dtype == D
    torch.testing.assert_close(eta, (PRIOR[:-1] / PRIOR[-1]).log().expand(2, 2))
    logits = torch.tensor([[2.0, -1.0], [-3.0, -1.0]], dtype=D)
    guide.set_natural_params({**guide.natural_params(), "z": logits})
    draws = Predictive(choices, guide=guide, num_samples=50)(X, y)["z"]
    assert draws.shape == (50, 2, 3) and set(draws.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(draws.sum(-1), torch.ones(50, 2, dtype=D))
    mode = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=D)
    assert torch.equal(guide.median(X, y)["z"], mode)
    q = torch.tensor([0.05, 0.5, 0.95], dtype=D)
    quantiles = guide.quantiles(q.tolist(), X, y)["z"]
    p = torch.softmax(torch.cat([logits, torch.zeros(2, 1, dtype=D)], -1), -1)
    assert torch.equal(quantiles, (q[:, None, None] > 1 - p).to(D))  # each indicator's
    # SVI still runs (a score-function term for the discrete site, as Pyro does)
    assert torch.isfinite(Trace_ELBO().differentiable_loss(choices, guide, X, y))


def test_a_categorical_index_site_is_refused_naming_the_one_hot_fix():
    def categorical():
        pyro.sample("k", dist.Categorical(torch.ones(3) / 3))

    fix = r"latent site 'k' is discrete \(Categorical\).*OneHotCategorical.*'k @ locs'"
    with pytest.raises(ValueError, match=fix):
        pb.AutoExpFamily(categorical)()

    def enumerated():
        pyro.sample("c", dist.OneHotCategorical(torch.ones(3) / 3), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match=r"latent site 'c' is discrete.*enumerate it out"):
        pb.AutoExpFamily(enumerated)()

    def one_hot():
        pyro.sample("c", dist.OneHotCategorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"latent site 'c' is discrete.*ExpFamilyMixture"):
        pb.AutoMixture(one_hot, num_components=2, component="expfamily")()
