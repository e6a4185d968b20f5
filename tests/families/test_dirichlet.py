"""Dirichlet: closed-form maps, event dimensions and starting parameters."""

import torch

from pyro_blr.families import Dirichlet

D = torch.float64


def test_mean_parameters_are_the_closed_form():
    alpha = torch.tensor([[0.5, 2.0, 3.0], [1.0, 1.0, 7.0]], dtype=D)
    mu = Dirichlet().mean_params(Dirichlet().natural_params(alpha))
    expected = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))
    torch.testing.assert_close(mu, expected, rtol=1e-14, atol=1e-14)
    assert Dirichlet().event_dim("concentration") == 1


def test_initial_parameters_keep_every_concentration_positive():
    value = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float32)
    alpha = Dirichlet().initial_params(value, 0.1)["concentration"]
    assert (alpha > 0).all() and torch.isfinite(alpha).all()
    torch.testing.assert_close(alpha.sum(), torch.tensor(100.0))
