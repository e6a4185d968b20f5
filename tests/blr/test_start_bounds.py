"""The auto start is bounded by the prior: Pyro's own eight-schools SVI example, unchanged.

At the guide's start (log tau = 0, far in the half-Cauchy(25) prior's left tail) the log joint
is nearly linear in log tau: its expected curvature is 0.006 where the prior alone has the
precision of a sech law of scale about one. A start at that curvature made the first draws of
log tau spread by 12 units (tau = e^12), the first loss 1e13, and four schools' log tau collapsed
to sds of 1e-9 to 1e-11; with one school the first step raised "log joint is not finite". The
start is now at least the prior's precision 1 / s^2 (s the prior's robust scale).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_blr as pb
from pyro_blr.blr.prior_scale import prior_scale
from pyro_blr.blr.rules import rule_from_name
from pyro_blr.core import latent_layout

# Pyro's examples/eight_schools/data.py
J = 8
y = torch.tensor([28, 8, -3, 7, -1, 1, 18, 12]).type(torch.Tensor)
sigma = torch.tensor([15, 10, 16, 11, 9, 11, 10, 18]).type(torch.Tensor)


def model(data):
    """Pyro's examples/eight_schools/svi.py model (pyro-ppl/pyro), with one tau per school as
    the issue ran it (``torch.ones(J)`` for ``torch.ones(1)``) and J read from the data."""
    y = data[:, 0]
    sigma = data[:, 1]
    J = len(y)

    eta = pyro.sample("eta", dist.Normal(torch.zeros(J), torch.ones(J)))
    mu = pyro.sample("mu", dist.Normal(torch.zeros(1), 10 * torch.ones(1)))
    tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(J)))

    theta = mu + tau * eta

    pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


@pytest.fixture
def no_validation():
    # The example predates Pyro's default validation: its batched sites sit in no plate.
    pyro.enable_validation(False)
    yield
    pyro.enable_validation(True)


def test_the_start_of_log_tau_is_at_least_the_priors_precision(no_validation):
    data = torch.stack([y, sigma], dim=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, pb.IVON(lr=1e-3))  # a tiny step: the precision is the start's
    loss = blr.step(data)
    floor = prior_scale(model, latent_layout(guide.prototype_trace), (data,), {}, like=y).pow(-2)
    start = guide.scales.tau.detach().pow(-2)
    # One step moves h by (1 - beta2) of the way to the first estimate: at most 0.1% below the
    # start (0.2% allowed for float32's rounding through the guide's scale), or up by a factor
    # (1 + 0.001 * estimate / start); the floor (0.5 to 0.7 here) bounds the start from below.
    assert (start >= 0.998 * floor[-J:]).all()
    assert (start > 0.1).all()  # the curvature at the start was 0.006
    assert math.isfinite(loss) and loss < 1e3  # was 1.9e13: tau drawn at e^12


def test_eight_schools_fit_keeps_every_schools_spread(no_validation):
    data = torch.stack([y, sigma], dim=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, pb.IVON(lr=0.1))
    for _ in range(100):
        blr.step(data)
    # The mean-field optimum (a 4000-step exact-Hessian VON fit with 16 draws a step) has
    # log tau sds 0.63-0.77 and eta sds 0.50-0.67; before the bound four schools' sds fell
    # below 1e-5 within 100 steps and stayed there.
    assert (guide.scales.tau.detach() > 0.1).all()
    assert (guide.scales.eta.detach() > 0.1).all()
    assert blr.step_backs == 0


def test_one_school_fits(no_validation):
    data = torch.stack([y, sigma], dim=1)[:1]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, pb.IVON(lr=0.1))
    losses = [blr.step(data) for _ in range(20)]  # raised at step 1: log joint not finite
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("rule", ["ivon", "von"])
def test_a_scale_of_two_fits_as_the_duplicated_data(rule):
    # poutine.scale(model, 2) with the prior's scale times sqrt(2) has the log joint of the data
    # duplicated, up to a constant. The automatic start read ess from the plate's size (N against
    # 2N) and the prior's scale from its draws (sqrt(2) tau against tau): after three steps the
    # means were 2% (von: the cap N / s^2 binds) to 40% (ivon: the clip too) apart. Both sides
    # make the same draws, so they agree up to rounding.
    from pyro.infer.autoguide.initialization import init_to_feasible

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(X @ torch.tensor([1.0, -2.0], dtype=torch.float64)),
                        generator=gen)  # fmt: skip

    def model(X, y, tau):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), tau).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)

    def fit(model, *args):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoNormal(model, init_loc_fn=init_to_feasible)
        blr = pb.BLR(model, guide, rule_from_name(rule, lr=0.5))
        for _ in range(3):
            blr.step(*args)
        return guide.locs.w.detach(), guide.scales.w.detach()

    tau = 1 / 6
    duplicated = fit(model, torch.cat([X, X]), torch.cat([y, y]), tau)
    scaled = fit(pyro.poutine.scale(model, scale=2.0), X, y, tau * math.sqrt(2))
    for found, expected in zip(scaled, duplicated, strict=True):
        torch.testing.assert_close(found, expected, rtol=1e-9, atol=1e-12)
