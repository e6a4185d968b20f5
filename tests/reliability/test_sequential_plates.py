"""Sequential subsampled plates, ``for i in pyro.plate(name, N, subsample_size=B)``, through the
BLR: each site's term is scaled by N/B as Pyro scales it, so a fit must equal that of the same
model written with a vectorized plate on the same minibatches, or be refused naming the plate.
(RenyiELBO's refusals are in tests/objectives/test_renyi.py, the weights' in
tests/core/test_weights.py.)"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.ivon_start import per_datum_start
from pyro_blr.blr.rules import rule_from_name
from pyro_blr.blr.steppers.base import minibatch
from pyro_blr.core import latent_layout

D = torch.float64
X = torch.linspace(-1.0, 1.0, 10, dtype=D)
Y = torch.tensor([1.0] * 6 + [0.0] * 4, dtype=D)


def sequential(y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    for i in pyro.plate("data", len(y), subsample_size=4):
        pyro.sample(f"obs_{i}", dist.Normal(w[0] + w[1] * X[i], 0.5), obs=y[i])


def vectorized(y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    with pyro.plate("data", len(y), subsample_size=4) as i:
        pyro.sample("obs", dist.Normal(w[0] + w[1] * X[i], 0.5), obs=y[i])


def fit(model, guide_class, rule):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = guide_class(model)
    blr = pb.BLR(model, guide, rule_from_name(rule, lr=0.5))
    losses = [blr.step(Y) for _ in range(4)]
    return losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


@pytest.mark.parametrize(
    "guide_class, rule",
    [(AutoMultivariateNormal, "von"), (AutoNormal, "ivon"), (AutoMultivariateNormal, "newton")],
)
def test_a_sequential_minibatch_fits_as_its_vectorized_form(guide_class, rule):
    # Same seed, so the same minibatch indices drawn at each step: the losses and the guide's
    # parameters agree to round-off (1e-10, float64) only if every sequential site is scaled by
    # N/B and the BLR holds the minibatch fixed within a step as it does for a vectorized plate.
    seq_losses, seq_params = fit(sequential, guide_class, rule)
    vec_losses, vec_params = fit(vectorized, guide_class, rule)
    assert seq_losses == pytest.approx(vec_losses, rel=1e-10)
    assert seq_params.keys() == vec_params.keys()
    for name in seq_params:
        torch.testing.assert_close(seq_params[name], vec_params[name], rtol=1e-10, atol=1e-10)


def test_vogn_refuses_a_sequential_plate_naming_it():
    pyro.clear_param_store()
    guide = AutoNormal(sequential)
    with pytest.raises(ValueError, match=r"sequential plate\(s\) \['data'\]"):
        pb.BLR(sequential, guide, pb.VOGN(lr=0.5)).step(Y)


def test_the_minibatch_of_a_sequential_plate_is_found():
    pyro.set_rng_seed(3)
    indices = minibatch(sequential, (Y,), {})
    pyro.set_rng_seed(3)
    assert indices.keys() == {"data"} and torch.equal(
        indices["data"], minibatch(vectorized, (Y,), {})["data"]
    )


def test_ivon_starts_a_sequential_plates_latents_as_its_vectorized_form():
    # ess / (the plate's size) per coordinate either way: a sequential plate's sites are its
    # copies (it counted 1 copy: a start 3 times too high).
    def seq(y):
        for i in pyro.plate("groups", 3):
            pyro.sample(f"z_{i}", dist.Normal(torch.zeros((), dtype=D), 1.0))

    def vec(y):
        with pyro.plate("groups", 3):
            pyro.sample("z", dist.Normal(torch.zeros((), dtype=D), 1.0))

    like = torch.zeros((), dtype=D)
    starts = []
    for model in (seq, vec):
        trace = poutine.trace(model).get_trace(Y)
        starts.append(per_datum_start(latent_layout(trace), trace, 30.0, 2.0, like))
    torch.testing.assert_close(starts[0], starts[1])
    torch.testing.assert_close(starts[1], torch.full((3,), 20.0, dtype=D))
