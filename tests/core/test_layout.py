"""The flat latent vector against Pyro's own autoguides' layout."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal

from pyro_blr.core import latent_layout
from tests.scenarios import constrained_model


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    return x, 2 * x + torch.randn(2, 5, generator=gen, dtype=torch.float64)


def test_layout_follows_pyro_autocontinuous_order(data):
    guide = AutoDiagonalNormal(constrained_model)
    guide(*data)
    layout = latent_layout(guide.prototype_trace)
    assert [s.name for s in layout.sites] == ["w", "sigma", "probs", "offset"]
    assert layout.dim == guide.latent_dim == 2 + 1 + 2 + 2
    latent = torch.randn(layout.dim, dtype=torch.float64)
    ours = layout.unpack(latent[None])
    for site, value in guide._unpack_latent(latent):
        torch.testing.assert_close(ours[site["name"]].reshape(value.shape), value)


def test_local_latent_in_subsampled_plate_is_refused():
    def model(y):
        with pyro.plate("data", 10, subsample_size=4) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])

    guide = AutoDiagonalNormal(model)
    guide(torch.zeros(10))
    with pytest.raises(ValueError, match="'z' is local to the subsampled plate 'data'"):
        latent_layout(guide.prototype_trace)


def test_discrete_latent_is_refused():
    def model():
        pyro.sample("k", dist.Categorical(torch.ones(3) / 3))

    trace = poutine.trace(model).get_trace()
    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        latent_layout(trace)


@pytest.mark.parametrize("allow_local", [False, True])
def test_local_latent_in_a_sequential_subsampled_plate_is_refused_by_plate(allow_local):
    # The minibatch decides which sites z_i exist; the layout used to take this run's sites as
    # global latents (scale 1), for a flat vector that the next minibatch does not fit.
    def model(y):
        for i in pyro.plate("data", 10, subsample_size=4):
            z = pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"y_{i}", dist.Normal(z, 1.0), obs=y[i])

    trace = poutine.trace(model).get_trace(torch.zeros(10))
    with pytest.raises(ValueError, match=r"'z_\d+' is local to the sequential subsampled plate "
                       r"'data'.*vectorized"):  # fmt: skip
        latent_layout(trace, allow_local=allow_local)


def test_a_sequential_plate_of_the_full_data_keeps_its_latents():
    def model(y):
        for i in pyro.plate("groups", 3):
            pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))

    layout = latent_layout(poutine.trace(model).get_trace(torch.zeros(3)))
    assert [(s.name, s.plate, s.scale) for s in layout.sites] == [
        (f"z_{i}", None, 1.0) for i in range(3)
    ]
