"""Pyro's HMM example (examples/hmm.py, model_1: vectorized sequences of different lengths,
padding masked), copied unchanged, against the sum over every path written out by hand."""

import itertools
import math
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.util import ignore_jit_warnings

import pyro_blr as pb
from pyro_blr.core.enumeration import enumerated_log_joint

args = SimpleNamespace(hidden_dim=2, jit=False)


# Copied unchanged from pyro-ppl/pyro examples/hmm.py.
def model_1(sequences, lengths, args, batch_size=None, include_prior=True):
    # Sometimes it is safe to ignore jit warnings. Here we use the
    # pyro.util.ignore_jit_warnings context manager to silence warnings about
    # conversion to integer, since we know all three numbers will be the same
    # across all invocations to the model.
    with ignore_jit_warnings():
        num_sequences, max_length, data_dim = map(int, sequences.shape)
        assert lengths.shape == (num_sequences,)
        assert lengths.max() <= max_length
    with poutine.mask(mask=include_prior):
        probs_x = pyro.sample(
            "probs_x",
            dist.Dirichlet(0.9 * torch.eye(args.hidden_dim) + 0.1).to_event(1),
        )
        probs_y = pyro.sample(
            "probs_y",
            dist.Beta(0.1, 0.9).expand([args.hidden_dim, data_dim]).to_event(2),
        )
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    # We subsample batch_size items out of num_sequences items. Note that since
    # we're using dim=-1 for the notes plate, we need to batch over a different
    # dimension, here dim=-2.
    with pyro.plate("sequences", num_sequences, batch_size, dim=-2) as batch:
        lengths = lengths[batch]
        x = 0
        # If we are not using the jit, then we can vary the program structure
        # each call by running for a dynamically determined number of time
        # steps, lengths.max(). However if we are using the jit, then we try to
        # keep a single program structure for all minibatches; the fixed
        # structure ends up being faster since each program structure would
        # need to trigger a new jit compile stage.
        for t in pyro.markov(range(max_length if args.jit else lengths.max())):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(
                    f"x_{t}",
                    dist.Categorical(probs_x[x]),
                    infer={"enumerate": "parallel"},
                )
                with tones_plate:
                    pyro.sample(
                        f"y_{t}",
                        dist.Bernoulli(probs_y[x.squeeze(-1)]),
                        obs=sequences[batch, t],
                    )


SEQUENCES = torch.tensor(
    [
        [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]],
        [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]],  # length 2: two padding steps
        [[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]],  # length 3
    ]
)
LENGTHS = torch.tensor([4, 2, 3])
PROBS_X = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
PROBS_Y = torch.tensor([[0.9, 0.2], [0.3, 0.6]])


def by_hand(probs_x, probs_y):
    """Priors, plus for each sequence the sum over the 2^L paths of its true length L."""
    total = dist.Dirichlet(0.9 * torch.eye(2) + 0.1).log_prob(probs_x).sum()
    total = total + dist.Beta(0.1, 0.9).log_prob(probs_y).sum()
    for sequence, length in zip(SEQUENCES, LENGTHS.tolist(), strict=True):
        paths = []
        for path in itertools.product(range(2), repeat=length):
            log_p, previous = 0.0, 0
            for t, x in enumerate(path):
                log_p = log_p + probs_x[previous, x].log()
                log_p = log_p + dist.Bernoulli(probs_y[x]).log_prob(sequence[t]).sum()
                previous = x
            paths.append(log_p)
        total = total + torch.logsumexp(torch.stack(paths), 0)
    return total


def test_the_hmm_example_equals_the_path_sum_and_padding_adds_nothing():
    values = {"probs_x": PROBS_X, "probs_y": PROBS_Y}
    found = enumerated_log_joint(model_1, (SEQUENCES, LENGTHS, args), {}, 2, values)
    # float32 model: a few ulps of the ~20-nat total
    assert abs(float(found - by_hand(PROBS_X, PROBS_Y))) < 1e-4


def hand_summed(sequences, lengths, args):
    probs_x = pyro.sample("probs_x", dist.Dirichlet(0.9 * torch.eye(2) + 0.1).to_event(1))
    probs_y = pyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([2, 2]).to_event(2))
    prior = dist.Dirichlet(0.9 * torch.eye(2) + 0.1).log_prob(probs_x).sum()
    prior = prior + dist.Beta(0.1, 0.9).log_prob(probs_y).sum()
    pyro.factor("y", by_hand(probs_x, probs_y) - prior)


def test_the_hmm_example_runs_unchanged_through_log_evidence_and_psis():
    expose = poutine.block(model_1, expose_fn=lambda msg: msg["name"].startswith("probs_"))
    guide = AutoNormal(expose, init_scale=0.05)
    data = (SEQUENCES, LENGTHS, args)
    guide(*data)
    found = []
    for model in (model_1, hand_summed):
        pyro.set_rng_seed(0)
        found.append(pb.log_evidence(model, guide, *data, num_particles=20, max_plate_nesting=2))
    # float32 models on the same draws: rounding of ~20-nat log weights
    assert abs(found[0].value - found[1].value) < 1e-3
    # psis_diagnostic weighs the draws as log_evidence does: it runs on the example unchanged
    psis = pb.psis_diagnostic(model_1, guide, *data, num_samples=40, max_plate_nesting=2)
    assert math.isfinite(psis.khat) and 1 <= psis.ess <= 40
