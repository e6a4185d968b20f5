"""Gamma: its maps in closed form, and finite starting parameters from an underflowed median."""

import pytest
import torch

from pyro_blr.families import Gamma

D = torch.float64


def test_mean_parameters_are_the_closed_form():
    # mu = (digamma(a) - log b, a / b).
    a, b = torch.tensor(2.5, dtype=D), torch.tensor(1.5, dtype=D)
    mu = Gamma().mean_params(Gamma().natural_params(a, b))
    expected = torch.stack([torch.digamma(a) - b.log(), a / b])
    torch.testing.assert_close(mu, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [0.0, 1e-38, 1e-30, 1e30])
def test_initial_parameters_stay_finite_and_moderate(dtype, value):
    # Clamped into [eps, 1/eps]: the rate is at most (1/init_scale^2)/eps.
    eps = torch.finfo(dtype).eps
    params = Gamma().initial_params(torch.tensor(value, dtype=dtype), 0.1)
    rate = float(params["rate"])
    assert float(params["concentration"]) == pytest.approx(100.0)
    assert 100 * eps * (1 - 1e-6) <= rate <= 100 / eps * (1 + 1e-6)


def test_moderate_values_start_at_their_mean():
    params = Gamma().initial_params(torch.tensor([0.5, 3.0], dtype=D), 0.2)
    mean = params["concentration"] / params["rate"]
    torch.testing.assert_close(mean, torch.tensor([0.5, 3.0], dtype=D))
