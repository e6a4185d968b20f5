"""The Gaussian family's maps against autograd and torch.distributions, in float64."""

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from pyro_blr.families import DIAGONAL, FULL


def random_gaussian(family, dim=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    loc = torch.randn(dim, generator=gen, dtype=torch.float64)
    if family.diagonal:
        return loc, torch.rand(dim, generator=gen, dtype=torch.float64) + 0.5
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    return loc, a @ a.T + dim * torch.eye(dim, dtype=torch.float64)


@pytest.mark.parametrize("family", [DIAGONAL, FULL], ids=["diagonal", "full"])
def test_natural_and_mean_maps_are_inverse(family):
    loc, precision = random_gaussian(family)
    for forward, backward in [
        (family.natural_params, family.from_natural),
        (family.mean_params, family.from_mean),
    ]:
        loc2, precision2 = backward(*forward(loc, precision))
        torch.testing.assert_close(loc2, loc, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(precision2, precision, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", [DIAGONAL, FULL], ids=["diagonal", "full"])
def test_mean_params_are_the_gradient_of_the_log_normalizer(family):
    loc, precision = random_gaussian(family)
    eta1, eta2 = (t.clone().requires_grad_(True) for t in family.natural_params(loc, precision))
    grad1, grad2 = torch.autograd.grad(family.log_normalizer(eta1, eta2), (eta1, eta2))
    mu1, mu2 = family.mean_params(loc, precision)
    torch.testing.assert_close(grad1, mu1, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad2, mu2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", [DIAGONAL, FULL], ids=["diagonal", "full"])
def test_entropy_and_log_normalizer_match_torch(family):
    loc, precision = random_gaussian(family)
    if family.diagonal:
        reference = Normal(loc, precision.rsqrt())
        entropy, log_prob0 = reference.entropy().sum(), reference.log_prob(torch.zeros(4)).sum()
    else:
        reference = MultivariateNormal(loc, precision_matrix=precision)
        entropy, log_prob0 = reference.entropy(), reference.log_prob(torch.zeros(4))
    torch.testing.assert_close(family.entropy(precision), entropy, rtol=1e-12, atol=1e-12)
    # log q(0) = <eta, T(0)> - A(eta) = -A(eta)
    torch.testing.assert_close(-family.log_normalizer(*family.natural_params(loc, precision)),
                               log_prob0, rtol=1e-12, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("family", [DIAGONAL, FULL], ids=["diagonal", "full"])
def test_sample_has_the_covariance_of_the_precision(family):
    # Feeding the identity as noise gives rows A with A^T A = Cov exactly.
    loc, precision = random_gaussian(family)
    rows = family.sample(torch.zeros(4, dtype=torch.float64), precision, torch.eye(4).double())
    covariance = torch.diag(1 / precision) if family.diagonal else torch.linalg.inv(precision)
    torch.testing.assert_close(rows.T @ rows, covariance, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(family.solve(precision, loc), covariance @ loc)
