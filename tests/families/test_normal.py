"""Normal and LogNormal: the diagonal Gaussian's maps on one coordinate; the LogNormal's base
measure."""

import torch

from pyro_blr.families import DIAGONAL, LogNormal, Normal

D = torch.float64


def test_normal_is_the_one_dimensional_diagonal_gaussian():
    loc, scale = torch.tensor([0.3, -2.0], dtype=D), torch.tensor([0.5, 4.0], dtype=D)
    eta = Normal().natural_params(loc, scale)
    eta1, eta2 = DIAGONAL.natural_params(loc, scale.pow(-2))
    torch.testing.assert_close(eta, torch.stack([eta1, eta2], -1))
    mu1, mu2 = DIAGONAL.mean_params(loc, scale.pow(-2))
    torch.testing.assert_close(Normal().mean_params(eta), torch.stack([mu1, mu2], -1))


def test_lognormal_entropy_includes_its_base_measure():
    # H[LogNormal(m, s)] = H[Normal(m, s)] + m.
    loc, scale = torch.tensor(0.8, dtype=D), torch.tensor(0.3, dtype=D)
    eta = LogNormal().natural_params(loc, scale)
    exact = torch.distributions.LogNormal(loc, scale).entropy()
    torch.testing.assert_close(LogNormal().entropy(eta), exact, rtol=1e-14, atol=1e-14)
    assert LogNormal().initial_params(torch.tensor(0.0), 0.1)["loc"].isfinite()
