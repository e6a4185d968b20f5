"""AutoMixture: both modes of a bimodal posterior, by the BLR mixture rule and by SVI."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_blr as pb


def bimodal():
    """p(x) ∝ [N(x1; -2, 0.5²) + N(x1; 2, 0.5²)] N(x2; 0, 1): log Z = log 2, modes at x1 = ±2."""
    x = pyro.sample("x", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    modes = torch.stack([dist.Normal(-2.0, 0.5).log_prob(x[..., 0]),
                         dist.Normal(2.0, 0.5).log_prob(x[..., 0])])  # fmt: skip
    target = torch.logsumexp(modes, 0) + dist.Normal(0.0, 1.0).log_prob(x[..., 1])
    pyro.factor("target", target - dist.Normal(torch.zeros(2), 3.0).log_prob(x).sum(-1))


@pytest.mark.parametrize("component", ["diagonal", "full"])
def test_blr_mixture_finds_both_modes_exactly(component):
    # Seeds 0-5 were run: five find both modes (ELBO = log 2 exactly), one collapses onto one.
    guide = pb.AutoMixture(bimodal, num_components=2, component=component)
    blr = pb.BLR(bimodal, guide, lr=lambda t: 0.3 / (1 + t / 50), rule="mixture", mc_samples=16)
    losses = blr.fit(num_steps=300, progress=False).losses
    means = guide.locs.detach()[:, 0].sort().values
    torch.testing.assert_close(means, torch.tensor([-2.0, 2.0]), rtol=0, atol=0.01)
    torch.testing.assert_close(guide.weights.detach(), torch.tensor([0.5, 0.5]), rtol=0, atol=0.01)
    scale_trils = guide.mixture().component_distribution.scale_tril.detach()
    torch.testing.assert_close(scale_trils[:, 0, 0], torch.tensor([0.5, 0.5]), rtol=0, atol=0.01)
    assert losses[-1] == pytest.approx(-math.log(2), abs=0.01)  # -ELBO = -log Z


def test_a_single_gaussian_cannot_hold_both_modes():
    # From its symmetric start the BLR Gaussian sits between the modes: most of its mass falls
    # in the valley |x1| < 1, where the target has 0.3%, and its ELBO is far below log 2.
    guide = AutoNormal(bimodal)
    blr = pb.BLR(bimodal, guide, lr=lambda t: 0.3 / (1 + t / 50), rule="von")
    blr.fit(num_steps=300, progress=False)
    draws = Predictive(bimodal, guide=guide, num_samples=4000)()["x"].reshape(-1, 2)
    assert float((draws[:, 0].abs() < 1).float().mean()) > 0.1
    elbo = -Trace_ELBO(num_particles=4000, vectorize_particles=True).loss(bimodal, guide)
    assert elbo < math.log(2) - 1.0


def test_svi_with_trace_elbo_reparameterizes_every_parameter():
    guide = pb.AutoMixture(bimodal, num_components=3)
    loss = Trace_ELBO(num_particles=8, vectorize_particles=True).differentiable_loss(bimodal, guide)
    params = list(guide.parameters())
    grads = torch.autograd.grad(loss, params)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    svi = SVI(bimodal, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(50):
        svi.step()
    draws = Predictive(bimodal, guide=guide, num_samples=100)()["x"]
    assert draws.reshape(-1, 2).shape == (100, 2)
    assert guide.median()["x"].shape == (2,)


def test_svi_stops_before_nan_gradients_reach_the_guide():
    # In 300 dimensions Pyro's MixtureOfDiagNormals pathwise derivative overflows (NaN in every
    # gradient); the step must fail loudly and leave the guide's parameters as they were.
    def model():
        pyro.sample("w", dist.Normal(torch.zeros(300), 1.0).to_event(1))

    guide = pb.AutoMixture(model, num_components=3)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    guide()
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    with pytest.raises(FloatingPointError, match=r"rule='mixture'"):
        svi.step()
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value.detach(), before[name]), name


def test_full_components_are_refused_by_svi_and_sampled_by_predictive():
    guide = pb.AutoMixture(bimodal, num_components=2, component="full")
    with torch.no_grad():
        draws = Predictive(bimodal, guide=guide, num_samples=50)()["x"]
    assert draws.reshape(-1, 2).shape == (50, 2)
    svi = SVI(bimodal, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    with pytest.raises(NotImplementedError, match="rule='mixture'"):
        svi.step()


def test_bad_arguments():
    with pytest.raises(ValueError, match="component must be 'diagonal', 'full' or 'expfamily'"):
        pb.AutoMixture(bimodal, component="banana")
    with pytest.raises(ValueError, match="num_components must be a positive integer"):
        pb.AutoMixture(bimodal, num_components=0)
    with pytest.raises(TypeError, match=r"rule 'mixture' drives pb\.AutoMixture guides"):
        pb.BLR(bimodal, AutoNormal(bimodal), rule="mixture")


D = torch.float64


def symmetric_binomial(k):
    """p ~ Beta(1, 1), k ~ Binomial(50, p^2 + (1 - p)^2): the posterior is symmetric in
    p <-> 1 - p, with modes near 0.11 and 0.89 for k = 40."""
    p = pyro.sample("p", dist.Beta(torch.tensor(1.0, dtype=D), torch.tensor(1.0, dtype=D)))
    pyro.sample("k", dist.Binomial(50, p**2 + (1 - p) ** 2), obs=k)


def test_expfamily_mixture_puts_a_beta_on_each_mode():
    k = torch.tensor(40.0, dtype=D)
    grid = torch.linspace(1e-6, 1 - 1e-6, 200001, dtype=D)
    log_post = dist.Binomial(50, grid**2 + (1 - grid) ** 2).log_prob(k)
    weights = torch.softmax(log_post, 0)
    log_z = float(torch.logsumexp(log_post, 0) + math.log(grid[1] - grid[0]))
    upper_mean = float((weights * grid)[grid > 0.5].sum() / weights[grid > 0.5].sum())

    guide = pb.AutoMixture(symmetric_binomial, num_components=2, component="expfamily",
                           init_scale=0.2)  # fmt: skip
    blr = pb.BLR(symmetric_binomial, guide, lr=lambda t: 0.3 / (1 + t / 50), rule="mixture",
                 mc_samples=32)  # fmt: skip
    blr.fit(k, num_steps=300, progress=False)
    means = guide.distributions(k)["p"].mean.detach().sort().values
    # A Beta is not the exact shape of either mode, and KL(q || p) pulls its mean inward of the
    # exact conditional mean (measured 0.141 / 0.860 against 0.127 / 0.873); weights 0.50.
    # Tolerance: 0.03.
    exact = torch.tensor([1 - upper_mean, upper_mean], dtype=D)
    torch.testing.assert_close(means, exact, rtol=0, atol=0.03)
    assert abs(float(guide.weights[0]) - 0.5) < 0.05
    mixture_elbo = pb.log_evidence(symmetric_binomial, guide, k, method="elbo", num_particles=4000)
    single = pb.AutoExpFamily(symmetric_binomial, init_scale=0.2)
    pb.BLR(symmetric_binomial, single, lr=lambda t: 0.3 / (1 + t / 50), rule="expfamily",
           mc_samples=32).fit(k, num_steps=300, progress=False)  # fmt: skip
    single_elbo = pb.log_evidence(symmetric_binomial, single, k, method="elbo", num_particles=4000)
    # One Beta holds one mode (or straddles both): its ELBO is at most about log Z - log 2; the
    # mixture's is within 0.3 of log Z (each estimate's standard error is below 0.02).
    assert mixture_elbo.value > log_z - 0.3
    assert single_elbo.value < mixture_elbo.value - 0.4


def test_expfamily_mixture_samples_under_no_grad_and_refuses_svi():
    k = torch.tensor(40.0, dtype=D)
    guide = pb.AutoMixture(symmetric_binomial, num_components=3, component="expfamily")
    with torch.no_grad():
        draws = Predictive(symmetric_binomial, guide=guide, num_samples=40)(k)["p"]
    assert ((draws > 0) & (draws < 1)).all() and draws.numel() == 40
    assert guide.median(k)["p"].shape == () and guide.quantiles([0.5], k)["p"].shape == (1,)
    idata = pb.to_inference_data(symmetric_binomial, guide, k, num_samples=50)
    assert idata.posterior["p"].shape == (1, 50)
    svi = SVI(symmetric_binomial, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    with pytest.raises(NotImplementedError, match="rule='mixture'"):
        svi.step(k)
