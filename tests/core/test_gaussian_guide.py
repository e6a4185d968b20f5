"""Pyro's Gaussian autoguides read and written as a flat mean and precision, through their
constraints, in place, so that Pyro's own views of the guide see what was written."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.nn import PyroModule, PyroParam, PyroSample
from torch import nn
from torch.distributions import constraints

from pyro_blr.core import (
    GaussianGuide,
    check_gaussian_guide,
    initialize_guide,
    latent_layout,
    write_param,
)
from tests.scenarios import constrained_model

D = torch.float64


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, generator=gen, dtype=D)
    return x, 2 * x + torch.randn(2, 5, generator=gen, dtype=D)


class Regression(PyroModule):
    """A PyroModule whose latent sites have dotted names ("linear.weight", "linear.bias")."""

    def __init__(self):
        super().__init__()
        self.linear = PyroModule[nn.Linear](3, 1).double()
        zero = torch.tensor(0.0, dtype=D)
        self.linear.weight = PyroSample(dist.Normal(zero, 1.0).expand([1, 3]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(zero, 1.0).expand([1]).to_event(1))

    def forward(self, X, y):
        mean = self.linear(X).squeeze(-1)  # outside the plate: the weights are global
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(mean, 0.5), obs=y)


def random_gaussian(dim, full, seed=0):
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(dim, generator=gen, dtype=D)
    if not full:
        return loc, torch.rand(dim, generator=gen, dtype=D) + 0.5
    a = torch.randn(dim, dim, generator=gen, dtype=D)
    return loc, a @ a.T + 0.5 * torch.eye(dim, dtype=D)


def view(guide, *args):
    guide(*args)
    return GaussianGuide(guide, latent_layout(guide.prototype_trace))


@pytest.mark.parametrize("guide_class", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal])
def test_write_then_read_round_trips_in_float64(guide_class, data):
    # Constrained sites (real, positive, simplex) and a plate-local one; the precision goes
    # through softplus/exp scales or a Cholesky factor, so it returns to round-off (1e-12).
    gaussian = view(guide_class(constrained_model), *data)
    full = guide_class is AutoMultivariateNormal
    loc, precision = random_gaussian(gaussian.layout.dim, full)
    gaussian.write(loc, precision)
    got_loc, got_precision = gaussian.read()
    assert got_loc.dtype == D and got_precision.shape == precision.shape
    torch.testing.assert_close(got_loc, loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_precision, precision, rtol=1e-12, atol=1e-12)
    # Pyro's own view of the guide is the written Gaussian.
    if full:
        posterior = gaussian.guide.get_posterior(*data)
        torch.testing.assert_close(posterior.loc.detach(), loc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(
            posterior.precision_matrix.detach(), precision, rtol=1e-10, atol=1e-10
        )
    elif guide_class is AutoDiagonalNormal:
        scale = gaussian.guide.get_posterior(*data).base_dist.scale.detach()
        torch.testing.assert_close(scale, precision.rsqrt(), rtol=1e-12, atol=1e-12)


def test_auto_normal_writes_every_site_including_dotted_pyro_module_names():
    gen = torch.Generator().manual_seed(2)
    X, y = torch.randn(6, 3, generator=gen, dtype=D), torch.randn(6, generator=gen, dtype=D)
    model = Regression()
    guide = AutoNormal(model)
    gaussian = view(guide, X, y)
    assert [s.name for s in gaussian.layout.sites] == ["linear.weight", "linear.bias"]
    loc, precision = random_gaussian(4, full=False, seed=3)
    gaussian.write(loc, precision)
    got_loc, got_precision = gaussian.read()
    torch.testing.assert_close(got_loc, loc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_precision, precision, rtol=1e-12, atol=1e-12)
    # The nested modules hold the written values, site by site, in the layout's order.
    weight = guide.locs.linear.weight.detach()
    torch.testing.assert_close(weight, loc[:3].reshape(1, 3), rtol=0, atol=1e-15)
    torch.testing.assert_close(guide.scales.linear.bias.detach(), precision[3:].rsqrt())
    torch.testing.assert_close(guide.median(X, y)["linear.bias"], loc[3:], rtol=0, atol=1e-15)


@pytest.mark.parametrize("guide_class", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal])
def test_writing_keeps_the_parameters_that_optimizers_hold(guide_class, data):
    gaussian = view(guide_class(constrained_model), *data)
    before = {name: id(p) for name, p in gaussian.guide.named_parameters()}
    loc, precision = random_gaussian(gaussian.layout.dim, guide_class is AutoMultivariateNormal)
    gaussian.write(loc, precision)
    assert {name: id(p) for name, p in gaussian.guide.named_parameters()} == before
    store = {name for name, _ in pyro.get_param_store().items()}
    assert {n for n in store if n.startswith(gaussian.guide._pyro_name)}  # still registered


def test_write_param_goes_through_the_constraint_in_place():
    module = PyroModule()
    module.scale = PyroParam(torch.ones(2, dtype=D), constraints.positive)
    module.plain = nn.Parameter(torch.zeros(2, dtype=D))
    raw, plain = module.scale_unconstrained, module.plain
    write_param(module, "scale", torch.tensor([2.0, 3.0], dtype=D))
    write_param(module, "plain", torch.tensor([-1.0, 1.0], dtype=D))
    assert module.scale_unconstrained is raw and module.plain is plain  # the same tensors
    torch.testing.assert_close(raw.detach(), torch.tensor([2.0, 3.0], dtype=D).log())
    torch.testing.assert_close(module.scale.detach(), torch.tensor([2.0, 3.0], dtype=D))
    assert plain.tolist() == [-1.0, 1.0] and not plain.grad


def test_initialize_guide_runs_once_without_moving_the_rng(data):
    guide = AutoMultivariateNormal(constrained_model)
    pyro.set_rng_seed(5)
    expected = torch.rand(2)
    pyro.set_rng_seed(5)
    like = initialize_guide(guide, data, {})
    assert torch.equal(torch.rand(2), expected)
    assert guide.prototype_trace is not None and like.dtype == D
    prototype = guide.prototype_trace
    initialize_guide(guide, data, {})  # already set up: nothing happens
    assert guide.prototype_trace is prototype


@pytest.mark.parametrize(
    "guide", [AutoDelta(constrained_model), poutine.block(constrained_model), None]
)
def test_check_gaussian_guide_names_the_guide_and_who_needs_it(guide):
    name = type(guide).__name__
    with pytest.raises(TypeError, match=rf"BLR rule 'von' needs a Gaussian guide.*not {name}"):
        check_gaussian_guide(guide, "BLR rule 'von'")
    for good in (AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal):
        check_gaussian_guide(good(constrained_model), "BLR rule 'von'")  # no error
