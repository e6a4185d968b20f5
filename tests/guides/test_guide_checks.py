"""pyro_blr's guides refuse, at set-up and by name, models no fixed guide can fit: a latent that
control flow samples on some runs only, and a latent masked out at some elements."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

import pyro_blr as pb
from pyro_blr.core import checks
from pyro_blr.core.checks import STRUCTURE_RUNS

GUIDES = {
    "AutoExpFamily": pb.AutoExpFamily,
    "AutoMixture diagonal": lambda m: pb.AutoMixture(m, num_components=2),
    "AutoMixture expfamily": lambda m: pb.AutoMixture(m, num_components=2, component="expfamily"),
    "AutoFlow": pb.AutoFlow,
}


def control_flow(y):
    s = pyro.sample("s", dist.Normal(0.0, 1.0))
    loc = s
    if s > 0:
        loc = loc + pyro.sample("extra", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


def missing_responses(y, mask):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(w, 1.0), obs=y, obs_mask=mask)


@pytest.mark.parametrize("make", list(GUIDES.values()), ids=list(GUIDES))
def test_a_latent_that_control_flow_adds_is_named(make):
    # "extra" exists on half the runs: the prototype run and the 16 checks all take the same
    # branch with probability 2 * 2**-17 = 2**-16 (the seed is fixed here anyway)
    pyro.set_rng_seed(0)
    guide = make(control_flow)
    with pytest.raises(ValueError, match=r"latent sites change from run to run: \['extra'\]"):
        guide(torch.zeros(3))


@pytest.mark.parametrize("make", list(GUIDES.values()), ids=list(GUIDES))
def test_a_masked_out_latent_is_named(make):
    y = torch.tensor([0.5, 0.0, -0.3])
    mask = torch.tensor([True, False, True])
    guide = make(missing_responses)
    with pytest.raises(ValueError, match="latent site 'y_unobserved' is masked out"):
        guide(y, mask)


def test_the_structure_check_leaves_the_random_stream_alone(monkeypatch):
    # The 16 prior runs must not change what the fit that follows draws: the draws after a
    # guide's set-up are the same with the check as without it.
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.1, 0.4])
    after = {}
    for runs in (0, STRUCTURE_RUNS):
        monkeypatch.setattr(checks, "STRUCTURE_RUNS", runs)
        pyro.set_rng_seed(0)
        pb.AutoExpFamily(model)._setup_prototype(y)
        after[runs] = torch.rand(3)
    torch.testing.assert_close(after[0], after[STRUCTURE_RUNS], rtol=0, atol=0)


def test_a_fixed_structure_model_fits_under_svi():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    pyro.clear_param_store()
    guide = pb.AutoFlow(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert all(torch.isfinite(torch.tensor(svi.step(torch.zeros(4)))) for _ in range(3))
