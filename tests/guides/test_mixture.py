"""AutoMixture: both modes of a bimodal posterior, by the BLR mixture rule and by SVI."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_blr as pb
from tests.scenarios import BIMODAL_LOG_Z, BIMODAL_MODE_SCALE, BIMODAL_MODES, bimodal


@pytest.mark.parametrize("component", ["diagonal", "full"])
def test_blr_mixture_finds_both_modes_exactly(component):
    # Seeds 0-5 were run: five find both modes (ELBO = log 2 exactly), one collapses onto one.
    guide = pb.AutoMixture(bimodal, num_components=2, component=component)
    blr = pb.BLR(bimodal, guide, pb.MixtureRule(lr=lambda t: 0.3 / (1 + t / 50), mc_samples=16))
    losses = blr.fit(num_steps=300, progress=False).losses
    means = guide.locs.detach()[:, 0].sort().values
    torch.testing.assert_close(means, torch.tensor(BIMODAL_MODES), rtol=0, atol=0.01)
    torch.testing.assert_close(guide.weights.detach(), torch.tensor([0.5, 0.5]), rtol=0, atol=0.01)
    scale_trils = guide.mixture().component_distribution.scale_tril.detach()
    scale = torch.tensor([BIMODAL_MODE_SCALE] * 2)
    torch.testing.assert_close(scale_trils[:, 0, 0], scale, rtol=0, atol=0.01)
    assert losses[-1] == pytest.approx(-BIMODAL_LOG_Z, abs=0.01)  # -ELBO = -log Z


def test_a_single_gaussian_cannot_hold_both_modes():
    # From its symmetric start the BLR Gaussian sits between the modes: most of its mass falls
    # in the valley |x1| < 1, where the target has 0.3%, and its ELBO is far below log 2.
    guide = AutoNormal(bimodal)
    blr = pb.BLR(bimodal, guide, pb.VON(lr=lambda t: 0.3 / (1 + t / 50)))
    blr.fit(num_steps=300, progress=False)
    draws = Predictive(bimodal, guide=guide, num_samples=4000)()["x"].reshape(-1, 2)
    assert float((draws[:, 0].abs() < 1).float().mean()) > 0.1
    elbo = -Trace_ELBO(num_particles=4000, vectorize_particles=True).loss(bimodal, guide)
    assert elbo < BIMODAL_LOG_Z - 1.0


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
    with pytest.raises(FloatingPointError, match=r"pb.MixtureRule\(\)"):
        svi.step()
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value.detach(), before[name]), name


def test_full_components_are_refused_by_svi_and_sampled_by_predictive():
    guide = pb.AutoMixture(bimodal, num_components=2, component="full")
    with torch.no_grad():
        draws = Predictive(bimodal, guide=guide, num_samples=50)()["x"]
    assert draws.reshape(-1, 2).shape == (50, 2)
    svi = SVI(bimodal, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    with pytest.raises(NotImplementedError, match=r"pb.MixtureRule\(\)"):
        svi.step()


def test_bad_arguments():
    with pytest.raises(ValueError, match="component must be 'diagonal', 'full' or 'expfamily'"):
        pb.AutoMixture(bimodal, component="banana")
    with pytest.raises(ValueError, match="num_components must be a positive integer"):
        pb.AutoMixture(bimodal, num_components=0)
    with pytest.raises(TypeError, match="with MixtureRule"):
        pb.BLR(bimodal, AutoNormal(bimodal), pb.MixtureRule())


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
    blr = pb.BLR(
        symmetric_binomial, guide, pb.MixtureRule(lr=lambda t: 0.3 / (1 + t / 50), mc_samples=32)
    )
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
    pb.BLR(
        symmetric_binomial, single, pb.ExpFamilyRule(lr=lambda t: 0.3 / (1 + t / 50), mc_samples=32)
    ).fit(k, num_steps=300, progress=False)
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
    with pytest.raises(NotImplementedError, match=r"pb.MixtureRule\(\)"):
        svi.step(k)


def gaussian_model():
    pyro.sample("x", dist.Normal(torch.zeros(3, dtype=D), 1.0).to_event(1))


@pytest.mark.parametrize("component", ["diagonal", "full", "expfamily"])
def test_every_mixture_is_an_automixture(component):
    model = symmetric_binomial if component == "expfamily" else bimodal
    guide = pb.AutoMixture(model, num_components=3, component=component)
    assert isinstance(guide, pb.AutoMixture) and guide.component == component
    assert guide.num_components == 3
    expected = pb.guides.ExpFamilyMixture if component == "expfamily" else pb.guides.GaussianMixture
    assert type(guide) is expected
    assert type(pb.AutoMixture(model, 2, component)) is expected  # positional arguments
    assert isinstance(pb.AutoMixture(symmetric_binomial, component="expfamily"), pb.AutoExpFamily)


def setup(guide):
    with torch.no_grad():
        guide()
    return {k: v.detach().clone() for k, v in guide.named_parameters()}


def random_components(full, k=2, d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, generator=gen, dtype=D)
    locs = torch.randn(k, d, generator=gen, dtype=D)
    if not full:
        return logits, locs, torch.rand(k, d, generator=gen, dtype=D) + 0.1
    a = torch.randn(k, d, d, generator=gen, dtype=D)
    return logits, locs, a @ a.mT + 0.5 * torch.eye(d, dtype=D)


@pytest.mark.parametrize("component", ["diagonal", "full"])
def test_components_round_trip(component):
    # float64: logits and locs are written as they are; precisions go through the scale
    # parameterization (softplus / lower Cholesky) and come back to round-off (measured 4e-16).
    guide = pb.AutoMixture(gaussian_model, num_components=2, component=component)
    with pytest.raises(RuntimeError, match="needs the guide set up"):
        guide.components()
    setup(guide)
    new = random_components(component == "full")
    guide.set_components(*new)
    logits, locs, precisions = guide.components()
    assert torch.equal(logits, new[0]) and torch.equal(locs, new[1])
    torch.testing.assert_close(precisions, new[2], rtol=1e-12, atol=1e-12)
    assert guide.logits is dict(guide.named_parameters())["logits"]  # still the nn.Parameter
    covariances = guide.mixture().component_distribution.covariance_matrix.detach()
    expected = torch.linalg.inv(new[2]) if component == "full" else torch.diag_embed(1 / new[2])
    torch.testing.assert_close(covariances, expected, rtol=1e-12, atol=1e-12)
    logits, locs, precisions = guide.components()
    locs += 1.0  # detached clones: editing them leaves the guide alone
    assert torch.equal(guide.components()[1], new[1])


@pytest.mark.parametrize("component", ["diagonal", "full"])
def test_bad_components_are_refused_and_leave_the_guide_unchanged(component):
    full = component == "full"
    guide = pb.AutoMixture(gaussian_model, num_components=2, component=component)
    before = setup(guide)
    logits, locs, precisions = random_components(full)
    zero, negative, nan = precisions.clone(), precisions.clone(), locs.clone()
    nan[1, 0] = math.nan
    if full:
        zero[1] = torch.zeros(3, 3, dtype=D)
        negative[0, 0, 0] = -1.0
    else:
        zero[1, 2] = 0.0
        negative[0, 1] = -1.0
    cases = [
        ((logits, locs, zero), "positive"),
        ((logits, locs, negative), "positive"),
        ((logits, nan, precisions), "locs are not finite"),
        ((logits[:1], locs, precisions), "logits need shape"),
        ((logits, locs, precisions[..., 0] if full else precisions[0]), "precisions need shape"),
        ((torch.tensor([0.0, math.inf], dtype=D), locs, precisions), "not finite"),
    ]
    if full:
        asymmetric = precisions.clone()
        asymmetric[0, 0, 1] += 1.0
        cases.append(((logits, locs, asymmetric), "not symmetric"))
    for args, match in cases:
        with pytest.raises(ValueError, match=rf"AutoMixture\(component='{component}'\).*{match}"):
            guide.set_components(*args)
        for name, value in guide.named_parameters():
            assert torch.equal(value.detach(), before[name]), (match, name)


def test_set_logits_writes_the_parameter_in_place_or_refuses():
    guide = pb.AutoMixture(gaussian_model, num_components=3)
    setup(guide)
    parameter = guide.logits
    guide.set_logits(torch.tensor([1.0, -2.0, 0.5], dtype=D))
    assert guide.logits is parameter and isinstance(parameter, torch.nn.Parameter)
    assert guide.logits.tolist() == [1.0, -2.0, 0.5]
    with pytest.raises(ValueError, match="logits are not finite"):
        guide.set_logits(torch.tensor([0.0, math.nan, 0.0], dtype=D))
    with pytest.raises(ValueError, match=r"logits need shape \(3,\)"):
        guide.set_logits(torch.zeros(2, dtype=D))
    assert guide.logits.tolist() == [1.0, -2.0, 0.5]


def test_expfamily_mixture_natural_params_carry_the_component_dimension():
    k = torch.tensor(40.0, dtype=D)
    guide = pb.AutoMixture(symmetric_binomial, num_components=3, component="expfamily")
    setup_args = (k,)
    with torch.no_grad():
        guide(*setup_args)
    assert [f.name for f in guide.site_families().values()] == ["beta"]
    etas = guide.natural_params()
    assert etas["p"].shape == (3, 2)
    target = torch.tensor([[1.0, 8.0], [8.0, 1.0], [0.5, 0.5]], dtype=D)
    guide.set_natural_params({"p": target})
    torch.testing.assert_close(guide.natural_params()["p"], target, rtol=1e-13, atol=1e-13)
    components = guide.distributions(k)["p"]
    torch.testing.assert_close(components.concentration1.detach(), target[:, 0] + 1)
    before = {n: v.detach().clone() for n, v in guide.named_parameters()}
    with pytest.raises(ValueError, match="site 'p' are outside the domain"):
        guide.set_natural_params({"p": torch.tensor([[1.0, 8.0], [8.0, 1.0], [-2.0, 0.5]])})
    with pytest.raises(ValueError, match=r"site 'p' needs natural parameters of shape \(3, 2\)"):
        guide.set_natural_params({"p": target[:2]})
    for name, value in guide.named_parameters():
        assert torch.equal(value.detach(), before[name]), name
    guide.set_logits(torch.tensor([0.0, 1.0, 2.0], dtype=D))
    torch.testing.assert_close(guide.weights.detach(), torch.softmax(guide.logits.detach(), -1))
