"""BLR on conjugate linear regression, where every answer is known in closed form."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.rules import rule_from_name
from tests.scenarios import linear_regression


def flat_mean_and_var(guide, data):
    """The guide's mean and marginal variances from Pyro's own view of it."""
    if isinstance(guide, AutoNormal):
        return guide.locs.w.detach(), guide.scales.w.detach() ** 2
    posterior = guide.get_posterior(*data)
    return posterior.mean.detach(), posterior.variance.detach()


def test_newton_one_step_is_exact_posterior():
    scenario = linear_regression()
    data = (scenario.X, scenario.y)
    guide = AutoMultivariateNormal(scenario.model)
    pb.BLR(scenario.model, guide, pb.Newton(lr=1.0)).step(*data)

    posterior = guide.get_posterior(*data)
    assert posterior.mean.dtype == torch.float64
    torch.testing.assert_close(posterior.mean, scenario.posterior_mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(
        posterior.covariance_matrix, scenario.posterior_covariance, rtol=0, atol=1e-8
    )
    # At the exact posterior log p(D, w) - log q(w) = log Z for every w: one particle suffices.
    elbo = -Trace_ELBO().loss(scenario.model, guide, *data)
    assert elbo == pytest.approx(scenario.log_evidence, abs=1e-8)


def test_newton_loss_at_exact_posterior_is_minus_log_evidence():
    scenario = linear_regression()
    data = (scenario.X, scenario.y)
    blr = pb.BLR(scenario.model, AutoMultivariateNormal(scenario.model), pb.Newton(lr=1.0))
    blr.step(*data)
    # The delta-method loss is exact for a quadratic log joint.
    assert blr.step(*data) == pytest.approx(-scenario.log_evidence, abs=1e-8)


@pytest.mark.parametrize("guide_class", [AutoNormal, AutoDiagonalNormal])
@pytest.mark.parametrize("rule", ["von", "newton"])
def test_diagonal_guides_reach_the_mean_field_optimum(guide_class, rule):
    # The mean-field optimum of a Gaussian posterior N(mu, P^-1): mean mu, precision diag(P).
    scenario = linear_regression()
    data = (scenario.X, scenario.y)
    guide = guide_class(scenario.model)
    blr = pb.BLR(scenario.model, guide, rule_from_name(rule, lr=0.5))
    blr.fit(*data, num_steps=200, progress=False)
    mean, var = flat_mean_and_var(guide, data)
    torch.testing.assert_close(mean, scenario.posterior_mean, rtol=0, atol=1e-8)
    torch.testing.assert_close(var, 1 / scenario.posterior_precision.diagonal(), rtol=1e-8, atol=0)


def test_ivon_reaches_the_mean_field_optimum():
    # Antithetic pairs make the gradient at the mean exact on a quadratic, so the mean converges
    # exactly; the precision is a beta2-average of unbiased noisy estimates h_i = H_ii eps_i^2
    # (+ cross terms), whose relative standard deviation for beta2 = 0.99 and 32 particles is
    # about sqrt(0.01 / 2 * 2 * 3 / 16) < 0.05: 20% is four standard deviations.
    scenario = linear_regression()
    data = (scenario.X, scenario.y)
    guide = AutoDiagonalNormal(scenario.model)
    blr = pb.BLR(scenario.model, guide, pb.IVON(lr=0.2, mc_samples=32, beta2=0.99))
    blr.fit(*data, num_steps=1500, progress=False)
    mean, var = flat_mean_and_var(guide, data)
    torch.testing.assert_close(mean, scenario.posterior_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(var, 1 / scenario.posterior_precision.diagonal(), rtol=0.2, atol=0)


def test_predictive_and_median_see_the_update():
    scenario = linear_regression()
    data = (scenario.X, scenario.y)
    guide = AutoNormal(scenario.model)
    pb.BLR(scenario.model, guide, pb.Newton(lr=0.5)).fit(*data, num_steps=200, progress=False)
    torch.testing.assert_close(guide.median(*data)["w"], scenario.posterior_mean)
    quantiles = guide.quantiles([0.5], *data)["w"]
    torch.testing.assert_close(quantiles[0], scenario.posterior_mean)
    samples = pyro.infer.Predictive(scenario.model, guide=guide, num_samples=4000)(*data)
    sd = scenario.posterior_precision.diagonal().rsqrt()
    # 4000 draws: the sample mean is within 4 standard errors of the exact mean.
    assert ((samples["w"].mean(0) - scenario.posterior_mean).abs() < 4 * sd / 4000**0.5).all()
