"""The log joint with enumerated sites summed out, against sums written out by hand (float64)."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.ops.indexing import Vindex

from pyro_blr.core import latent_layout
from pyro_blr.core.autodiff import hessian_from_grad
from pyro_blr.core.enumerated_terms import pointwise_log_likelihood
from pyro_blr.core.enumeration import (
    enumerated_log_joint,
    enumerated_log_joints,
    enumerated_trace,
    model_enumerated_sites,
)
from pyro_blr.core.log_joint import log_joint

F64 = torch.float64
WEIGHTS = torch.tensor([0.3, 0.7], dtype=F64)
SCALES = torch.tensor([0.5, 2.0], dtype=F64)
X = torch.tensor([-1.0, 0.2, 3.0, 1.1], dtype=F64)


def mixture(x):
    """Two components with known weights and scales; the locations are the latent."""
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x)


def mixture_by_hand(loc, x):
    """log p(x, loc) = log N(loc; 0, 10) + sum_i log sum_k w_k N(x_i; loc_k, s_k)."""
    prior = dist.Normal(torch.zeros(2, dtype=F64), 10.0).log_prob(loc).sum()
    per_datum = [
        torch.logsumexp(
            torch.stack(
                [WEIGHTS[k].log() + dist.Normal(loc[k], SCALES[k]).log_prob(xi) for k in range(2)]
            ),
            0,
        )
        for xi in x
    ]
    return prior + torch.stack(per_datum).sum()


TRANS_PRIOR = torch.ones(3, 3, dtype=F64)
HMM_Y = torch.tensor([0.1, -1.0, 2.0, 0.5], dtype=F64)
Y = HMM_Y


def hmm(y):
    """A three-state HMM (Pyro's examples/hmm.py model_0 shape): transition rows and emission
    locations latent, the states enumerated along a pyro.markov chain started in state 0."""
    trans = pyro.sample("trans", dist.Dirichlet(TRANS_PRIOR).to_event(1))
    locs = pyro.sample("locs", dist.Normal(torch.zeros(3, dtype=F64), 2.0).to_event(1))
    s = 0
    for t in pyro.markov(range(len(y))):
        s = pyro.sample(
            f"s_{t}", dist.Categorical(Vindex(trans)[s]), infer={"enumerate": "parallel"}
        )
        pyro.sample(f"y_{t}", dist.Normal(Vindex(locs)[s], 1.0), obs=y[t])


def hmm_by_hand(trans, locs, y):
    """The sum over all 3^T state paths, written out (Categorical reads each row of
    ``trans`` normalized, so its gradient off the simplex is that of the normalized row)."""
    rows = trans / trans.sum(-1, keepdim=True)
    paths = []
    for path in itertools.product(range(3), repeat=len(y)):
        log_p, previous = 0.0, 0
        for t, s in enumerate(path):
            log_p = log_p + rows[previous, s].log() + dist.Normal(locs[s], 1.0).log_prob(y[t])
            previous = s
        paths.append(log_p)
    prior = dist.Dirichlet(TRANS_PRIOR).log_prob(trans).sum()
    prior = prior + dist.Normal(torch.zeros(3, dtype=F64), 2.0).log_prob(locs).sum()
    return prior + torch.logsumexp(torch.stack(paths), 0)


LOC = torch.tensor([-0.5, 1.5], dtype=F64)
TRANS = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]], dtype=F64)
LOCS = torch.tensor([-1.0, 0.0, 2.0], dtype=F64)


def test_mixture_equals_the_hand_sum_with_its_gradient_and_hessian():
    def summed(loc):
        return enumerated_log_joint(mixture, (X,), {}, 1, {"loc": loc})

    assert abs(float(summed(LOC) - mixture_by_hand(LOC, X))) < 1e-10
    loc = LOC.clone().requires_grad_()
    (grad,) = torch.autograd.grad(summed(loc), loc)
    (expected,) = torch.autograd.grad(mixture_by_hand(loc, X), loc)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-10)
    hessian = torch.autograd.functional.hessian(summed, LOC)
    exact = torch.autograd.functional.hessian(lambda v: mixture_by_hand(v, X), LOC)
    torch.testing.assert_close(hessian, exact, rtol=0, atol=1e-10)


def test_hmm_equals_the_sum_over_every_path_with_its_gradient():
    trans = TRANS.clone().requires_grad_()
    locs = LOCS.clone().requires_grad_()
    value = enumerated_log_joint(hmm, (Y,), {}, 0, {"trans": trans, "locs": locs})
    exact = hmm_by_hand(trans, locs, Y)
    assert abs(float(value.detach() - exact.detach())) < 1e-10
    grads = torch.autograd.grad(value, (trans, locs))
    expected = torch.autograd.grad(exact, (trans, locs))
    for found, wanted in zip(grads, expected, strict=True):
        torch.testing.assert_close(found, wanted, rtol=0, atol=1e-10)


def test_hmm_chains_in_a_plate_of_sequences_are_a_product_of_path_sums():
    ys = torch.stack([Y, Y.flip(0) - 0.5])  # two sequences, time along the last axis

    def model(ys):
        trans = pyro.sample("trans", dist.Dirichlet(TRANS_PRIOR).to_event(1))
        locs = pyro.sample("locs", dist.Normal(torch.zeros(3, dtype=F64), 2.0).to_event(1))
        with pyro.plate("sequences", ys.shape[0]):
            s = 0
            for t in pyro.markov(range(ys.shape[1])):
                s = pyro.sample(
                    f"s_{t}", dist.Categorical(Vindex(trans)[s]), infer={"enumerate": "parallel"}
                )
                pyro.sample(f"y_{t}", dist.Normal(Vindex(locs)[s], 1.0), obs=ys[:, t])

    value = enumerated_log_joint(model, (ys,), {}, 1, {"trans": TRANS, "locs": LOCS})
    prior = dist.Dirichlet(TRANS_PRIOR).log_prob(TRANS).sum()
    prior = prior + dist.Normal(torch.zeros(3, dtype=F64), 2.0).log_prob(LOCS).sum()
    exact = hmm_by_hand(TRANS, LOCS, ys[0]) + hmm_by_hand(TRANS, LOCS, ys[1]) - prior
    assert abs(float(value - exact)) < 1e-10


def test_config_enumerate_marks_plain_discrete_sites():
    @config_enumerate
    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(WEIGHTS))
            pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x)

    value = enumerated_log_joint(model, (X,), {}, 1, {"loc": LOC})
    assert abs(float(value - mixture_by_hand(LOC, X))) < 1e-10
    assert model_enumerated_sites(model, (X,), {}, {"loc": LOC}) == ("z",)


def test_local_enumeration_in_a_subsampled_plate_is_scaled_outside_the_sum():
    # Pyro's TraceEnum_ELBO convention: sum over the minibatch's values inside, N/B outside.
    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        with pyro.plate("data", len(x), subsample_size=2) as idx:
            z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x[idx])

    idx = torch.tensor([1, 3])
    value = enumerated_log_joint(model, (X,), {}, 1, {"loc": LOC, "data": idx})
    prior = dist.Normal(torch.zeros(2, dtype=F64), 10.0).log_prob(LOC).sum()
    exact = prior + 2.0 * (mixture_by_hand(LOC, X[idx]) - prior)
    assert abs(float(value - exact)) < 1e-10


def test_particles_one_run_each():
    locs = [LOC, LOC + 1.0, LOC - 2.0]
    values = enumerated_log_joints(mixture, (X,), {}, 1, [{"loc": v} for v in locs])
    expected = torch.stack([mixture_by_hand(v, X) for v in locs])
    torch.testing.assert_close(values, expected, rtol=0, atol=1e-10)


def test_what_cannot_be_summed_is_refused_by_name():
    def sequential(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "sequential"})
        pyro.sample("x", dist.Normal(loc[z], 1.0), obs=x[0])

    with pytest.raises(ValueError, match=r"'z'.*'sequential'.*'parallel'"):
        enumerated_log_joint(sequential, (X,), {}, 0, {"loc": LOC})

    def unmarked(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        z = pyro.sample("z", dist.Categorical(WEIGHTS))
        pyro.sample("x", dist.Normal(loc[z], 1.0), obs=x[0])

    with pytest.raises(ValueError, match=r"'z'.*config_enumerate"):
        enumerated_log_joint(unmarked, (X,), {}, 0, {"loc": LOC})
    with pytest.raises(ValueError, match=r"'loc'.*not given a value"):
        enumerated_log_joint(mixture, (X,), {}, 1, {})

    def monte_carlo(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        infer = {"enumerate": "parallel", "num_samples": 4}
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer=infer)
        pyro.sample("x", dist.Normal(loc[z], 1.0), obs=x[0])

    with pytest.raises(ValueError, match=r"'z'.*num_samples"):
        enumerated_log_joint(monte_carlo, (X,), {}, 0, {"loc": LOC})

    def global_site_minibatch_data(x):  # the sum over z has no unbiased minibatch estimate
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        with pyro.plate("data", len(x), subsample_size=2) as idx:
            pyro.sample("x", dist.Normal(loc[z], 1.0), obs=x[idx])

    with pytest.raises(ValueError, match=r"'z'.*'x'.*scaled differently.*full data"):
        enumerated_log_joint(global_site_minibatch_data, (X,), {}, 1, {"loc": LOC})
    with pytest.raises(ValueError, match=r"max_plate_nesting=0"):  # the data plate is at -1
        enumerated_log_joint(mixture, (X,), {}, 0, {"loc": LOC})


def test_the_layout_knows_the_sites_it_leaves_to_enumeration():
    guide_model = poutine.block(mixture, hide=["z"])
    prototype = poutine.trace(guide_model).get_trace(X)
    layout = latent_layout(prototype, poutine.trace(mixture).get_trace(X))
    assert [s.name for s in layout.sites] == ["loc"] and layout.enumerated == ("z",)
    with pytest.raises(ValueError, match=r"'z'.*hide=\['z'\]"):  # a guide built on the model
        latent_layout(poutine.trace(mixture).get_trace(X))


def test_the_packages_curvature_goes_through_the_sum():
    # the rules' Hessians (batched Hessian-vector products over the backward pass) through
    # Pyro's log-space contraction, against the hand sum's
    theta = LOC.clone().requires_grad_()
    (grad,) = torch.autograd.grad(
        enumerated_log_joint(mixture, (X,), {}, 1, {"loc": theta}), theta, create_graph=True
    )
    exact = torch.autograd.functional.hessian(lambda v: mixture_by_hand(v, X), LOC)
    torch.testing.assert_close(hessian_from_grad(grad, theta), exact, rtol=0, atol=1e-10)


def test_pointwise_log_likelihood_of_the_mixture_is_each_datums_hand_sum():
    trace = enumerated_trace(mixture, (X,), {}, 1, {"loc": LOC})
    exact = torch.logsumexp(WEIGHTS.log() + dist.Normal(LOC, SCALES).log_prob(X[:, None]), -1)
    torch.testing.assert_close(pointwise_log_likelihood(trace, "x"), exact, rtol=0, atol=1e-10)


def test_pointwise_log_likelihoods_that_do_not_separate_are_refused_by_name():
    trace = enumerated_trace(hmm, (HMM_Y,), {}, 0, {"trans": TRANS, "locs": LOCS})
    with pytest.raises(ValueError, match=r"'y_0' and 'y_1' depend on the same enumerated"):
        pointwise_log_likelihood(trace, "y_0")

    def global_site(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc[z], 1.0), obs=x)

    trace = enumerated_trace(global_site, (X,), {}, 1, {"loc": LOC})
    with pytest.raises(ValueError, match=r"'x' depends on enumerated site 'z'.*\['data'\]"):
        pointwise_log_likelihood(trace, "x")


def test_an_error_of_the_model_itself_is_not_blamed_on_the_plate_nesting():
    # A Newton step that underflows a float32 scale to 0 makes the model raise Pyro's own
    # validation error, with or without enumeration: it must reach the caller as the model's
    # error (which the BLR treats alike for every model), not as advice on max_plate_nesting.
    def model(x):
        scale = pyro.sample("scale", dist.LogNormal(torch.zeros((), dtype=F64), 2.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(LOC[z], scale), obs=x)

    zero = torch.zeros((), dtype=F64)
    with pytest.raises(ValueError) as raised:
        enumerated_log_joint(model, (X,), {}, 1, {"scale": zero})
    assert "satisfy the constraint" in str(raised.value)
    assert "max_plate_nesting" not in str(raised.value)


def test_log_joint_of_particles_sums_enumerated_sites_out_when_told():
    # core.log_joint (the expfamily stepper's evaluation) on constrained particles: with
    # enumerated=True each particle's value is the hand sum (1e-10), whatever vectorize says.
    locs = torch.stack([LOC, LOC + 1.0, LOC - 2.0])
    expected = torch.stack([mixture_by_hand(v, X) for v in locs])
    for vectorize in ("plate", "vmap", "loop"):
        found = log_joint(mixture, {"loc": locs}, {"loc": 0}, 1, (X,), {}, vectorize, True)
        torch.testing.assert_close(found, expected, rtol=0, atol=1e-10)
