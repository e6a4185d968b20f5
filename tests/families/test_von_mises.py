"""The von Mises family: mean parameters are the Bessel ratio, large concentrations stay finite."""

import torch

from pyro_blr.families import VonMisesFamily

D = torch.float64


def test_mean_parameters_are_the_bessel_ratio():
    loc, kappa = torch.tensor([0.4, -2.0], dtype=D), torch.tensor([0.3, 5000.0], dtype=D)
    family = VonMisesFamily()
    mu = family.mean_params(family.natural_params(loc, kappa))
    ratio = torch.special.i1e(kappa) / torch.special.i0e(kappa)
    expected = ratio.unsqueeze(-1) * torch.stack([loc.cos(), loc.sin()], -1)
    torch.testing.assert_close(mu, expected, rtol=1e-12, atol=1e-14)
    assert torch.isfinite(family.log_normalizer(family.natural_params(loc, kappa * 1e10))).all()
