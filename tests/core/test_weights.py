"""Log importance weights against hand computations and Pyro's own Trace_ELBO: joint weights,
N/B scaling under subsampling, and per-element weights of local latents."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_blr.core import PARTICLE_PLATE, log_weights, replay_particles
from tests.scenarios import linear_regression, normal_normal

D = torch.float64


def recording_guide(loc, scale, drawn):
    """q(mu) = N(loc, scale^2); every draw is appended to ``drawn``."""

    def guide(y):
        drawn.append(pyro.sample("mu", dist.Normal(torch.tensor(loc, dtype=D), scale)))

    return guide


def test_joint_weights_match_a_hand_computation():
    s = normal_normal()
    drawn = []
    weights = log_weights(s.model, recording_guide(0.3, 0.7, drawn), (s.y,), {}, 5, 1)
    mu = drawn[0].reshape(5)  # drawn inside the particle plate: (5, 1)
    prior = dist.Normal(torch.tensor(0.0, dtype=D), s.prior_scale).log_prob(mu)
    likelihood = dist.Normal(mu[:, None], s.noise).log_prob(s.y).sum(-1)
    guide = dist.Normal(torch.tensor(0.3, dtype=D), 0.7).log_prob(mu)
    torch.testing.assert_close(weights.joint, prior + likelihood - guide, rtol=1e-12, atol=1e-12)
    # mu is shared by all data: no per-element split, and mu is named as the reason.
    assert weights.local is None and weights.outside == ("mu",) and weights.subsampled == ()


def test_weights_at_the_exact_posterior_are_the_exact_log_evidence():
    # p(D, mu) / q(mu) = Z for every mu when q is the posterior: no Monte Carlo error at all.
    s = normal_normal()
    guide = recording_guide(s.posterior_mean, s.posterior_scale, [])
    weights = log_weights(s.model, guide, (s.y,), {}, 7, 1)
    expected = torch.full((7,), s.log_evidence, dtype=D)
    torch.testing.assert_close(weights.joint, expected, rtol=0, atol=1e-10)


def test_mean_weight_is_pyros_trace_elbo_on_the_same_draws():
    s = linear_regression()
    guide = AutoNormal(s.model, init_scale=0.3)
    guide(s.X, s.y)
    pyro.set_rng_seed(4)
    weights = log_weights(s.model, guide, (s.X, s.y), {}, 11, 1)
    pyro.set_rng_seed(4)
    elbo = Trace_ELBO(num_particles=11, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.loss(s.model, guide, s.X, s.y)
    assert -float(weights.joint.detach().mean()) == pytest.approx(loss, rel=1e-12)


def test_a_subsampled_plate_scales_the_likelihood_by_n_over_b():
    # A global latent under subsampling: the joint weight is prior + N/B * minibatch likelihood
    # - log q, and no per-element split exists (mu is shared by all data).
    y = torch.linspace(-1, 2, 10, dtype=D)
    drawn, indices = [], []

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=D), 1.0))
        with pyro.plate("data", 10, subsample_size=4) as idx:
            indices.append(idx)
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    weights = log_weights(model, recording_guide(0.2, 0.5, drawn), (y,), {}, 6, 1)
    mu, idx = drawn[0].reshape(6), indices[0]
    expected = (
        dist.Normal(torch.tensor(0.0, dtype=D), 1.0).log_prob(mu)
        + 10 / 4 * dist.Normal(mu[:, None], 1.0).log_prob(y[idx]).sum(-1)
        - dist.Normal(torch.tensor(0.2, dtype=D), 0.5).log_prob(mu)
    )
    torch.testing.assert_close(weights.joint, expected, rtol=1e-12, atol=1e-12)
    assert weights.local is None
    assert weights.subsampled == ("data",) and weights.outside == ("mu",)


def test_local_latents_give_per_element_weights_with_the_scale_taken_out():
    x = torch.linspace(-2, 2, 10, dtype=D)
    drawn, indices = [], []

    def model(x):
        with pyro.plate("data", 10, subsample_size=4) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=D), 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])

    def guide(x):
        with pyro.plate("data", 10, subsample_size=4) as idx:
            indices.append(idx)
            drawn.append(pyro.sample("z", dist.Normal(0.5 * x[idx], 0.8)))

    weights = log_weights(model, guide, (x,), {}, 3, 1)
    z, idx = drawn[0], indices[0]  # z: (3, 4)
    local = (
        dist.Normal(torch.zeros((), dtype=D), 1.0).log_prob(z)
        + dist.Normal(z, 0.5).log_prob(x[idx])
        - dist.Normal(0.5 * x[idx], 0.8).log_prob(z)
    )
    assert weights.local.shape == (3, 4) and weights.local_scale == 10 / 4
    torch.testing.assert_close(weights.local, local, rtol=1e-12, atol=1e-12)
    # The joint weight is the scaled sum of the per-element ones, as Pyro scales it.
    torch.testing.assert_close(weights.joint, 10 / 4 * local.sum(-1), rtol=1e-12, atol=1e-12)
    assert weights.subsampled == ("data",) and weights.outside == ()


def test_a_guide_site_without_rsample_is_refused_unless_allowed():
    s = normal_normal()

    def guide(y):
        pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=D), 1.0).has_rsample_(False))

    with pytest.raises(ValueError, match=r"guide site 'mu' .*cannot be reparameterized"):
        log_weights(s.model, guide, (s.y,), {}, 4, 1)
    weights = log_weights(s.model, guide, (s.y,), {}, 4, 1, require_rsample=False)
    assert weights.joint.shape == (4,) and torch.isfinite(weights.joint).all()


def test_a_model_written_for_a_particle_plate_is_weighed_like_its_runs():
    # w.reshape(-1, 2, 3) as Pyro's sparse gamma DEF writes it: run alone, the model's log
    # densities keep a leading singleton left of its plates, which the per-particle reference
    # runs stacked as a batch dimension ("a log density has batch shape (3, 1) left of the
    # model's 1 plate dimensions"). Each run's is its own joint: checked by hand, 1e-12.
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(4, 2, generator=gen, dtype=D)
    y = torch.randn(4, 3, generator=gen, dtype=D)
    drawn = []

    def model(y):
        with pyro.plate("w_plate", 6):
            w = pyro.sample("w", dist.Normal(torch.zeros((), dtype=D), 1.0))
        with pyro.plate("data", 4):
            mean = torch.matmul(X, w.reshape(-1, 2, 3))
            pyro.sample("y", dist.Normal(mean, 1.0).to_event(1), obs=y)

    def guide(y):
        with pyro.plate("w_plate", 6):
            drawn.append(pyro.sample("w", dist.Normal(torch.full((), 0.2, dtype=D), 0.5)))

    weights = log_weights(model, guide, (y,), {}, 5, 1)
    w = drawn[0].reshape(5, 6)
    zero = torch.zeros((), dtype=D)
    prior = dist.Normal(zero, 1.0).log_prob(w).sum(-1)
    mean = X @ w.reshape(5, 2, 3)
    likelihood = dist.Normal(mean, 1.0).log_prob(y).sum((-2, -1))
    guide_density = dist.Normal(zero + 0.2, 0.5).log_prob(w).sum(-1)
    expected = prior + likelihood - guide_density
    torch.testing.assert_close(weights.joint, expected, rtol=1e-12, atol=1e-12)


def test_a_sequential_subsampled_plate_is_seen_and_scales_by_n_over_b():
    # for i in pyro.plate(..., subsample_size=B): frames with vectorized=False. The plate is
    # named among the subsampled ones (it was missed: subsampled == ()), marked sequential, and
    # no per-element split is offered; the joint is prior + N/B * minibatch likelihood - log q.
    y = torch.linspace(-1, 2, 10, dtype=D)
    drawn, indices = [], []

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=D), 1.0))
        indices.append([])
        for i in pyro.plate("data", 10, subsample_size=4):
            indices[-1].append(i)
            pyro.sample(f"y_{i}", dist.Normal(mu, 1.0), obs=y[i])

    weights = log_weights(model, recording_guide(0.2, 0.5, drawn), (y,), {}, 6, 1)
    mu, idx = drawn[0].reshape(6), torch.tensor(indices[0])
    expected = (
        dist.Normal(torch.tensor(0.0, dtype=D), 1.0).log_prob(mu)
        + 10 / 4 * dist.Normal(mu[:, None], 1.0).log_prob(y[idx]).sum(-1)
        - dist.Normal(torch.tensor(0.2, dtype=D), 0.5).log_prob(mu)
    )
    torch.testing.assert_close(weights.joint, expected, rtol=1e-12, atol=1e-12)
    assert weights.local is None
    assert weights.subsampled == ("data",) and weights.sequential == ("data",)
    assert weights.outside == ("mu",)


def test_no_split_over_a_full_plate_while_another_plate_is_subsampled():
    # Every site lies in the full plate "cols", the data plate inside it is subsampled: a
    # per-column bound would put the N/B-scaled minibatch inside a log-mean-exp (biased for
    # alpha != 1). It used to split over "cols" anyway (local_scale 1).
    y = torch.linspace(-1, 2, 20, dtype=D).reshape(10, 2)

    def model(y):
        with pyro.plate("cols", 2, dim=-1):
            mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=D), 1.0))
            with pyro.plate("data", 10, subsample_size=4, dim=-2) as idx:
                pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    def guide(y):
        with pyro.plate("cols", 2, dim=-1):
            pyro.sample("mu", dist.Normal(torch.zeros((), dtype=D), 0.5))

    weights = log_weights(model, guide, (y,), {}, 3, 2)
    assert weights.local is None
    assert weights.subsampled == ("data",) and weights.outside == ("mu",)


def test_local_latents_of_a_sequential_plate_get_no_per_element_split():
    # Their sites share no batch dimension: no split, and no latent is outside the plate (the
    # refusal is about the plate's form, not a global latent). It used to report no
    # subsampled plate at all.
    x = torch.linspace(-2, 2, 10, dtype=D)

    def model(x):
        for i in pyro.plate("data", 10, subsample_size=4):
            z = pyro.sample(f"z_{i}", dist.Normal(torch.zeros((), dtype=D), 1.0))
            pyro.sample(f"x_{i}", dist.Normal(z, 0.5), obs=x[i])

    def guide(x):
        for i in pyro.plate("data", 10, subsample_size=4):
            pyro.sample(f"z_{i}", dist.Normal(0.5 * x[i], 0.8))

    weights = log_weights(model, guide, (x,), {}, 3, 1)
    assert weights.local is None and weights.outside == ()
    assert weights.subsampled == ("data",) and weights.sequential == ("data",)


def one_datum_one_feature():
    """``y ~ N(X @ w, 1)``, ``w ~ N(0, 1)``, one datum and one feature: inside the particle
    plate ``X @ w`` is ``(K, 1, 1)``, so the likelihood's batch broadcasts to ``(K, K, 1)``."""
    X = torch.tensor([[0.8]], dtype=D)
    y = torch.tensor([1.3], dtype=D)

    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(1), 1.0).to_event(1))
        with pyro.plate("data", 1):
            pyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)

    precision = 1.0 + X[0, 0] ** 2  # the exact posterior of w and the exact log evidence
    mean, scale = X[0, 0] * y[0] / precision, precision**-0.5
    log_evidence = dist.Normal(torch.zeros((), dtype=D), (1.0 + X[0, 0] ** 2) ** 0.5).log_prob(y[0])
    return model, (X, y), mean, scale, log_evidence


