"""SGLD as a sampler: its draws against exact posteriors within Monte Carlo error (tolerances from
the draws' effective sample size), minibatches through Pyro's plates, Pyro's and ArviZ's
interfaces, and the errors that name what is wrong."""

import functools
import math

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from pyro.infer.autoguide.initialization import init_to_value
from pyro.ops.stats import effective_sample_size

from pyro_blr.samplers import SGLD, RobbinsMonro, as_schedule, langevin_step
from pyro_blr.samplers.schedules import checked_step

N, NOISE, PRIOR = 100, 1.0, 1.0
GEN = torch.Generator().manual_seed(1)
Y = 0.7 + NOISE * torch.randn(N, generator=GEN, dtype=torch.float64)
PRECISION = 1 / PRIOR**2 + N / NOISE**2  # h = 101
POST_MEAN = float(Y.sum()) / NOISE**2 / PRECISION
POST_VAR = 1 / PRECISION
# beta_0 h = 0.2 for a fast burn-in (sum of beta h over it ~ 16), then beta_t h falls from 0.025
# to 0.0125 over the kept draws: the discretization bias of the variance, beta h / 2 < 1.3%, and
# that of the minibatch gradient noise, beta h N (1 - B/N) / (2 B) < 1.3% with B = N/2, stay far
# inside the 4-sigma Monte Carlo tolerances below (~14% of the variance at ESS ~ 1600).
SCHEDULE = RobbinsMonro.from_first(0.2 / PRECISION, b=20.0, gamma=0.75)
CHAINS, WARMUP, DRAWS = 400, 300, 500


def normal_model(y, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), PRIOR))
    with pyro.plate("data", len(y), subsample_size=subsample_size) as idx:
        pyro.sample("y", dist.Normal(mu, NOISE), obs=y[idx])


@functools.cache
def run_normal(subsample_size=None, seed=0):
    pyro.set_rng_seed(seed)
    sgld = SGLD(normal_model, SCHEDULE, num_samples=DRAWS, warmup_steps=WARMUP, num_chains=CHAINS)
    sgld.run(Y, subsample_size)
    return sgld


def moments_and_errors(sgld):
    """Mean and variance of the draws, and their 1-sigma Monte Carlo errors from the ESS (of mu
    for the mean; of (mu - mean)^2 for the variance)."""
    draws = sgld.get_samples(group_by_chain=True)["mu"]
    mean, var = float(draws.mean()), float(draws.var())
    ess_mean = float(effective_sample_size(draws, chain_dim=0, sample_dim=1))
    squares = (draws - mean).square()
    ess_var = float(effective_sample_size(squares, chain_dim=0, sample_dim=1))
    return mean, var, math.sqrt(var / ess_mean), float(squares.std()) / math.sqrt(ess_var)


def test_draws_match_the_conjugate_posterior_within_mc_error():
    sgld = run_normal()
    mean, var, mean_err, var_err = moments_and_errors(sgld)
    assert float(effective_sample_size(sgld.get_samples(group_by_chain=True)["mu"])) > 500
    # 4 Monte Carlo standard errors: a false failure about once in 16,000 runs
    assert abs(mean - POST_MEAN) < 4 * mean_err
    assert abs(var - POST_VAR) < 4 * var_err
    assert var_err < 0.1 * POST_VAR  # the check has power: 4 sigma < 40% of the variance


def test_a_subsampled_plate_gives_the_full_batch_answer_within_mc_error():
    full, sub = run_normal(), run_normal(subsample_size=N // 2)
    m_full, v_full, me_full, ve_full = moments_and_errors(full)
    m_sub, v_sub, me_sub, ve_sub = moments_and_errors(sub)
    # independent runs: the errors of the difference add in quadrature; 4 sigma each
    assert abs(m_sub - m_full) < 4 * math.hypot(me_full, me_sub)
    assert abs(v_sub - v_full) < 4 * math.hypot(ve_full, ve_sub)
    assert abs(v_sub - POST_VAR) < 4 * ve_sub and abs(m_sub - POST_MEAN) < 4 * me_sub


def test_minibatches_are_drawn_from_the_plate_and_scaled_by_n_over_b():
    # Equal data make every datum's gradient the same, so a minibatch's estimate is exact only if
    # it is scaled by N/B: with B = 10 of N = 100 the drift is the full data's. At a negligible
    # temperature the chains follow mu_t = (1 - beta h)^t mu_0 with h = 1/PRIOR^2 + N/NOISE^2.
    y, beta = torch.zeros(N, dtype=torch.float64), 0.001
    exact = (1 - beta * PRECISION) ** torch.arange(5, dtype=torch.float64)
    for size in (None, 10):
        sgld = SGLD(normal_model, beta, num_samples=5, num_chains=2, temperature=1e-300,
                    init_loc_fn=init_to_value(values={"mu": torch.tensor(1.0)}))  # fmt: skip
        sgld.run(y, size)
        draws = sgld.get_samples(group_by_chain=True)["mu"]
        assert torch.allclose(draws, exact.expand(2, 5), rtol=1e-12), size


def test_constrained_draws_match_a_gamma_posterior():
    counts = torch.tensor([3.0, 5, 2, 4, 6, 3], dtype=torch.float64)
    shape, rate = 2.0 + float(counts.sum()), 0.5 + len(counts)  # Gamma(25, 6.5)

    def model(counts):
        lam = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=counts.dtype), 0.5))
        with pyro.plate("counts", len(counts)):
            pyro.sample("count", dist.Poisson(lam), obs=counts)

    pyro.set_rng_seed(0)
    # in log-rate coordinates the posterior precision is about shape = 25
    sgld = SGLD(model, RobbinsMonro.from_first(0.008, b=20.0, gamma=0.75), num_samples=DRAWS,
                warmup_steps=WARMUP, num_chains=CHAINS)  # fmt: skip
    sgld.run(counts)
    draws = sgld.get_samples(group_by_chain=True)["rate"]
    assert (draws > 0).all()
    ess = float(effective_sample_size(draws, chain_dim=0, sample_dim=1))
    exact_mean, exact_sd = shape / rate, math.sqrt(shape) / rate
    assert abs(float(draws.mean()) - exact_mean) < 4 * exact_sd / math.sqrt(ess)


