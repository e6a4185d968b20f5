"""RenyiELBO against exact answers, Pyro's own objectives, and minibatch unbiasedness."""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.core import log_weights
from tests.scenarios import MIXTURE_DATA, linear_regression, mixture, mixture_guide

ALPHAS = [-math.inf, -1.0, 0.0, 0.5, 1.0, 2.0, math.inf]


def exact_guide(s):
    guide = AutoMultivariateNormal(s.model)
    pb.BLR(s.model, guide, pb.Newton(lr=1.0)).step(s.X, s.y)
    return guide


def offset_guide(s):
    guide = exact_guide(s)
    with torch.no_grad():
        guide.loc.add_(0.3)
    return guide


@pytest.mark.parametrize("alpha", ALPHAS)
def test_every_alpha_gives_log_evidence_with_zero_variance_at_the_posterior(alpha):
    s = linear_regression()
    guide = exact_guide(s)
    objective = pb.RenyiELBO(alpha, num_particles=7)
    losses = [objective.loss(s.model, guide, s.X, s.y) for _ in range(3)]
    for loss in losses:
        assert loss == pytest.approx(-s.log_evidence, abs=1e-8)


def test_bound_is_non_increasing_in_alpha_for_the_same_draws():
    # For fixed draws the estimate is a power mean of the weights, monotone in alpha exactly.
    s = linear_regression()
    guide = offset_guide(s)
    bounds = []
    for alpha in ALPHAS:
        pyro.set_rng_seed(3)
        bounds.append(-pb.RenyiELBO(alpha, num_particles=50).loss(s.model, guide, s.X, s.y))
    assert all(a >= b for a, b in itertools.pairwise(bounds))
    assert bounds[0] > bounds[-1] + 1.0  # q != p: the weights really differ


def test_alpha_one_matches_trace_elbo():
    s = linear_regression()
    guide = offset_guide(s)
    pyro.set_rng_seed(1)
    ours = pb.RenyiELBO(1.0, num_particles=20, max_plate_nesting=1)
    ours = ours.differentiable_loss(s.model, guide, s.X, s.y)
    ours_grad = torch.autograd.grad(ours, guide.loc)[0]
    pyro.set_rng_seed(1)
    elbo = Trace_ELBO(num_particles=20, vectorize_particles=True, max_plate_nesting=1)
    theirs = elbo.differentiable_loss(s.model, guide, s.X, s.y)
    theirs_grad = torch.autograd.grad(theirs, guide.loc)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_matches_pyro_renyi_elbo_on_full_data(alpha):
    s = linear_regression()
    guide = offset_guide(s)
    pyro.set_rng_seed(2)
    ours = pb.RenyiELBO(alpha, num_particles=16, max_plate_nesting=1)
    ours = ours.loss(s.model, guide, s.X, s.y)
    pyro.set_rng_seed(2)
    pyro_renyi = pyro.infer.RenyiELBO(
        alpha, num_particles=16, vectorize_particles=True, max_plate_nesting=1
    )
    assert ours == pytest.approx(pyro_renyi.loss(s.model, guide, s.X, s.y), rel=1e-10)


def local_model(x, subsample_size=None):
    with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


def test_minibatch_estimate_is_unbiased_for_local_latents():
    # Average over 3000 (minibatch, particle) draws of each estimate; they must agree within
    # four standard errors of the difference. Pyro's RenyiELBO differs by many.
    x = torch.linspace(-2, 2, 10, dtype=torch.float64)

    def plates(x, subsample_size=None):
        return pyro.plate("data", len(x), subsample_size=subsample_size)

    guide = AutoNormal(local_model, init_scale=0.3, create_plates=plates)
    guide(x)
    objective = pb.RenyiELBO(0.5, num_particles=4)
    full = torch.tensor([objective.loss(local_model, guide, x) for _ in range(3000)])
    mini = torch.tensor([objective.loss(local_model, guide, x, 5) for _ in range(3000)])
    stderr = (full.var() / 3000 + mini.var() / 3000).sqrt()
    assert abs(full.mean() - mini.mean()) < 4 * stderr
    pyro_renyi = pyro.infer.RenyiELBO(0.5, num_particles=4, vectorize_particles=True,
                                      max_plate_nesting=1)  # fmt: skip
    biased = torch.tensor([pyro_renyi.loss(local_model, guide, x, 5) for _ in range(3000)])
    assert abs(biased.mean() - full.mean()) > 8 * stderr


def test_global_latent_under_subsampling_is_refused():
    s = linear_regression(subsample_size=5)
    guide = AutoNormal(s.model)
    with pytest.raises(
        ValueError, match=r"plate \['data'\] is subsampled but latent site\(s\) \['w'\]"
    ):
        pb.RenyiELBO(0.5, num_particles=4).loss(s.model, guide, s.X, s.y)
    # alpha = 1 stays linear in the data terms: allowed.
    assert math.isfinite(pb.RenyiELBO(1.0, num_particles=4).loss(s.model, guide, s.X, s.y))


