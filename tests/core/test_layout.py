"""The flat latent vector and the negative log joint against Pyro's own computations."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal

from pyro_blr.core import latent_layout, neg_log_joint
from tests.scenarios import constrained_model


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    return x, 2 * x + torch.randn(2, 5, generator=gen, dtype=torch.float64)


def test_layout_follows_pyro_autocontinuous_order(data):
    guide = AutoDiagonalNormal(constrained_model)
    guide(*data)
    layout = latent_layout(guide.prototype_trace)
    assert [s.name for s in layout.sites] == ["w", "sigma", "probs", "offset"]
    assert layout.dim == guide.latent_dim == 2 + 1 + 2 + 2
    latent = torch.randn(layout.dim, dtype=torch.float64)
    ours = layout.unpack(latent[None])
    for site, value in guide._unpack_latent(latent):
        torch.testing.assert_close(ours[site["name"]].reshape(value.shape), value)


def test_neg_log_joint_matches_pyro_trace(data):
    guide = AutoDiagonalNormal(constrained_model)
    guide(*data)
    model_trace = poutine.trace(constrained_model).get_trace(*data)
    layout = latent_layout(guide.prototype_trace, model_trace)
    assert layout.max_plate_nesting == 2
    theta = torch.randn(4, layout.dim, dtype=torch.float64)
    ours = neg_log_joint(constrained_model, layout, theta, data)
    assert ours.shape == (4,)
    for s in range(4):
        values, log_det = {}, 0.0
        for site, unconstrained in guide._unpack_latent(theta[s]):
            value = torch.distributions.biject_to(site["fn"].support)(unconstrained)
            transform = torch.distributions.biject_to(site["fn"].support)
            log_det = log_det + transform.log_abs_det_jacobian(unconstrained, value).sum()
            values[site["name"]] = value
        trace = poutine.trace(poutine.condition(constrained_model, values)).get_trace(*data)
        expected = -(trace.log_prob_sum() + log_det)
        torch.testing.assert_close(ours[s], expected, rtol=1e-12, atol=1e-12)


def test_subsampled_plate_is_scaled_like_pyro():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 10, subsample_size=4) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    y = torch.arange(10.0)
    guide = AutoDiagonalNormal(model)
    guide(y)
    layout = latent_layout(guide.prototype_trace, poutine.trace(model).get_trace(y))
    theta = torch.tensor([[0.3]])
    pyro.set_rng_seed(3)
    ours = neg_log_joint(model, layout, theta, (y,))
    pyro.set_rng_seed(3)
    trace = poutine.trace(poutine.condition(model, {"mu": theta[0, 0]})).get_trace(y)
    torch.testing.assert_close(ours[0], -trace.log_prob_sum())
    idx = trace.nodes["data"]["value"]
    manual = dist.Normal(0.0, 1.0).log_prob(theta[0, 0])
    manual = manual + 10 / 4 * dist.Normal(theta[0, 0], 1.0).log_prob(y[idx]).sum()
    torch.testing.assert_close(ours[0], -manual)


def test_local_latent_in_subsampled_plate_is_refused():
    def model(y):
        with pyro.plate("data", 10, subsample_size=4) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])

    guide = AutoDiagonalNormal(model)
    guide(torch.zeros(10))
    with pytest.raises(ValueError, match="'z' is local to the subsampled plate 'data'"):
        latent_layout(guide.prototype_trace)


def test_discrete_latent_is_refused():
    def model():
        pyro.sample("k", dist.Categorical(torch.ones(3) / 3))

    trace = poutine.trace(model).get_trace()
    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        latent_layout(trace)
