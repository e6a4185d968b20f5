"""AutoExpFamily on latent Bernoulli sites: a Bernoulli factor, binary draws everywhere a user
looks (Predictive, median, quantiles), and the discrete sites it still refuses."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO

import pyro_blr as pb

D = torch.float64
W = torch.tensor([1.0, -2.0, 0.5], dtype=D)


def spike_and_slab(X, y):
    z = pyro.sample("z", dist.Bernoulli(torch.full((3,), 0.3, dtype=D)).to_event(1))
    sigma = pyro.sample("sigma", dist.Gamma(torch.tensor(4.0, dtype=D), 4.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(X @ (z * W), sigma), obs=y)


def data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(10, 3, generator=gen, dtype=D)
    return X, X @ W + torch.randn(10, generator=gen, dtype=D)


def test_a_latent_bernoulli_gets_a_bernoulli_factor_with_binary_draws():
    pyro.clear_param_store()
    X, y = data()
    guide = pb.AutoExpFamily(spike_and_slab)
    kinds = {k: type(d).__name__ for k, d in guide.distributions(X, y).items()}
    assert kinds == {"z": "Bernoulli", "sigma": "Gamma"}
    eta = guide.natural_params()["z"]
    assert eta.shape == (3, 1) and eta.dtype == D
    torch.testing.assert_close(torch.sigmoid(eta[..., 0]), torch.full((3,), 0.3, dtype=D))
    logits = torch.tensor([[2.0], [-1.0], [0.1]], dtype=D)
    guide.set_natural_params({**guide.natural_params(), "z": logits})
    draws = Predictive(spike_and_slab, guide=guide, num_samples=50)(X, y)["z"]
    assert draws.shape == (50, 1, 3) and set(draws.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(guide.median(X, y)["z"], torch.tensor([1.0, 0.0, 1.0], dtype=D))
    quantiles = guide.quantiles([0.05, 0.5, 0.95], X, y)["z"]
    p = torch.sigmoid(torch.tensor([2.0, -1.0, 0.1], dtype=D))
    expected = (torch.tensor([0.05, 0.5, 0.95], dtype=D)[:, None] > 1 - p).to(D)
    assert torch.equal(quantiles, expected)
    # SVI still runs (a score-function term for the discrete site, as Pyro does)
    loss = Trace_ELBO().differentiable_loss(spike_and_slab, guide, X, y)
    assert torch.isfinite(loss)


def test_discrete_sites_it_cannot_keep_are_refused_naming_the_site():
    def categorical():
        pyro.sample("k", dist.Categorical(torch.ones(3) / 3))

    with pytest.raises(ValueError, match=r"latent site 'k' is discrete \(Categorical\)"):
        pb.AutoExpFamily(categorical)()

    def enumerated():
        pyro.sample("b", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match=r"latent site 'b' is discrete.*enumerate it out"):
        pb.AutoExpFamily(enumerated)()

    def binary():
        pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"latent site 'b' is discrete.*ExpFamilyMixture"):
        pb.AutoMixture(binary, num_components=2, component="expfamily")()
