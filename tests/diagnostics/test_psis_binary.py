"""PSIS on guides whose latent sites are all binary (pb.AutoExpFamily's Bernoulli factors): the
ratios are those of a few atoms, the largest ones tie and a generalized Pareto fit degenerates
(k-hat = inf on a good guide). k-hat is then read from the largest ratio and the effective
sample size (pyro_blr.core.pareto.tied_tail_khat): a guide at the mean-field fixed point is not
flagged, a guide far from the posterior is."""

import math

import numpy as np
import pyro
import torch

import pyro_blr as pb
from pyro_blr.core.pareto import KHAT_THRESHOLD, pareto_khat, tied_tail_khat
from pyro_blr.core.weights import log_weights
from tests.blr.test_expfamily_binary import _cavi, _spike_and_slab


def _guide_at(model, X, y, probs):
    pyro.clear_param_store()
    guide = pb.AutoExpFamily(model)
    guide(X, y)
    eta = guide.natural_params()["z"]
    guide.set_natural_params({"z": torch.logit(probs).reshape(eta.shape)})
    return guide


def test_a_binary_guide_at_the_mean_field_fixed_point_is_not_flagged():
    model, X, y = _spike_and_slab()
    guide = _guide_at(model, X, y, _cavi(model, (X, y)))
    pyro.set_rng_seed(8)  # a seed where the Pareto fit of the tied tail gave k-hat = inf
    found = pb.psis_diagnostic(model, guide, X, y, num_samples=500)
    # Over seeds 0-39 k-hat lies in [0.13, 0.40] (the Pareto fit: 7 above 0.7, 4 of them inf).
    assert 0.0 <= found.khat < 0.5
    pyro.set_rng_seed(8)
    ratios = log_weights(model, guide, (X, y), {}, 500, 1, False).joint.detach().numpy()
    weights = np.exp(ratios - ratios.max())
    # The ESS is the raw weights' (bounded: nothing to smooth), to round-off.
    assert math.isclose(found.ess, weights.sum() ** 2 / (weights**2).sum(), rel_tol=1e-12)


def test_a_binary_guide_far_from_the_posterior_is_flagged():
    model, X, y = _spike_and_slab()
    guide = _guide_at(model, X, y, 1 - _cavi(model, (X, y)))
    pyro.set_rng_seed(0)
    found = pb.psis_diagnostic(model, guide, X, y, num_samples=500)
    # Over seeds 0-39 k-hat lies in [0.80, 0.99] and the ESS is a few draws of 500.
    assert found.khat > KHAT_THRESHOLD and found.ess < 50


def test_tied_ratios_read_the_largest_ratio_against_the_mean():
    # Three atoms, 100 draws each: log(r_max / r-bar) / log S, by hand.
    ratios = torch.tensor([0.0, -0.5, -2.0], dtype=torch.float64).repeat(100)
    mean = (1 + math.exp(-0.5) + math.exp(-2.0)) / 3
    expected = -math.log(mean) / math.log(300)
    assert math.isclose(tied_tail_khat(ratios), expected, rel_tol=1e-12)
    # pareto_khat (BLR.fit's closing check) reads them the same way.
    assert math.isclose(pareto_khat(ratios), expected, rel_tol=1e-12)


def test_one_dominant_draw_among_tied_ratios_is_flagged():
    # The ESS reading: one atom of ratio e^8 drawn twice among 498 tied ones: ESS ~ 2,
    # k_ESS = 1 - log(ESS) / (2 log S) ~ 0.89 above the threshold.
    ratios = torch.cat([torch.zeros(498, dtype=torch.float64), torch.full((2,), 8.0)])
    weights = torch.exp(ratios - 8.0)
    ess = float(weights.sum() ** 2 / (weights**2).sum())
    assert math.isclose(tied_tail_khat(ratios), 1 - math.log(ess) / (2 * math.log(500)))
    assert tied_tail_khat(ratios) > KHAT_THRESHOLD


def test_continuous_ratios_keep_the_pareto_fit():
    generator = torch.Generator().manual_seed(0)
    ratios = torch.randn(500, generator=generator, dtype=torch.float64)
    assert tied_tail_khat(ratios) is None
    # float32 round-off ties a few large ratios of a big log joint: still a continuous tail.
    big = (-3e4 + ratios).float()
    assert len(np.unique(big.numpy())) < 500 and tied_tail_khat(big) is None


def test_psis_smooth_leaves_tied_ratios_unsmoothed_with_the_tied_khat():
    from pyro_blr.core import tied_tail_khat
    from pyro_blr.diagnostics import psis_smooth

    # three atoms (e.g. every latent binary): the 57 largest ratios are all one value
    ratios = np.repeat([0.0, -1.0, -2.0], [200, 100, 50])
    log_weights, khat = psis_smooth(ratios)
    want = ratios - np.logaddexp.reduce(ratios)
    np.testing.assert_allclose(log_weights, want, rtol=0, atol=1e-12)
    assert khat == tied_tail_khat(ratios)
