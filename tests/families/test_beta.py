"""Beta: closed-form maps and starting parameters."""

import pytest
import torch

from pyro_blr.families import Beta

D = torch.float64


def test_mean_parameters_are_the_closed_form():
    a, b = torch.tensor(0.7, dtype=D), torch.tensor(3.0, dtype=D)
    mu = Beta().mean_params(Beta().natural_params(a, b))
    expected = torch.stack([torch.digamma(a), torch.digamma(b)]) - torch.digamma(a + b)
    torch.testing.assert_close(mu, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("value", [0.0, 1e-30, 0.3, 1.0])
def test_initial_parameters_are_positive_with_the_requested_mean(value):
    params = Beta().initial_params(torch.tensor(value, dtype=D), 0.5)
    a, b = params["concentration1"], params["concentration0"]
    assert (a > 0) and (b > 0)
    assert float(a + b) == pytest.approx(4.0)
    if 0 < value < 1:
        assert float(a / (a + b)) == pytest.approx(value)