def test_svi_with_renyi_reaches_the_exact_posterior():
    # The Gaussian family contains the posterior, where every Renyi bound is maximal. With the
    # learning rate decayed to 1e-3 Adam's final mean lies within 0.2 posterior sds.
    s = linear_regression()
    guide = AutoMultivariateNormal(s.model)
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.998})
    svi = SVI(s.model, guide, optim, pb.RenyiELBO(0.5, num_particles=8))
    for _ in range(2000):
        svi.step(s.X, s.y)
    sd = s.posterior_covariance.diagonal().sqrt()
    assert ((guide.loc.detach() - s.posterior_mean).abs() / sd < 0.2).all()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"alpha": float("nan")}, "alpha must be a real number"),
        ({"alpha": torch.tensor(float("nan"))}, "alpha must be a real number"),
        ({"alpha": True}, "alpha must be a real number"),
        ({"alpha": torch.tensor([0.5, 1.0])}, "alpha must be a real number"),
        ({"alpha": "0.5"}, "alpha must be a real number"),
        ({"num_particles": True}, "num_particles must be a positive integer"),
        ({"num_particles": 0}, "num_particles must be a positive integer"),
        ({"alpha": 0.5, "vectorize_particles": False}, "needs vectorize_particles=True"),
    ],
)
def test_bad_arguments(options, message):
    with pytest.raises(ValueError, match=message):
        pb.RenyiELBO(**options)


@pytest.mark.parametrize(
    "alpha", [np.float64(0.5), np.float32(0.5), np.int64(2), torch.tensor(0.5), torch.tensor(2)]
)
def test_numpy_scalars_and_0d_tensors_are_accepted_as_alpha(alpha):
    objective = pb.RenyiELBO(alpha, num_particles=4)
    assert type(objective.alpha) is float and objective.alpha == float(alpha)


@pytest.mark.parametrize("alpha", [math.inf, -math.inf])
def test_infinite_alpha_is_the_smallest_or_largest_log_weight(alpha):
    s = linear_regression()
    guide = offset_guide(s)
    pyro.set_rng_seed(6)
    objective = pb.RenyiELBO(alpha, num_particles=16, max_plate_nesting=1)
    loss = objective.loss(s.model, guide, s.X, s.y)
    pyro.set_rng_seed(6)
    log_w = log_weights(s.model, guide, (s.X, s.y), {}, 16, 1).joint.detach()
    expected = log_w.min() if alpha > 0 else log_w.max()
    assert loss == pytest.approx(-float(expected), rel=1e-12)


def test_an_enumerated_site_hidden_from_the_guide_is_summed_out():
    # exactness against the hand-summed model: tests/evidence/test_enumeration.py
    loss = pb.RenyiELBO(0.5, num_particles=4).loss(mixture, mixture_guide(), MIXTURE_DATA)
    assert math.isfinite(loss)


def coin(data):
    """Pyro's SVI tutorial II coin: a global fairness, one site per flip in a sequential plate
    of minibatches of 5 (Pyro scales each flip's term by 10/5)."""
    f = pyro.sample("latent_fairness", dist.Beta(data.new_tensor(10.0), data.new_tensor(10.0)))
    for i in pyro.plate("data_loop", len(data), subsample_size=5):
        pyro.sample(f"obs_{i}", dist.Bernoulli(f), obs=data[i])


def test_global_latent_under_a_sequential_subsampled_plate_is_refused_by_name():
    # It used to return the biased bound of the minibatch's joint weight: the check saw only
    # vectorized plates.
    data = torch.tensor([1.0] * 6 + [0.0] * 4, dtype=torch.float64)
    guide = AutoNormal(coin)
    svi = SVI(coin, guide, pyro.optim.Adam({"lr": 0.01}), pb.RenyiELBO(0.5, num_particles=4))
    with pytest.raises(
        ValueError,
        match=r"plate \['data_loop'\] is subsampled but latent site\(s\) \['latent_fairness'\]",
    ):
        svi.step(data)
    # alpha = 1 stays linear in the data terms: allowed, as for a vectorized plate.
    assert math.isfinite(pb.RenyiELBO(1.0, num_particles=4).loss(coin, guide, data))


def test_local_latents_in_a_sequential_subsampled_plate_are_refused_by_name():
    # Every latent is local, but its sites share no batch dimension to split the bound over;
    # it used to return the bound of the minibatch's joint weight, biased for alpha != 1.
    # The minibatch is given (subsample=), as a data loader gives it.
    x = torch.linspace(-2, 2, 10, dtype=torch.float64)
    idx = torch.tensor([1, 4, 6, 9])

    def model(x, idx):
        for i in pyro.plate("data", len(x), subsample=idx):
            z = pyro.sample(f"z_{i}", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample(f"x_{i}", dist.Normal(z, 0.5), obs=x[i])

    def guide(x, idx):
        for i in pyro.plate("data", len(x), subsample=idx):
            pyro.sample(f"z_{i}", dist.Normal(0.5 * x[i], 0.8))

    with pytest.raises(ValueError, match=r"plate \['data'\] is sequential"):
        pb.RenyiELBO(0.5, num_particles=4).loss(model, guide, x, idx)


def test_a_hand_written_guide_of_a_sequential_plate_is_judged_on_its_own_minibatch():
    # The check for latents a guide misses runs the model's prior; drawing its own minibatch it
    # met z_i of data the guide's minibatch did not hold and blamed the guide for them.
    data = torch.randn(10)

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        for i in pyro.plate("d", 10, subsample_size=3):
            z = pyro.sample(f"z_{i}", dist.Normal(mu, 1.0))
            pyro.sample(f"y_{i}", dist.Normal(z, 1.0), obs=data[i])

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("mu", dist.Normal(loc, 1.0))
        for i in pyro.plate("d", 10, subsample_size=3):
            pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), pb.RenyiELBO(alpha=0.5))
    shared = r"plate \['d'\] is subsampled but latent site\(s\) \['mu'\]"
    with pytest.raises(ValueError, match=shared):
        svi.step(data)
