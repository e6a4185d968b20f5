"""``pb.RenyiELBO`` under Pyro's ``SVI`` on a model with an enumerated site: each step moves the
guide exactly as on the model with the site summed out by hand (the conformance matrix's
``enumerated``/``svi_renyi`` cell checks the fitted posterior; it is a long fit)."""

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_blr as pb
from tests.core.test_enumeration import SCALES, WEIGHTS, X, mixture


def mixture_summed(x):
    """``mixture`` with its assignment summed out by hand (MixtureSameFamily)."""
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=x.dtype), 10.0).to_event(1))
    with pyro.plate("data", len(x)):
        mix = dist.MixtureSameFamily(dist.Categorical(WEIGHTS), dist.Normal(loc, SCALES))
        pyro.sample("x", mix, obs=x)


def _steps(model, alpha: float) -> torch.Tensor:
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(poutine.block(mixture, hide=["z"]))
    loss = pb.RenyiELBO(alpha=alpha, num_particles=8)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss)
    pyro.set_rng_seed(0)  # the same draws from the guide for both models
    losses = [svi.step(X) for _ in range(3)]
    return torch.tensor(losses), guide.loc.detach().clone(), guide.scale_tril.detach().clone()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_svi_steps_equal_the_hand_summed_models(alpha):
    got, summed = _steps(mixture, alpha), _steps(mixture_summed, alpha)
    for a, b in zip(got, summed, strict=True):
        # float64 throughout: the two sums differ by round-off only
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
