"""SVGD's particles as ArviZ draws: the exact posterior on a conjugate model, groups and shapes."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVGD, RBFSteinKernel
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal

import pyro_blr as pb
from pyro_blr.diagnostics.particle_proposal import particle_proposal
from pyro_blr.diagnostics.particles import particles_to_inference_data, svgd_particles
from pyro_blr.samplers import SVGD as CorrectedSVGD


def normal_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def regression(X, y):  # broadcasting, as pyro.infer.SVGD requires: (X * w).sum(-1), not X @ w
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        mean = pyro.deterministic("mean", (X * w).sum(-1))
        pyro.sample("y", dist.Normal(mean, sigma), obs=y)


def fit(model, args, num_particles, num_steps, lr=0.1, cls=CorrectedSVGD):
    pyro.clear_param_store()
    kernel = RBFSteinKernel()
    svgd = cls(model, kernel, pyro.optim.Adam({"lr": lr}), num_particles, 1, mode="multivariate")
    for _ in range(num_steps):
        svgd.step(*args)
    return svgd


def test_particles_approach_the_exact_posterior_of_a_conjugate_normal_model():
    pyro.set_rng_seed(0)
    y = torch.randn(10) + 1.0
    n = 50
    svgd = fit(normal_model, (y,), n, 150)
    idata = particles_to_inference_data(normal_model, svgd, y)
    mu = torch.as_tensor(idata.posterior["mu"].values).flatten().double()
    exact_mean, exact_var = float(y.sum()) / 11, 1 / 11
    # n iid draws would give the mean to one standard error sd/sqrt(n) (0.043 here) and the
    # variance to a relative sqrt(2/(n-1)) = 20%; SVGD's particles are a deterministic quadrature
    # that does better (its fixed point is about 4% low in variance at n = 50, the known
    # underestimation), so the tolerances are one iid standard error and half the iid variance
    # error.
    assert abs(float(mu.mean()) - exact_mean) < math.sqrt(exact_var / n)
    assert abs(float(mu.var()) / exact_var - 1) < 0.5 * math.sqrt(2 / (n - 1))


def test_inference_data_has_every_group_with_plate_dims():
    pyro.set_rng_seed(1)
    X = torch.randn(15, 2)
    y = (X * torch.tensor([1.0, -1.0])).sum(-1) + 0.5 * torch.randn(15)
    svgd = fit(regression, (X, y), 8, 5)
    idata = particles_to_inference_data(regression, svgd, X, y)
    # InferenceData.groups() (ArviZ 0.x) or DataTree.groups, paths from "/" (ArviZ 1.x)
    groups = idata.groups() if callable(idata.groups) else [g.strip("/") for g in idata.groups]
    assert set(groups) >= {
        "posterior",
        "log_likelihood",
        "posterior_predictive",
        "observed_data",
        "sample_stats",
    }
    post = idata.posterior
    assert post["w"].shape == (1, 8, 2) and post["sigma"].shape == (1, 8)
    assert post["mean"].dims == ("chain", "draw", "data") and post["mean"].shape == (1, 8, 15)
    assert idata.log_likelihood["y"].shape == (1, 8, 15)
    assert idata.posterior_predictive["y"].shape == (1, 8, 15)
    assert "log_q" not in idata.sample_stats  # particles have no density
    # the posterior is the particles themselves, constrained, in order
    particles = svgd_particles(regression, svgd, (X, y), {})
    assert torch.equal(torch.as_tensor(post["w"].values[0]), particles["w"])
    assert (post["sigma"].values > 0).all()
    # the pointwise log-likelihood is that of each particle
    w, sigma = particles["w"][3], particles["sigma"][3]
    expected = dist.Normal((X * w).sum(-1), sigma).log_prob(y)
    got = torch.as_tensor(idata.log_likelihood["y"].values[0, 3])
    assert torch.allclose(got, expected, atol=1e-5)
    # log_p is the log joint at each particle
    log_p = expected.sum() + dist.Normal(0.0, 1.0).log_prob(w).sum()
    log_p = log_p + dist.LogNormal(0.0, 1.0).log_prob(sigma)
    assert math.isclose(float(idata.sample_stats["log_p"].values[0, 3]), float(log_p), abs_tol=1e-4)


def test_refuses_a_model_whose_sites_are_not_the_particles():
    pyro.set_rng_seed(2)
    y = torch.randn(5)
    svgd = fit(normal_model, (y,), 4, 1)
    X = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"\['sigma', 'w'\] have no particles.*\['mu'\]"):
        particles_to_inference_data(regression, svgd, X, y)


def test_refuses_an_svgd_without_particles():
    pyro.clear_param_store()
    svgd = SVGD(normal_model, RBFSteinKernel(), pyro.optim.Adam({"lr": 0.1}), 4, 1)
    with pytest.raises(ValueError, match=r"call svgd.step"):
        particles_to_inference_data(normal_model, svgd, torch.randn(5))
    with pytest.raises(TypeError, match=r"pyro\.infer\.SVGD"):
        particles_to_inference_data(normal_model, object(), torch.randn(5))


def hierarchical(y):  # y: (data, groups)
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = pyro.sample("tau", dist.HalfNormal(1.0))
    with pyro.plate("groups", y.shape[-1], dim=-1):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        with pyro.plate("data", y.shape[-2], dim=-2):
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def test_a_latent_inside_a_plate_keeps_its_plate_dims():
    # the point-mass guide draws each site inside the model's plates of that site, as an
    # autoguide does, so its group dimension is not taken for a particle dimension
    pyro.set_rng_seed(3)
    y = torch.randn(5, 3)
    pyro.clear_param_store()
    kernel, optim = RBFSteinKernel(), pyro.optim.Adam({"lr": 0.05})
    svgd = CorrectedSVGD(
        hierarchical, kernel, optim, 6, 3, mode="multivariate"
    )  # nesting 3 > 2 used
    for _ in range(3):
        svgd.step(y)
    idata = particles_to_inference_data(hierarchical, svgd, y)
    theta = idata.posterior["theta"]
    assert theta.dims == ("chain", "draw", "groups") and theta.shape == (1, 6, 3)
    particles = svgd_particles(hierarchical, svgd, (y,), {})
    assert torch.equal(torch.as_tensor(theta.values[0]), particles["theta"])
    log_lik = idata.log_likelihood["y"]
    assert log_lik.dims == ("chain", "draw", "data", "groups") and log_lik.shape == (1, 6, 5, 3)
    expected = dist.Normal(particles["theta"][2], 1.0).log_prob(y)
    assert torch.allclose(torch.as_tensor(log_lik.values[0, 2]), expected, atol=1e-5)


def test_a_proposal_from_the_particles_estimates_the_exact_evidence():
    pyro.set_rng_seed(4)
    y = torch.randn(10) + 1.0
    svgd = fit(normal_model, (y,), 50, 150)
    guide = particle_proposal(normal_model, svgd, y)
    assert isinstance(guide, AutoMultivariateNormal)  # 50 particles > 2 * 1 coordinate
    particles = svgd_particles(normal_model, svgd, (y,), {})["mu"].double()
    posterior = guide.get_posterior()
    assert math.isclose(float(posterior.mean.detach()), float(particles.mean()), rel_tol=1e-5)
    assert math.isclose(float(posterior.variance.detach()), float(particles.var()), rel_tol=1e-4)
    # y ~ N(0, I + 11^T) marginally
    exact = float(dist.MultivariateNormal(torch.zeros(10), torch.eye(10) + 1.0).log_prob(y))
    estimate = pb.log_evidence(normal_model, guide, y, method="iwae", num_particles=2000)
    # four standard errors of the estimate (a failure rate below 1e-4)
    assert abs(estimate.value - exact) < 4 * estimate.stderr + 1e-3, (estimate, exact)


def test_a_proposal_of_several_sites_has_their_covariance_in_unconstrained_space():
    pyro.set_rng_seed(5)
    X = torch.randn(15, 2)
    y = (X * torch.tensor([1.0, -1.0])).sum(-1) + 0.5 * torch.randn(15)
    svgd = fit(regression, (X, y), 6, 5)
    particles = svgd_particles(regression, svgd, (X, y), {})
    theta = torch.cat([particles["w"], particles["sigma"].log()[:, None]], -1)
    guide = particle_proposal(regression, svgd, X, y)  # 6 particles <= 2 * 3: the diagonal
    assert isinstance(guide, AutoDiagonalNormal)
    assert torch.allclose(guide.loc, theta.mean(0), atol=1e-6)
    assert torch.allclose(guide.scale, theta.std(0), atol=1e-6)
    full = particle_proposal(regression, svgd, X, y, full_covariance=True)
    covariance = full.get_posterior().covariance_matrix
    assert torch.allclose(covariance, torch.cov(theta.T), atol=1e-5)


def test_refuses_pyros_own_svgd_on_two_latent_sites():
    # Pyro 1.9.2's SVGD.step mixes particles across sites: its particles are not SVGD's
    pyro.set_rng_seed(6)
    X = torch.randn(15, 2)
    y = (X * torch.tensor([1.0, -1.0])).sum(-1) + 0.5 * torch.randn(15)
    svgd = fit(regression, (X, y), 6, 2, cls=SVGD)
    match = r"\['sigma', 'w'\].*pyro_blr\.samplers\.SVGD.*one site"
    with pytest.raises(ValueError, match=match):
        particles_to_inference_data(regression, svgd, X, y)
    with pytest.raises(ValueError, match=match):
        svgd_particles(regression, svgd, (X, y), {})
    with pytest.raises(ValueError, match=match):
        particle_proposal(regression, svgd, X, y)
    with pytest.raises(ValueError, match=match):
        pb.to_inference_data(regression, svgd, X, y)


def test_accepts_pyros_own_svgd_on_one_latent_site():
    pyro.set_rng_seed(7)
    y = torch.randn(5)
    svgd = fit(normal_model, (y,), 4, 2, cls=SVGD)
    assert svgd_particles(normal_model, svgd, (y,), {})["mu"].shape == (4,)
