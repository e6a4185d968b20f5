"""The BLR on a model whose discrete sites are marked for enumeration: they are summed out
exactly, so every Gaussian rule steps on the marginal density of the continuous latents."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb

D = torch.float64
DATA = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0], dtype=D)
WEIGHTS = torch.tensor([0.3, 0.7], dtype=D)


@config_enumerate
def enumerated(data):
    """Pyro's GMM tutorial's shape: component means, an enumerated assignment per datum."""
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(data.new_zeros(()), 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(WEIGHTS))
        pyro.sample("obs", dist.Normal(locs[assignment], 1.0), obs=data)


def summed_by_hand(data):
    """The same model with the assignment summed out by hand."""
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(data.new_zeros(()), 10.0))
    with pyro.plate("data", len(data)):
        mixture = dist.MixtureSameFamily(dist.Categorical(WEIGHTS), dist.Normal(locs, 1.0))
        pyro.sample("obs", mixture, obs=data)


def fit(model, guide_class, rule, steps):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    start = lambda site: torch.tensor([0.5, 10.5], dtype=D)  # noqa: E731
    guide = guide_class(poutine.block(model, hide=["assignment"]), init_loc_fn=start)
    pb.BLR(model, guide, rule).fit(DATA, num_steps=steps, progress=False, check=False)
    return {name: value.detach().clone() for name, value in guide.named_parameters()}


@pytest.mark.parametrize(
    "guide_class, rule, steps",
    [
        (AutoMultivariateNormal, pb.Newton(lr=1.0), 20),
        (AutoNormal, pb.Newton(lr=1.0), 20),
        (AutoMultivariateNormal, pb.VON(lr=0.5), 20),
        (AutoNormal, pb.IVON(lr=0.5), 20),
    ],
    ids=["newton-full", "newton-diagonal", "von-full", "ivon-diagonal"],
)
def test_the_fit_equals_the_fit_of_the_hand_summed_model(guide_class, rule, steps):
    # The same draws on the same marginal density: the two fits agree to round-off (1e-8
    # leaves room for the different order of the sums; measured 1e-12).
    got = fit(enumerated, guide_class, rule, steps)
    expected = fit(summed_by_hand, guide_class, rule, steps)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("rule", [pb.VOGN(), pb.OGN()], ids=["vogn", "ogn"])
def test_per_datum_rules_are_refused_naming_the_site(rule):
    with pytest.raises(ValueError, match=r"enumerated site\(s\) \['assignment'\].*pb\.VON"):
        fit(enumerated, AutoNormal, rule, 1)
