"""log_evidence, RenyiELBO and psis_diagnostic sum enumerated sites out: on the same draws they
give what the model with the sum written by hand gives."""

import logging
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoNormal
from pyro.ops.indexing import Vindex

import pyro_blr as pb
from pyro_blr.core import check_model_and_guide, log_weights
from tests.core.test_enumeration import (
    HMM_Y,
    SCALES,
    WEIGHTS,
    hmm,
    hmm_by_hand,
    mixture,
    mixture_by_hand,
)

F64 = torch.float64
X = torch.tensor([-1.0, 0.2, 3.0, 1.1], dtype=F64)


def mixture_summed_by_hand(x):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
    prior = dist.Normal(torch.zeros(2, dtype=F64), 10.0).log_prob(loc).sum(-1)
    pyro.factor("x", mixture_by_hand(loc, x) - prior)


def hmm_summed_by_hand(y):
    trans = pyro.sample("trans", dist.Dirichlet(torch.ones(3, 3, dtype=F64)).to_event(1))
    locs = pyro.sample("locs", dist.Normal(torch.zeros(3, dtype=F64), 2.0).to_event(1))
    prior = dist.Dirichlet(torch.ones(3, 3, dtype=F64)).log_prob(trans).sum()
    prior = prior + dist.Normal(torch.zeros(3, dtype=F64), 2.0).log_prob(locs).sum()
    pyro.factor("y", hmm_by_hand(trans, locs, y) - prior)


def _guide(model, x, hide):
    guide = AutoNormal(poutine.block(model, hide=hide), init_scale=0.3)
    guide(x)  # its parameters exist before the two models are compared
    return guide


@pytest.mark.parametrize("method", ["elbo", "iwae", "renyi"])
def test_log_evidence_of_the_mixture_is_the_hand_summed_models_on_the_same_draws(method):
    guide = _guide(mixture, X, ["z"])
    found, expected = [], []
    for model, out in ((mixture, found), (mixture_summed_by_hand, expected)):
        pyro.set_rng_seed(1)
        out.append(
            pb.log_evidence(
                model,
                guide,
                X,
                method=method,
                num_particles=50,
                chunk_size=20,
                max_plate_nesting=1,
            )
        )
    assert abs(found[0].value - expected[0].value) < 1e-8
    assert abs(found[0].stderr - expected[0].stderr) < 1e-8


def test_log_evidence_of_the_hmm_is_the_hand_summed_models_on_the_same_draws():
    guide = _guide(hmm, HMM_Y, [f"s_{t}" for t in range(len(HMM_Y))])
    values = []
    for model in (hmm, hmm_summed_by_hand):
        pyro.set_rng_seed(2)
        values.append(pb.log_evidence(model, guide, HMM_Y, num_particles=20, max_plate_nesting=0))
    assert abs(values[0].value - values[1].value) < 1e-8


def test_renyi_bound_and_its_gradient_are_the_hand_summed_models():
    guide = _guide(mixture, X, ["z"])
    params = list(guide.parameters())
    results = []
    for model in (mixture, mixture_summed_by_hand):
        pyro.set_rng_seed(3)
        loss = pb.RenyiELBO(alpha=0.5, num_particles=8, max_plate_nesting=1).differentiable_loss(
            model, guide, X
        )
        results.append((loss, torch.autograd.grad(loss, params)))
    (loss, grads), (hand, hand_grads) = results
    assert abs(float(loss.detach() - hand.detach())) < 1e-8
    for found, wanted in zip(grads, hand_grads, strict=True):
        torch.testing.assert_close(found, wanted, rtol=0, atol=1e-8)


def broadcast_mixture_by_hand(x):
    """The hand sum of mixture_by_hand, written to broadcast over particles."""
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
    terms = WEIGHTS.log() + dist.Normal(loc[..., None, :], SCALES).log_prob(x[:, None])
    pyro.factor("x", torch.logsumexp(terms, -1).sum(-1))


def test_psis_of_the_mixture_is_the_hand_summed_models():
    guide = _guide(vindex_mixture, X, ["z"])
    found = []
    for model in (vindex_mixture, broadcast_mixture_by_hand):
        pyro.set_rng_seed(4)
        found.append(pb.psis_diagnostic(model, guide, X, num_samples=100, max_plate_nesting=1))
    assert math.isclose(found[0].khat, found[1].khat, abs_tol=1e-8)
    assert math.isclose(found[0].ess, found[1].ess, abs_tol=1e-6)


