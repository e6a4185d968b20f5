"""The set-up's gradient probe names the latent site a model cannot be differentiated in."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_blr.core import latent_layout
from pyro_blr.core.gradient_probe import check_differentiable


def two_sites(y):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    loc = a + float(b.numpy())  # b leaves torch's graph, as a NumPy simulator does
    pyro.sample("y", dist.Normal(loc, 1.0), obs=y)


def layout_of(model, *args):
    return latent_layout(pyro.poutine.trace(model).get_trace(*args))


def test_the_site_the_model_cannot_differentiate_is_named():
    y = torch.tensor(0.3)
    layout = layout_of(two_sites, y)
    with pytest.raises(ValueError, match="cannot be differentiated in latent site 'b'") as info:
        check_differentiable(two_sites, layout, torch.zeros(2), (y,))
    assert "Can't call numpy() on Tensor that requires grad" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_differentiable_model_passes():
    def model(y):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        pyro.sample("y", dist.Normal(a, scale), obs=y)

    y = torch.tensor(0.3)
    check_differentiable(model, layout_of(model, y), torch.zeros(2), (y,))


def test_an_error_of_the_model_itself_propagates_unchanged():
    armed = []

    def failing(y):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        if armed:
            raise RuntimeError("the model's own failure")
        pyro.sample("y", dist.Normal(a, 1.0), obs=y)

    y = torch.tensor(0.3)
    layout = layout_of(failing, y)
    armed.append(True)
    with pytest.raises(RuntimeError, match="the model's own failure"):
        check_differentiable(failing, layout, torch.zeros(1), (y,))


def value_through_item(y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(w.item() * 2.0, 0.5), obs=y)


def branch_through_item(y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    sign = 1.0 if w.item() > 0 else -1.0
    pyro.sample("y", dist.Normal(sign * w * 2.0, 0.5), obs=y)


def test_a_value_taken_out_of_the_graph_is_named_with_its_line():
    # w.item() feeds the likelihood: the gradient would see the prior only, and the fit would
    # return the prior as the posterior without an error. Caught by finite differences.
    y = torch.tensor(1.5)
    layout = layout_of(value_through_item, y)
    with pytest.raises(ValueError, match="takes latent site 'w' out of torch's graph") as info:
        check_differentiable(value_through_item, layout, torch.zeros(1), (y,))
    assert "dist.Normal(w.item() * 2.0, 0.5)" in str(info.value)


def test_control_flow_through_item_is_not_refused_even_at_its_kink():
    # if w.item() > 0 at w = 0 (the guide's usual start): the branch taken matches one side.
    y = torch.tensor(1.5)
    for start in (0.0, 0.7, -0.7):
        layout = layout_of(branch_through_item, y)
        check_differentiable(branch_through_item, layout, torch.tensor([start]), (y,))
