"""PSIS k-hat judges a variational fit, and PSIS resampling corrects a good-enough one."""

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal
from torch.distributions import transform_to

import pyro_blr as pb
from pyro_blr.diagnostics.arviz_compat import MIN_PSIS_SAMPLES
from tests.scenarios import MIXTURE_DATA, linear_regression, mixture, mixture_guide


def fitted(guide_class, s, steps=100, lr=0.5):
    pyro.clear_param_store()
    guide = guide_class(s.model)
    pb.BLR(s.model, guide, pb.Newton(lr=lr)).fit(s.X, s.y, num_steps=steps, progress=False)
    return guide


def test_khat_is_small_for_the_exact_guide_and_large_for_a_too_narrow_one():
    s = linear_regression()
    exact = fitted(AutoMultivariateNormal, s, steps=1, lr=1.0)  # the exact posterior
    same = pb.psis_diagnostic(s.model, exact, s.X, s.y, num_samples=2000)
    assert same.khat == 0.0  # every ratio is log Z: no tail to fit, reported as 0, never -inf
    assert same.ess == pytest.approx(2000, rel=1e-9)
    with torch.no_grad():  # a near-exact guide: the mean off by 0.1 posterior sd
        exact.loc.add_(0.1 * s.posterior_covariance.diagonal().sqrt())
    good = pb.psis_diagnostic(s.model, exact, s.X, s.y, num_samples=2000)
    assert good.khat < 0.5 and good.ess > 1500
    with torch.no_grad():  # shrink the posterior's scale by 3: far too narrow
        narrow = transform_to(exact.scale_constraint).inv(exact.scale / 3)
        exact.scale_unconstrained.copy_(narrow)
    bad = pb.psis_diagnostic(s.model, exact, s.X, s.y, num_samples=2000)
    assert bad.khat > 0.7 and bad.ess < 200


def test_psis_resampling_moves_a_mean_field_fit_toward_the_exact_posterior():
    # A mean-field Gaussian on a correlated Gaussian posterior: its sds are too small (it matches
    # the precision's diagonal), and with its mean shifted by 0.3 sd its means are off too.
    # Resampling by PSIS weights must shrink both errors (4000 draws; the reduction is far
    # beyond the Monte Carlo error of a 4000-draw mean, 0.016 sd).
    s = linear_regression()
    guide = fitted(AutoDiagonalNormal, s)
    sd = s.posterior_covariance.diagonal().sqrt()
    with torch.no_grad():
        guide.loc.add_(0.3 * sd.float() if guide.loc.dtype == torch.float32 else 0.3 * sd)
    pyro.set_rng_seed(0)
    plain = pb.to_inference_data(s.model, guide, s.X, s.y, num_samples=4000)
    pyro.set_rng_seed(0)
    weighted = pb.to_inference_data(s.model, guide, s.X, s.y, num_samples=4000, psis=True)
    assert 0 <= weighted.attrs["psis_khat"] < 0.7

    def errors(idata):
        w = torch.as_tensor(idata.posterior["w"].values).reshape(-1, 3)
        return ((w.mean(0) - s.posterior_mean) / sd).abs(), (w.std(0) / sd - 1).abs()

    mean_plain, sd_plain = errors(plain)
    mean_psis, sd_psis = errors(weighted)
    assert (mean_psis < 0.5 * mean_plain).all()
    assert sd_psis.max() < 0.5 * sd_plain.max()


@pytest.mark.parametrize("num_samples", [0, 1, MIN_PSIS_SAMPLES - 1, 100.0, True])
def test_too_few_samples_for_a_pareto_fit_are_refused(num_samples):
    # num_samples=1 used to give k-hat = -inf and ESS = 1: a "perfect" fit out of nothing.
    s = linear_regression()
    guide = AutoDiagonalNormal(s.model)
    with pytest.raises(ValueError, match="num_samples must be"):
        pb.psis_diagnostic(s.model, guide, s.X, s.y, num_samples=num_samples)


def test_the_fewest_samples_allowed_give_a_finite_khat():
    pyro.set_rng_seed(0)
    s = linear_regression()
    guide = AutoDiagonalNormal(s.model)
    result = pb.psis_diagnostic(s.model, guide, s.X, s.y, num_samples=MIN_PSIS_SAMPLES)
    assert torch.isfinite(torch.tensor(result.khat)) and 1 <= result.ess <= MIN_PSIS_SAMPLES


def test_an_enumerated_site_hidden_from_the_guide_is_summed_out():
    # exactness against the hand-summed model: tests/evidence/test_enumeration.py
    result = pb.psis_diagnostic(mixture, mixture_guide(), MIXTURE_DATA, num_samples=100)
    assert torch.isfinite(torch.tensor(result.khat))
