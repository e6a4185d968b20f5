"""Pyro's Gaussian-mixture tutorial model, copied unchanged, fitted by the BLR with its
enumerated assignment summed out, against NUTS with enumeration on the same model.

The posterior of the tutorial's five points has two regimes: two clusters, each component
explaining one (the scale near the clusters' spread, about 1), and one component explaining all
five (the scale near 5, the other component's location drawn from its prior), which holds about
14% of the mass (by quadrature, :func:`test_quadrature_sees_two_regimes`: 86% has scale < 3,
and the means of the sorted locations given scale < 1, 2 or 3 agree to 0.04 = 0.05 sd).
A Gaussian guide describes the first regime. NUTS's draws are compared on it: their locations
sorted (label switching: NUTS's chain swaps the components through the second regime), and
kept where scale < 3.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, config_enumerate
from pyro.infer.autoguide import AutoMultivariateNormal
from torch.distributions import biject_to

import pyro_blr as pb
from pyro_blr.core import GaussianGuide, latent_layout

# Copied unchanged from https://pyro.ai/examples/gmm.html ("Gaussian Mixture Model").
data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])

K = 2  # Fixed number of components.


@config_enumerate
def model(data):
    # Global variables.
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))

    with pyro.plate("data", len(data)):
        # Local variables.
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


# End of the copy.


def init_loc_fn(site):
    """The tutorial's initialization, with its two data points for the locations chosen one
    from each cluster (the tutorial draws them, and keeps the best of 100 seeds)."""
    if site["name"] == "weights":
        return torch.ones(K) / K
    if site["name"] == "scale":
        return (data.var() / 2).sqrt()
    if site["name"] == "locs":
        return data[torch.tensor([0, len(data) - 1])]
    raise ValueError(site["name"])


def blr_fit(rule, steps):
    """The guide's mean and precision after a BLR fit (weights, scale, locs unconstrained)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    exposed = poutine.block(model, expose=["weights", "locs", "scale"])
    guide = AutoMultivariateNormal(exposed, init_loc_fn=init_loc_fn)
    pb.BLR(model, guide, rule).fit(data, num_steps=steps, progress=False)
    loc, precision = GaussianGuide(guide, latent_layout(guide.prototype_trace)).read()
    return loc.detach(), precision.detach()


def blr_locs(rule, steps):
    """The guide's mean of the locations after a BLR fit, sorted."""
    return blr_fit(rule, steps)[0][-K:].sort().values  # the last site, real-valued


def hand_summed(u):
    """The tutorial's log joint in the guide's coordinates, the assignment summed out by hand:
    :math:`\\sum_i \\log \\sum_k w_k \\mathcal N(x_i; \\mu_k, \\sigma)`, plus the priors and
    the log-Jacobians of ``biject_to`` (as Pyro's autoguides map the sites)."""
    to_simplex = biject_to(dist.Dirichlet(torch.ones(K)).support)
    weights, scale, locs = to_simplex(u[:1]), u[1].exp(), u[2:]
    log_det = to_simplex.log_abs_det_jacobian(u[:1], weights) + u[1]
    prior = dist.Dirichlet(0.5 * torch.ones(K)).log_prob(weights)
    prior = prior + dist.LogNormal(0.0, 2.0).log_prob(scale)
    prior = prior + dist.Normal(0.0, 10.0).log_prob(locs).sum()
    terms = weights.log() + dist.Normal(locs, scale).log_prob(data[:, None])
    return prior + torch.logsumexp(terms, -1).sum() + log_det


def test_newton_on_the_tutorial_model_lands_on_the_mode_of_the_hand_summed_model():
    # Newton's fixed point: zero gradient of the marginal log joint at the mean, the Hessian
    # there as precision. float32 model: 1e-3 of unit-scale gradients and Hessians is round-off.
    # (lr=1 from this start overshoots the scale to 0 in float32 at the first step, and the
    # model's validation error ends the fit, with or without enumeration.)
    loc, precision = blr_fit(pb.Newton(lr=0.5), 40)
    neg = lambda u: -hand_summed(u)  # noqa: E731
    grad = torch.autograd.functional.jacobian(neg, loc)
    assert grad.abs().max() < 1e-3
    hessian = torch.autograd.functional.hessian(neg, loc)
    torch.testing.assert_close(precision, hessian, rtol=1e-3, atol=1e-3)


def nuts_locs(num_samples, warmup_steps, num_batches=10):
    """NUTS's sorted locations on the first regime (scale < 3): their mean, sd, and the Monte
    Carlo standard error of the mean by batch means over ``num_batches`` stretches of the
    chain (Flegal and Jones 2010)."""
    pyro.set_rng_seed(0)
    kernel = NUTS(model, max_plate_nesting=1, jit_compile=True, ignore_jit_warnings=True)
    mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=True)
    mcmc.run(data)
    draws = mcmc.get_samples()
    locs = draws["locs"].sort(-1).values.double()
    kept = draws["scale"] < 3.0
    mean = locs[kept].mean(0)
    batches = torch.stack(
        [
            chunk[keep].mean(0)
            for chunk, keep in zip(locs.chunk(num_batches), kept.chunk(num_batches), strict=True)
        ]
    )
    stderr = batches.std(0) / num_batches**0.5
    return mean, locs[kept].std(0), stderr, float(kept.double().mean())


