"""pareto_khat and pareto_check: the tail of a guide's importance ratios, and BLR.fit's closing
check on it."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.core import KHAT_THRESHOLD, pareto_check, pareto_khat
from tests.scenarios import linear_regression


def test_khat_of_light_heavy_and_constant_ratios():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=gen, dtype=torch.float64)
    # Draws z of q = N(0, 0.2^2) for p = N(0, 1): log r = z^2 (1/0.04 - 1) / 2 + const, so
    # P(r > t) ~ t^(-1 / (1 - 0.04)): a Pareto tail of shape k = 0.96.
    narrow = 0.2 * x
    log_r = -0.5 * narrow**2 + 0.5 * (narrow / 0.2) ** 2
    assert pareto_khat(0.3 * x) < 0.5
    assert pareto_khat(torch.full((100,), 3.0)) == 0.0
    assert pareto_khat(log_r) > KHAT_THRESHOLD
    assert pareto_khat(torch.cat([x[:50], torch.tensor([float("nan")])])) == float("inf")


def test_pareto_check_leaves_the_random_stream_where_it_was():
    s = linear_regression()
    guide = AutoNormal(s.model)
    guide(s.X, s.y)
    state = torch.get_rng_state()
    check = pareto_check(s.model, guide, (s.X, s.y), {}, 64, 1)
    assert torch.equal(torch.get_rng_state(), state)
    assert check.num_samples == 64 and check.subsampled == ()


def funnel():
    # Neal's funnel: no Gaussian covers its neck and its mouth at once.
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    pyro.sample("x", dist.Normal(torch.zeros(5), (v / 2).exp()).to_event(1))


def _fit(model, guide, *args, **options):
    blr = pb.BLR(model, guide, pb.VON(lr=0.5, mc_samples=8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blr.fit(*args, num_steps=40, progress=False, **options)
    return blr, [str(w.message) for w in caught if "Pareto" in str(w.message)]


def test_fit_warns_where_a_gaussian_cannot_represent_the_posterior():
    # The fitted Gaussian on the funnel has k-hat ~1.0 on 256 draws (measured 1.00 after 300
    # steps; any fit of this family stays far above 0.7, since q's tails are lighter than the
    # funnel's mouth in x).
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    blr, warned = _fit(funnel, AutoMultivariateNormal(funnel))
    assert blr.pareto.khat > KHAT_THRESHOLD
    assert warned and "AutoMixture" in warned[0] and "check=False" in warned[0]
    pyro.clear_param_store()
    blr, warned = _fit(funnel, AutoMultivariateNormal(funnel), check=False)
    assert blr.pareto is None and not warned


def test_fit_is_silent_on_a_conjugate_model():
    # The mean-field optimum of a Gaussian posterior: k-hat 0.46 on 256 draws (measured).
    s = linear_regression()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    blr, warned = _fit(s.model, AutoMultivariateNormal(s.model), s.X, s.y)
    assert blr.pareto.khat < KHAT_THRESHOLD and not warned


def test_a_short_fit_skips_the_check():
    # 3 steps of 8 draws: 24 draws, fewer than the check's 256; the check would dominate.
    s = linear_regression()
    blr = pb.BLR(s.model, AutoNormal(s.model), pb.VON(lr=0.5, mc_samples=8))
    blr.fit(s.X, s.y, num_steps=3, progress=False)
    assert blr.pareto is None


@pytest.mark.parametrize("subsample_size", [10])
def test_a_subsampled_model_gets_no_check(subsample_size):
    s = linear_regression(num_data=100, subsample_size=subsample_size)
    blr = pb.BLR(s.model, AutoNormal(s.model), pb.VON(lr=0.5, mc_samples=8))
    blr.fit(s.X, s.y, num_steps=40, progress=False)
    assert blr.pareto is not None and blr.pareto.subsampled == ("data",)
    assert blr.pareto.usable
