"""A prior without a sampler (ImproperUniform) is never sampled by the Gaussian stepper: the number
of observed data it counts (IVON's start, Vadam's N) comes from the model replayed on the guide's
starting values."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal, init_to_value

import pyro_blr as pb
from pyro_blr.blr.rules.adam import Adam


def improper(y):
    mu = pyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), ()))
    sigma = pyro.sample("sigma", dist.LogNormal(y.new_zeros(()), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


def guide():
    start = {"mu": torch.tensor(0.5, dtype=torch.float64),
             "sigma": torch.tensor(1.0, dtype=torch.float64)}  # fmt: skip
    return AutoNormal(improper, init_loc_fn=init_to_value(values=start))


def test_ivon_counts_the_data_of_a_model_with_an_improper_prior():
    # before: the count ran the model unconditioned, and ImproperUniform cannot be sampled
    pyro.clear_param_store()
    y = torch.arange(4, dtype=torch.float64)
    loss = pb.BLR(improper, guide(), pb.IVON(lr=0.1)).step(y)
    assert torch.isfinite(torch.tensor(loss))


def test_vadam_refuses_the_improper_prior_by_name_and_adam_fits_it():
    # Vadam's precision needs the prior's curvature, which a flat prior does not have
    y = torch.arange(4, dtype=torch.float64)
    pyro.clear_param_store()
    blr = pb.BLR(improper, guide(), Adam(perturb=True, ess=4))
    with pytest.raises(ValueError, match=r"not positive at site\(s\) \['mu'\]"):
        blr.step(y)
    pyro.clear_param_store()
    pb.BLR(improper, guide(), Adam()).step(y)  # at the mean: MAP needs no prior precision