def test_other_entry_points_still_refuse_the_enumerated_site_by_name():
    guide = _guide(mixture, X, ["z"])
    with pytest.raises(ValueError, match=r"'z'.*does not sum enumerated sites out") as caught:
        check_model_and_guide(mixture, guide, (X,), {})
    # the refusal sends the user to every entry point that sums the site out
    for name in ("pb.BLR with a Gaussian rule (pb.VON, pb.IVON, pb.Newton) or pb.MixtureRule",
                 "pb.log_evidence", "pb.RenyiELBO", "pb.psis_diagnostic", "pb.to_inference_data",
                 "pb.loo_sensitivity", "pb.sgd_evidence"):  # fmt: skip
        assert name in str(caught.value), name
    assert check_model_and_guide(mixture, guide, (X,), {}, summed=True) == ("z",)


# Pyro's Gaussian mixture tutorial (tutorial/source/gmm.ipynb), copied unchanged.
K = 2  # Fixed number of components.


@config_enumerate
def model(data):
    # Global variables.
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))

    with pyro.plate("data", len(data)):
        # Local variables.
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


data = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


def tutorial_summed_by_hand(data):
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        mix = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, scale))
        pyro.sample("obs", mix, obs=data)


def test_pyros_gmm_tutorial_runs_unchanged_through_log_evidence_and_psis():
    guide = AutoNormal(poutine.block(model, expose=["weights", "locs", "scale"]))
    guide(data)
    for method in ("elbo", "iwae"):
        found = []
        for m in (model, tutorial_summed_by_hand):
            pyro.set_rng_seed(5)
            found.append(pb.log_evidence(m, guide, data, method=method, num_particles=40))
        assert math.isfinite(found[0].value)
        # float32 model: the two sums differ by rounding only (a few ulps of |log w| ~ 1e2)
        assert abs(found[0].value - found[1].value) < 1e-3
    pyro.set_rng_seed(6)
    psis = pb.psis_diagnostic(model, guide, data, num_samples=100)
    pyro.set_rng_seed(6)
    hand = pb.psis_diagnostic(tutorial_summed_by_hand, guide, data, num_samples=100)
    assert abs(psis.khat - hand.khat) < 1e-3


def test_log_weights_find_the_enumerated_sites_themselves():
    guide = _guide(mixture, X, ["z"])
    weights = []
    for model in (mixture, mixture_summed_by_hand):
        pyro.set_rng_seed(7)
        weights.append(log_weights(model, guide, (X,), {}, 5, 1).joint.detach())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-10)


def test_an_unmarked_discrete_site_is_refused_with_the_fix():
    def unmarked(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(torch.tensor([0.3, 0.7], dtype=F64)))
            pyro.sample("x", dist.Normal(loc[z], 1.0), obs=x)

    guide = _guide(unmarked, X, ["z"])
    with pytest.raises(ValueError, match=r"'z'.*infer=\{'enumerate': 'parallel'\}"):
        pb.log_evidence(unmarked, guide, X, num_particles=4)
    with pytest.raises(ValueError, match=r"'z'.*infer=\{'enumerate': 'parallel'\}"):
        pb.psis_diagnostic(unmarked, guide, X, num_samples=100)
    with pytest.raises(ValueError, match=r"'z'.*infer=\{'enumerate': 'parallel'\}"):
        pb.RenyiELBO(0.5, num_particles=4).loss(unmarked, guide, X)


def test_data_impossible_under_every_enumerated_value_blame_their_sum():
    def impossible(y):
        rate = pyro.sample("rate", dist.LogNormal(torch.zeros((), dtype=F64), 1.0))
        with pyro.plate("data", len(y)):
            k = pyro.sample("k", dist.Bernoulli(torch.tensor(0.5, dtype=F64)))
            pyro.sample("y", dist.Poisson(rate * k * 0.0), obs=y)  # counts of 1 at rate 0

    impossible = config_enumerate(impossible)
    y = torch.ones(3, dtype=F64)
    guide = _guide(impossible, y, ["k"])
    with pytest.raises(ValueError, match=r"enumerated site\(s\) \['k'\] is -inf"):
        pb.log_evidence(impossible, guide, y, num_particles=4)


def vindex_mixture(x):
    """The mixture written to broadcast over particles (Vindex): one run for all particles."""
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(Vindex(loc)[..., z], SCALES[z]), obs=x)


@pytest.mark.parametrize("model", [vindex_mixture, mixture], ids=["plate", "loop"])
def test_particles_in_one_plate_run_when_the_model_broadcasts(model, caplog):
    guide = _guide(model, X, ["z"])
    weights = []
    with caplog.at_level(logging.INFO, logger="pyro_blr.core.weights"):
        for m in (model, mixture_summed_by_hand):
            pyro.set_rng_seed(8)
            weights.append(log_weights(m, guide, (X,), {}, 6, 1).joint.detach())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=1e-10)
    one_by_one = "enumerated particles run one by one" in caplog.text
    assert one_by_one == (model is mixture)  # locs[assignment] indexes the particle dimension
