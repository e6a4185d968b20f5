"""Posterior draws of enumerated sites against the conditional written out by hand."""

import itertools

import pyro.distributions as dist
import pytest
import torch

from pyro_blr.diagnostics.discrete import discrete_draws
from tests.core.test_enumeration import (
    HMM_Y,
    LOC,
    LOCS,
    SCALES,
    TRANS,
    WEIGHTS,
    X,
    hmm,
    mixture,
)


def _responsibilities(loc, x):
    """p(z_i = k | x_i, loc) = w_k N(x_i; loc_k, s_k) / sum_j w_j N(x_i; loc_j, s_j)."""
    joint = WEIGHTS.log() + dist.Normal(loc, SCALES).log_prob(x[:, None])
    return joint.softmax(-1)


def test_mixture_draws_follow_the_exact_conditional():
    # z_i are independent given loc: 500 copies of each datum in 2 draws give 1000 Bernoulli
    # draws per datum in two model runs
    copies, num = 500, 2
    data = X.repeat(copies)
    draws = discrete_draws(mixture, (data,), {}, 1, [{"loc": LOC}] * num)["z"]
    assert draws.shape == (num, len(data))
    frequency = (draws == 1).double().reshape(num * copies, len(X)).mean(0)
    exact = _responsibilities(LOC, X)[:, 1]
    # sd <= 0.5 / sqrt(1000) = 0.0158 per datum; 4.5 sd: a false failure about once in 1e5
    assert (frequency - exact).abs().max() < 4.5 * 0.5 / (num * copies) ** 0.5


def test_mode_per_draw_is_the_argmax_of_the_exact_conditional():
    locs = [LOC, LOC.flip(0)]
    draws = discrete_draws(mixture, (X,), {}, 1, [{"loc": v} for v in locs], temperature=0)
    for s, loc in enumerate(locs):
        assert torch.equal(draws["z"][s], _responsibilities(loc, X).argmax(-1))


def test_hmm_mode_is_the_most_probable_path_by_hand():
    draws = discrete_draws(hmm, (HMM_Y,), {}, 0, [{"trans": TRANS, "locs": LOCS}], temperature=0)
    path = tuple(int(draws[f"s_{t}"][0]) for t in range(len(HMM_Y)))

    def log_p(path):
        previous, total = 0, 0.0
        for t, s in enumerate(path):
            total += float(TRANS[previous, s].log() + dist.Normal(LOCS[s], 1.0).log_prob(HMM_Y[t]))
            previous = s
        return total

    best = max(itertools.product(range(3), repeat=len(HMM_Y)), key=log_p)
    assert path == best


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="particles"):
        discrete_draws(mixture, (X,), {}, 1, [])
    with pytest.raises(ValueError, match="temperature"):
        discrete_draws(mixture, (X,), {}, 1, [{"loc": LOC}], temperature=2)
