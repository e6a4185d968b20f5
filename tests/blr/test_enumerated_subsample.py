"""Enumerated discrete sites local to a subsampled plate, and sites marked for sequential
enumeration, through the BLR's engine and its entry points.

A local site of ``pyro.plate(..., subsample_size=B)`` is summed out per datum inside the sum and
scaled by :math:`N/B` outside it, as ``TraceEnum_ELBO`` scales it: averaged over every
minibatch, the log joint is the full-data one exactly. Sequential enumeration of a model site
is refused naming the site, as Pyro's ``TraceEnum_ELBO`` refuses it.
"""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.core import Target, latent_layout

F64 = torch.float64
WEIGHTS = torch.tensor([0.3, 0.7], dtype=F64)
SCALES = torch.tensor([0.5, 2.0], dtype=F64)
X = torch.tensor([-1.0, 0.2, 3.0, 1.1, 2.4, -0.6], dtype=F64)
B = 2


def minibatched(x, subsample_size=B):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
    with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x[idx])


def full(x):
    minibatched(x, subsample_size=None)


def summed_by_hand(x, subsample_size=B):
    """The same model with the assignment summed out by hand."""
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
    with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
        mixture = dist.MixtureSameFamily(dist.Categorical(WEIGHTS), dist.Normal(loc, SCALES))
        pyro.sample("x", mixture, obs=x[idx])


def target(model):
    guide_model = poutine.block(model, hide=["z"])
    layout = latent_layout(
        poutine.trace(guide_model).get_trace(X), poutine.trace(model).get_trace(X)
    )
    return Target.build(model, (X,), {}, layout, "loop")


def test_each_minibatch_is_scaled_by_n_over_b_and_their_average_is_the_full_data_sum():
    # l_S = -log p(loc) - (N/B) sum_{i in S} log sum_k w_k N(x_i; loc_k, s_k): every one of
    # the C(6, 2) minibatches by hand, and their average against the full data's Target, to
    # round-off (1e-10), values and gradients.
    theta = torch.tensor([[-0.5, 1.5], [0.3, 2.2]], dtype=F64)
    prior = dist.Normal(torch.zeros(2, dtype=F64), 10.0).log_prob(theta).sum(-1)
    per_datum = torch.logsumexp(
        WEIGHTS.log() + dist.Normal(theta[:, None, :], SCALES).log_prob(X[:, None]), -1
    )  # (particles, N)
    values, grads = [], []
    minibatches = target(minibatched)
    for subset in itertools.combinations(range(len(X)), B):
        idx = torch.tensor(subset)
        d = minibatches.with_subsample({"data": idx}).derivatives(theta)
        exact = -(prior + len(X) / B * per_datum[:, idx].sum(-1))
        torch.testing.assert_close(d.value, exact, rtol=0, atol=1e-10)
        values.append(d.value)
        grads.append(d.grad)
    whole = target(full).derivatives(theta)
    torch.testing.assert_close(torch.stack(values).mean(0), whole.value, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.stack(grads).mean(0), whole.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "guide_class, rule",
    [(AutoMultivariateNormal, pb.VON(lr=0.2)), (AutoNormal, pb.VON(lr=0.2))],
    ids=["von-full", "von-diagonal"],
)
def test_the_blr_on_minibatches_equals_the_blr_on_the_hand_summed_model(guide_class, rule):
    # Pyro draws each step's minibatch; the same seed gives both models the same minibatches and
    # the same draws, so the fits agree to round-off (1e-8). One model run per particle for
    # both: a plate-vectorized run of the hand-summed model would draw fewer minibatches. (Not
    # IVON: its start reads the prior's scale from prior draws, and the enumerated model's
    # prior run also draws the assignment, so the same seed leaves the two other draws.)
    found = []
    for model, hide in [(minibatched, ["z"]), (summed_by_hand, [])]:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = guide_class(poutine.block(model, hide=hide))
        blr = pb.BLR(model, guide, rule, vectorize_particles=False)
        blr.fit(X, num_steps=8, progress=False, check=False)
        found.append({n: p.detach().clone() for n, p in guide.named_parameters()})
    assert found[0].keys() == found[1].keys()
    for name in found[0]:
        torch.testing.assert_close(found[0][name], found[1][name], rtol=1e-8, atol=1e-8)


def sequential_local(x):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "sequential"})
        pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x)


def sequential_global(x):
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
    z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "sequential"})
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x)


ENTRY_POINTS = {
    "blr-newton": lambda m, g: pb.BLR(m, g, pb.Newton(lr=1.0)).step(X),
    "blr-ivon": lambda m, g: pb.BLR(m, g, pb.IVON()).step(X),
    "log_evidence": lambda m, g: pb.log_evidence(m, g, X, num_particles=4),
    "to_inference_data": lambda m, g: pb.to_inference_data(m, g, X, num_samples=4),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("model", [sequential_local, sequential_global])
def test_sequential_enumeration_is_refused_naming_the_site_and_the_fix(model, entry):
    # Pyro's TraceEnum_ELBO does not sum a model site out sequentially either ("model-side
    # sequential enumeration is not implemented"): the fix is parallel enumeration, with a model
    # that computes on the enumerated values as tensors rather than branching on them.
    pyro.clear_param_store()
    guide = AutoNormal(poutine.block(model, hide=["z"]))
    pattern = r"site 'z'.*'sequential'.*infer=\{'enumerate': 'parallel'\}.*branches in Python"
    with pytest.raises(ValueError, match=pattern):
        ENTRY_POINTS[entry](model, guide)
