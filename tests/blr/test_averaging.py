"""The divergence verdict of pyro_blr.blr.averaging: a rise in nats, never a share of |best|."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyro_blr.blr.averaging import diverged, diverging, problem_size

RUNS = {
    "falling": [5000.0, 900.0, 300.0, 120.0, 119.0],
    "noisy at the optimum": [130.0, 120.0, 128.0, 125.0, 131.0, 122.0],
    "climbing": [300.0, 120.0, 900.0, 4000.0, 8000.0],
    "overflowed": [300.0, 120.0, math.inf, math.nan],
    "a modest climb": [300.0, 120.0, 400.0, 520.0, 640.0],
}


@pytest.mark.parametrize("name", sorted(RUNS))
@pytest.mark.parametrize("units", [1e-8, 1e8])
def test_the_verdict_does_not_depend_on_the_losses_additive_constant(name, units):
    # Data in units of c shift every loss of a run by N log c nats (N = 20 data here); the
    # verdict must not move. The former threshold 10 |best| + 100 called "a modest climb"
    # (520 nats above its best) diverged at best 120 and not at best 120 + 20 log(1e8).
    losses = RUNS[name]
    size = 20 + 3  # N data, D latent values
    shift = 20 * math.log(units)
    shifted = [loss + shift for loss in losses]
    assert diverged(shifted, window=20, size=size)[0] == diverged(losses, window=20, size=size)[0]


def test_the_threshold_is_a_rise_of_100_nats_plus_10_a_datum_and_a_coordinate():
    size = 23
    threshold = 100 + 10 * size
    assert not diverging(-1e9, -1e9 + threshold, size=size)
    assert diverging(-1e9, -1e9 + threshold * 1.001, size=size)
    assert diverging(5.0, math.nan, size=size)  # a NaN loss diverges
    verdicts = {name: diverged(run, window=20, size=size)[0] for name, run in RUNS.items()}
    assert verdicts == {
        "falling": False,
        "noisy at the optimum": False,
        "climbing": True,
        "overflowed": True,
        "a modest climb": True,
    }


def test_problem_size_counts_the_full_data_and_every_latent_value():
    # A subsampled plate counts its full size (the loss is scaled to it); subsample sites and
    # deterministic sites are no latents.
    def model(y):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        tau = pyro.sample("tau", dist.HalfNormal(1.0))
        pyro.deterministic("twice", 2 * tau)
        with pyro.plate("data", 1000, subsample_size=10) as idx:
            pyro.sample("y", dist.Normal(w.sum(), tau), obs=y[idx])

    trace = poutine.trace(model).get_trace(torch.zeros(1000))
    assert problem_size(trace) == 1000 + 3 + 1
