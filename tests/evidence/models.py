"""Models the importance-sampling entry points must refuse, shared by tests/evidence,
tests/diagnostics and tests/objectives."""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoNormal

MIXTURE_DATA = torch.tensor([-2.1, -1.9, -2.3, 1.8, 2.2, 2.0])


@config_enumerate
def mixture(x):
    """A two-component Gaussian mixture with its assignments ``k`` marked for enumeration."""
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2)))
    locs = pyro.sample("locs", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    with pyro.plate("data", len(x)):
        k = pyro.sample("k", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(locs[k], 1.0), obs=x)


def mixture_guide():
    """Pyro's advice for TraceEnum_ELBO: a guide of the continuous sites, ``k`` hidden."""
    guide = AutoNormal(poutine.block(mixture, hide=["k"]))
    guide(MIXTURE_DATA)
    return guide


def impossible_counts(y, subsample_size=None):
    """Counts of 1 under a Poisson rate of 0 for every datum: the likelihood of ``y`` is -inf
    whatever the latents (a positive one, so that a log-Jacobian term exists too)."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    pyro.sample("prior_obs", dist.Normal(0.0, scale), obs=torch.tensor(0.3))
    with pyro.plate("data", len(y), subsample_size=subsample_size) as idx:
        pyro.sample("y", dist.Poisson(0.0 * scale), obs=y[idx])