def test_x_at_w_with_one_datum_and_one_feature_is_weighed_not_refused():
    # The plate run ran but its likelihood had batch (K, K, 1): every weight was refused ("a log
    # density has batch shape (K, K) left of the model's 1 plate dimensions"). Particles are
    # replayed one by one instead; at the exact posterior each weight is log Z exactly (1e-10).
    model, args, mean, scale, log_evidence = one_datum_one_feature()

    def guide(X, y):
        pyro.sample("w", dist.Normal(mean.reshape(1), scale).to_event(1))

    weights = log_weights(model, guide, args, {}, 7, 1)
    torch.testing.assert_close(weights.joint, log_evidence.expand(7), rtol=0, atol=1e-10)


def test_a_plate_run_with_a_wrong_shape_falls_back_and_a_broadcasting_one_keeps_the_plate():
    # The probe compares every site's log density, shape and values, with three per-particle
    # runs: X @ w (1 x 1) goes to the loop, its broadcasting form (X * w).sum(-1) keeps the plate.
    model, args, mean, scale, _ = one_datum_one_feature()

    def broadcasting(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(1), 1.0).to_event(1))
        with pyro.plate("data", 1):
            pyro.sample("y", dist.Normal((X * w).sum(-1), 1.0), obs=y)

    def guide(X, y):
        pyro.sample("w", dist.Normal(mean.reshape(1), scale).to_event(1))

    with pyro.plate(PARTICLE_PLATE, 5, dim=-2):
        guide_trace = pyro.poutine.trace(guide).get_trace(*args)
    loop_trace, mode = replay_particles(model, guide_trace, args, {}, 5, 1)
    plate_trace, plate_mode = replay_particles(broadcasting, guide_trace, args, {}, 5, 1)
    assert (mode, plate_mode) == ("loop", "plate")
    # Both score each particle's datum alike (same model, two spellings), 1e-12.
    found, expected = loop_trace.nodes["y"], plate_trace.nodes["y"]
    torch.testing.assert_close(
        found["fn"].log_prob(found["value"]),
        expected["fn"].log_prob(expected["value"]),
        rtol=1e-12,
        atol=1e-12,
    )
