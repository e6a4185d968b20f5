"""draw(): posterior draws with log p, log q, pointwise log-likelihood and predictive, named
after the plates, over the full data even when the model subsamples."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal

from pyro_blr.diagnostics.draws import draw

D = torch.float64
GEN = torch.Generator().manual_seed(0)
X = torch.randn(10, 3, generator=GEN, dtype=D)
Y = torch.randn(2, 10, generator=GEN, dtype=D)


def model(X, y, subsample_size=None):
    """Scalar, vector and plate-local latents, nested plates, a deterministic site and an
    optionally subsampled inner plate."""
    sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0, dtype=D), 0.3))
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=D), 1.0).to_event(1))
    with pyro.plate("groups", 2, dim=-2):
        offset = pyro.sample("offset", dist.Normal(torch.tensor(0.0, dtype=D), 1.0))
        with pyro.plate("data", X.shape[0], subsample_size=subsample_size, dim=-1) as idx:
            mean = pyro.deterministic("mean", (X[idx] * w).sum(-1) + offset)
            pyro.sample("y", dist.Normal(mean, sigma), obs=y[:, idx])


def full_data_log_likelihood(posterior):
    mean = (X * posterior["w"][:, None, None, :]).sum(-1) + posterior["offset"][..., None]
    return dist.Normal(mean, posterior["sigma"][:, None, None]).log_prob(Y)


@pytest.mark.parametrize("subsample_size", [None, 4])
def test_shapes_dims_and_coords(subsample_size):
    guide = AutoNormal(model)
    guide(X, Y)
    draws = draw(model, guide, (X, Y, subsample_size), {}, 7)
    shapes = {name: tuple(value.shape) for name, value in draws.posterior.items()}
    assert shapes == {"sigma": (7,), "w": (7, 3), "offset": (7, 2), "mean": (7, 2, 10)}
    assert draws.log_p.shape == draws.log_q.shape == (7,)
    assert draws.log_likelihood["y"].shape == draws.predictive["y"].shape == (7, 2, 10)
    assert torch.equal(draws.observed["y"], Y)
    assert draws.dims == {
        "sigma": [],
        "w": ["w_dim_0"],
        "offset": ["groups"],
        "mean": ["groups", "data"],
        "y": ["groups", "data"],
    }
    assert set(draws.coords) == {"groups", "data"}
    assert torch.equal(draws.coords["data"], torch.arange(10))  # all the data, even subsampled
    assert all(v.dtype == D for v in (draws.log_p, draws.log_q, draws.log_likelihood["y"]))


@pytest.mark.parametrize("subsample_size", [None, 4, 3])
def test_log_likelihood_and_log_p_are_those_of_the_full_data(subsample_size):
    # 4 and 3 do not divide 10: the last minibatch wraps around and must not double-count.
    guide = AutoNormal(model)
    guide(X, Y)
    draws = draw(model, guide, (X, Y, subsample_size), {}, 5)
    expected = full_data_log_likelihood(draws.posterior)
    torch.testing.assert_close(draws.log_likelihood["y"], expected, rtol=1e-12, atol=1e-12)
    for s in range(5):  # log p(D, z_s) of the full model, as Pyro computes it
        values = {n: draws.posterior[n][s] for n in ("sigma", "w")}
        values["offset"] = draws.posterior["offset"][s].reshape(2, 1)
        trace = poutine.trace(poutine.condition(model, values)).get_trace(X, Y)
        torch.testing.assert_close(draws.log_p[s], trace.log_prob_sum(), rtol=1e-12, atol=1e-12)
    mean = (X * draws.posterior["w"][:, None, None, :]).sum(-1) + draws.posterior["offset"][
        ..., None
    ]
    torch.testing.assert_close(draws.posterior["mean"], mean, rtol=1e-12, atol=1e-12)


def test_subsampled_and_full_batch_runs_agree_exactly_at_a_point_mass():
    # AutoDelta draws the same point every time, so both runs see identical latents: their
    # log-likelihoods and log p must be equal, not merely close in distribution.
    guide = AutoDelta(model)
    guide(X, Y)
    full = draw(model, guide, (X, Y), {}, 3)
    mini = draw(model, guide, (X, Y, 4), {}, 3)
    torch.testing.assert_close(
        mini.log_likelihood["y"], full.log_likelihood["y"], rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(mini.log_p, full.log_p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        mini.posterior["mean"], full.posterior["mean"], rtol=1e-12, atol=1e-12
    )
    assert torch.equal(mini.log_q, torch.zeros(3, dtype=D))  # a Delta's density at its point


def test_log_q_is_the_guides_density_of_its_draws():
    guide = AutoNormal(model)
    guide(X, Y)
    draws = draw(model, guide, (X, Y), {}, 4)
    expected = 0.0
    # log q of AutoNormal: a Normal per site in unconstrained space, minus the log-Jacobian.
    for name, value in (("sigma", draws.posterior["sigma"]), ("w", draws.posterior["w"]),
                        ("offset", draws.posterior["offset"])):  # fmt: skip
        support = guide.prototype_trace.nodes[name]["fn"].support
        transform = torch.distributions.biject_to(support)
        raw = transform.inv(value)
        loc = getattr(guide.locs, name).detach().reshape(raw.shape[1:])
        scale = getattr(guide.scales, name).detach().reshape(raw.shape[1:])
        log_q = dist.Normal(loc, scale).log_prob(raw).reshape(4, -1).sum(-1)
        jacobian = transform.log_abs_det_jacobian(raw, value).reshape(4, -1).sum(-1)
        expected = expected + log_q - jacobian
    torch.testing.assert_close(draws.log_q, expected, rtol=1e-10, atol=1e-10)


def test_latents_local_to_a_subsampled_plate_and_two_subsampled_plates_are_refused():
    def local(y):
        with pyro.plate("data", len(y), subsample_size=2) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])

    def guide(y):
        with pyro.plate("data", len(y), subsample_size=2):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"latent site 'z' is local to the subsampled plate"):
        draw(local, guide, (torch.zeros(5),), {}, 3)

    def two(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", 4, subsample_size=2, dim=-2) as i:
            with pyro.plate("cols", 3, subsample_size=2, dim=-1) as j:
                pyro.sample("y", dist.Normal(mu, 1.0), obs=y[i][:, j])

    with pytest.raises(ValueError, match=r"more than one subsampled plate: \['cols', 'rows'\]"):
        draw(two, AutoNormal(two), (torch.zeros(4, 3),), {}, 3)