def test_draws_work_with_predictive_and_arviz_diagnostics():
    X = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    y = X @ torch.tensor([1.0, -1.0]) + 0.3 * torch.randn(30, generator=torch.Generator())

    def model(X, y=None):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("groups", 3):
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(X)):
            pyro.sample("y", dist.Normal(X @ w + b.sum(), 0.3), obs=y)

    pyro.set_rng_seed(0)
    sgld = SGLD(model, 1e-3, num_samples=50, warmup_steps=20, thin=2, num_chains=3)
    sgld.run(X, y)
    samples = sgld.get_samples()
    assert samples["w"].shape == (150, 2) and samples["b"].shape == (150, 3)
    assert sgld.get_samples(group_by_chain=True)["w"].shape == (3, 50, 2)
    assert sgld.get_samples(num_samples=7)["w"].shape == (7, 2)
    predicted = Predictive(model, posterior_samples=samples)(X)
    assert predicted["y"].shape == (150, 30)
    idata = sgld.to_inference_data()
    assert idata.posterior["w"].dims == ("chain", "draw", "w_dim_0")
    assert idata.posterior["b"].dims == ("chain", "draw", "groups")
    assert idata.sample_stats["lp"].shape == (3, 50)
    rhat, ess = az.rhat(idata), az.ess(idata)
    assert rhat["w"].shape == (2,) and bool((ess["b"] > 0).all())
    diagnostics = sgld.diagnostics()
    assert set(diagnostics) == {"w", "b"} and diagnostics["w"]["r_hat"].shape == (2,)
    assert sgld.get_sample_stats()["step_size"].eq(1e-3).all()
    assert samples["w"].dtype == torch.float32  # float32 data: float32 draws


def test_thinning_and_burn_in_count_steps():
    pyro.set_rng_seed(0)
    seen = []

    def schedule(t):
        seen.append(t)
        return 1e-3

    sgld = SGLD(normal_model, schedule, num_samples=4, warmup_steps=3, thin=2, num_chains=2)
    sgld.run(Y)
    assert sgld.num_steps == 11 and seen == list(range(11))
    assert sgld.get_sample_stats()["lp"].shape == (2, 4)


@pytest.mark.parametrize("gamma", [0.5, 0.3, 1.01, float("nan")])
def test_robbins_monro_refuses_a_decay_outside_the_conditions(gamma):
    with pytest.raises(ValueError, match=r"gamma must lie in \(0.5, 1\]"):
        RobbinsMonro(1.0, 1.0, gamma)


def test_robbins_monro_schedule_and_step_checks():
    schedule = RobbinsMonro(a=2.0, b=3.0, gamma=1.0)
    assert schedule(1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="b must be positive"):
        RobbinsMonro(1.0, 0.0, 0.6)
    with pytest.raises(ValueError, match="step_size must be positive"):
        as_schedule(-1.0)
    with pytest.raises(ValueError, match=r"returned -0\.1 at step 4"):
        checked_step(lambda t: -0.1, 4)
    noise = torch.tensor([[1.0]])
    assert float(langevin_step(torch.zeros(1, 1), torch.ones(1, 1), 0.5, noise)) == 0.5


def test_a_latent_local_to_a_subsampled_plate_is_refused_by_name():
    def model(y):
        with pyro.plate("data", len(y), subsample_size=10) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])

    with pytest.raises(ValueError, match="latent site 'z' is local to the subsampled plate"):
        SGLD(model, 1e-3, num_samples=2).run(torch.zeros(50))


def test_diverging_chains_name_the_site_and_the_fix():
    pyro.set_rng_seed(0)
    sgld = SGLD(normal_model, 1.0, num_samples=200, num_chains=2)  # beta h = 101: explodes
    with pytest.raises(ValueError, match=r"SGLD: at step .* site .*lower step_size"):
        sgld.run(Y)


def test_options_are_checked_and_samples_need_a_run():
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        SGLD(normal_model, 1e-3, num_samples=0)
    with pytest.raises(ValueError, match="thin must be"):
        SGLD(normal_model, 1e-3, num_samples=2, thin=0)
    with pytest.raises(RuntimeError, match="call run"):
        SGLD(normal_model, 1e-3, num_samples=2).get_samples()