@pytest.mark.slow
def test_the_blr_reaches_the_component_means_nuts_gives():
    # 2000 draws after 1000 warmup: 265 s on a shared two-core machine at load 8 (the whole
    # test 500 s); the batch-means error came out 0.03 and 0.02 sd.
    mean, sd, stderr, kept = nuts_locs(num_samples=2000, warmup_steps=1000)
    assert 0.75 < kept < 0.95  # the first regime holds 86% of the mass (quadrature)
    # The claim: the BLR's mean is within 0.1 posterior sd of the posterior mean. NUTS's mean
    # is off it by its Monte Carlo error, so the comparison allows 3 standard errors more (a
    # failure rate below 0.3% when the claim holds).
    tolerance = 0.1 * sd + 3 * stderr
    assert (stderr < 0.1 * sd).all()  # enough draws for the comparison to mean something
    # VON's step decays as 6/t after 20 steps: the iterate's Monte Carlo noise (0.1 sd at a
    # constant 0.2) falls below 0.04 sd (three seeds measured).
    von = pb.VON(lr=lambda t: min(0.3, 6.0 / (t + 1)), mc_samples=8)
    for rule, steps in [(pb.Newton(lr=0.5), 40), (von, 150)]:
        found = blr_locs(rule, steps).double()
        assert ((found - mean).abs() < tolerance).all(), (type(rule).__name__, found, mean, sd)


def quadrature(max_scale):
    """The posterior mass with scale < ``max_scale`` and the mean and sd of the sorted locations
    there, by the rectangle rule on a 57 x 71 x 201 x 201 grid of the unconstrained latents
    (logit weight, log scale, two locations; spacing 0.5 in the locations, about their smallest
    posterior sd, where the rule on a smooth peak is still exact to far below the figures'
    tolerances: 401 points give the same verdicts), with the hand-summed log joint and its
    log-Jacobian, in float64. About 2 minutes on one busy core."""
    f64 = torch.float64
    x = data.to(f64)
    logits = torch.linspace(-14, 14, 57, dtype=f64)
    log_scales = torch.linspace(-3, 4, 71, dtype=f64)[:, None, None]
    grid = torch.linspace(-50, 50, 201, dtype=f64)
    first, second = grid[:, None], grid[None, :]
    low, high = torch.minimum(first, second), torch.maximum(first, second)
    prior_locs = dist.Normal(0.0, 10.0).log_prob(first) + dist.Normal(0.0, 10.0).log_prob(second)
    scale = log_scales.exp()
    kept = (scale < max_scale).to(f64)
    log_p_scale = dist.LogNormal(0.0, 2.0).log_prob(scale) + log_scales
    moments, shifts = [], []
    for a in logits:
        w = torch.sigmoid(a)
        log_p_w = dist.Beta(0.5, 0.5).log_prob(w) + w.log() + (-w).log1p()  # K=2 Dirichlet
        log_p = log_p_w + log_p_scale + prior_locs
        for xi in x:
            near = dist.Normal(first, scale).log_prob(xi) + w.log()
            far = dist.Normal(second, scale).log_prob(xi) + (-w).log1p()
            log_p = log_p + torch.logaddexp(near, far)
        shift = log_p.max()
        p = (log_p - shift).exp()
        moments.append(
            torch.stack(
                [p.sum(), (kept * p).sum()]
                + [(kept * p * v).sum() for v in (low, high, low**2, high**2)]
            )
        )
        shifts.append(shift)
    weights = (torch.stack(shifts) - max(shifts)).exp()[:, None]
    total, mass, m1, m2, s1, s2 = (torch.stack(moments) * weights).sum(0)
    means = torch.stack([m1, m2]) / mass
    sds = (torch.stack([s1, s2]) / mass - means**2).sqrt()
    return float(mass / total), means, sds


@pytest.mark.slow
def test_quadrature_sees_two_regimes():
    # The figures the module docstring quotes (a deterministic sum: no Monte Carlo error).
    fractions, all_means = [], []
    for max_scale in (1.0, 2.0, 3.0, 1e9):
        fraction, means, sds = quadrature(max_scale)
        fractions.append(fraction)
        all_means.append(means)
    assert abs(fractions[2] - 0.86) < 0.01 and fractions[3] == pytest.approx(1.0)
    regime = torch.stack(all_means[:3])
    assert (regime.max(0).values - regime.min(0).values).max() < 0.04
    # and the full posterior's means lie off them by more than 0.1 sd: the second regime
    assert ((all_means[2] - all_means[3]).abs() / sds).max() > 0.1
