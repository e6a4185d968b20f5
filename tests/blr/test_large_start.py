"""``hess_init="auto"`` above :data:`~pyro_blr.blr.ivon_start.EXACT_START_MAX_DIM` coordinates
starts at the curvature it measures, not at :math:`N_i / s_i^2`.

A network's weights have priors of sd :math:`1/\\sqrt{\\text{fan-in}}`: :math:`N_i / s_i^2` is
fan-in times :math:`N_i`, 26 to 320 times IVON's reference start (:math:`N_i h_0`, :math:`h_0 = 1`)
on the diamonds MLP of ``benchmarks/deep.py``, whose test RMSE at the defaults fell behind MAP's
(0.1394 where it was 0.1198). On a linear regression with a prior of sd 0.1 and inputs of sd 3, the
Hessian's diagonal is :math:`\\sum_n x_{ni}^2 + 100`, about 1000, where
:math:`N_i/s_i^2 = 100 N = 10^4`.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_blr as pb
from pyro_blr.blr.ivon_start import EXACT_START_MAX_DIM

D = EXACT_START_MAX_DIM + 52  # above the exact start
N = 100


def regression(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(D), 0.1).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def data(units: float = 1.0):
    gen = torch.Generator().manual_seed(0)
    X = 3 * torch.randn(N, D, generator=gen, dtype=torch.float64)
    y = torch.randn(N, generator=gen, dtype=torch.float64)
    return X, y * units


def start(model, X, y) -> torch.Tensor:
    """The precision IVON starts from: one step whose Hessian average moves it by 1e-6 of the
    gap (beta2), at a step size that leaves the mean where it was."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    pb.BLR(model, guide, pb.IVON(lr=1e-9, beta2=1 - 1e-6)).step(X, y)
    return guide.scales.w.detach().pow(-2)


def test_the_start_above_the_exact_size_is_the_measured_curvature():
    X, y = data()
    precision = start(regression, X, y)
    exact = X.pow(2).sum(0) + 100  # the Hessian's diagonal, the same at every point
    # One value per site: v'Hv / D averaged over 16 probes at each of 4 draws. H_ij (i != j) =
    # 9 sum_n z_ni z_nj has sd 90, so one probe's v'Hv / D has sd sqrt(2) 90 = 127 (12.7% of
    # the mean 1000) and 64 of them 1.6%: 8% is five standard errors. Before: N/s^2, ten times.
    torch.testing.assert_close(precision.mean(), exact.mean(), rtol=0.08, atol=0)
    # Every coordinate starts alike (the one step moves each by 1e-6 of its own gap).
    assert float(precision.std() / precision.mean()) < 1e-4


def test_the_measured_start_is_in_the_priors_units():
    # Data, prior and noise in units of 1e8: the start is the first's divided by 1e16 (the
    # same draws and probes; float64 round-off).
    def scaled(X, y, c=1e8):
        w = pyro.sample("w", dist.Normal(X.new_zeros(D), c * 0.1).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(X @ w, c), obs=y)

    X, y = data()
    one = start(regression, X, y)
    other = start(scaled, X, y * 1e8)
    torch.testing.assert_close(other * 1e16, one, rtol=1e-6, atol=0)
