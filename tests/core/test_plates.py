"""Is a plate subsampled, and how many elements has its data: both forms of plate."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_blr.core import check_full_data, full_size, is_subsampled, subsampled_plates
from pyro_blr.core.traces import num_observations, unsubsampled_scale


def vectorized(y, size=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y), subsample_size=size) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


def sequential(y, size=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    for i in pyro.plate("data", len(y), subsample_size=size):
        pyro.sample(f"y_{i}", dist.Normal(mu, 1.0), obs=y[i])


@pytest.mark.parametrize("model", [vectorized, sequential])
def test_both_forms_of_plate_are_read_alike(model):
    y = torch.arange(10.0)
    trace = pyro.poutine.trace(model).get_trace(y, 4)
    observed = [s for n, s in trace.nodes.items() if n.startswith("y")]
    frame = observed[0]["cond_indep_stack"][0]
    assert is_subsampled(frame) and is_subsampled(trace.nodes["data"])
    assert all(is_subsampled(site) for site in observed)
    assert not is_subsampled(trace.nodes["mu"])
    assert full_size(frame) == full_size(trace.nodes["data"]) == 10
    plates = subsampled_plates(trace)
    assert list(plates) == ["data"] and plates["data"][1:] == (4, 10, model is sequential)
    assert unsubsampled_scale(observed[0]) == 1.0 and observed[0]["scale"] == 2.5
    assert num_observations(trace) == 10
    with pytest.raises(ValueError, match=r"plate \['data'\] is subsampled .*holding 4 of its 10"):
        check_full_data(trace, "demo")
    full = pyro.poutine.trace(model).get_trace(y)
    assert not subsampled_plates(full) and not is_subsampled(full.nodes["data"])
    check_full_data(full, "demo")


def test_anything_else_is_refused_by_type():
    with pytest.raises(TypeError, match="is_subsampled takes"):
        is_subsampled(3)
    with pytest.raises(TypeError, match="full_size takes"):
        full_size("data")
