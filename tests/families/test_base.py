"""Every exponential family: mu = grad A, lambda <-> mu inverse, densities and entropies."""

import pytest
import torch

from pyro_blr.families.expfamily import (
    Beta,
    Categorical,
    Dirichlet,
    Gamma,
    LogNormal,
    Normal,
    VonMisesFamily,
)

D = torch.float64
CASES = {
    "normal": (Normal(), (torch.tensor([0.5, -2.0], dtype=D), torch.tensor([1.5, 0.2], dtype=D))),
    "lognormal": (
        LogNormal(),
        (torch.tensor([0.5, -2.0], dtype=D), torch.tensor([0.7, 0.2], dtype=D)),
    ),
    "gamma": (Gamma(), (torch.tensor([2.5, 0.7], dtype=D), torch.tensor([1.5, 3.0], dtype=D))),
    "beta": (Beta(), (torch.tensor([0.6, 4.0], dtype=D), torch.tensor([2.0, 1.3], dtype=D))),
    "dirichlet": (Dirichlet(), (torch.tensor([[0.5, 2.0, 3.0], [1.0, 1.0, 7.0]], dtype=D),)),
    "von_mises": (
        VonMisesFamily(),
        (torch.tensor([0.4, -2.0], dtype=D), torch.tensor([0.3, 12.0], dtype=D)),
    ),
    "categorical": (Categorical(4), (torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=D),)),
}


@pytest.mark.parametrize("name", CASES)
def test_mean_params_are_expected_sufficient_statistics(name):
    # mu = grad A (autograd) must equal E_q[T(x)], estimated from 200000 draws to 5 SE.
    family, params = CASES[name]
    eta = family.natural_params(*params)
    mu = family.mean_params(eta)
    draws = family.sufficient_statistics(family.distribution(eta).sample((200_000,))).to(D)
    stderr = draws.std(0) / 200_000**0.5
    assert ((draws.mean(0) - mu).abs() < 5 * stderr + 1e-12).all()


@pytest.mark.parametrize("name", CASES)
def test_natural_and_mean_parameters_are_inverse(name):
    family, params = CASES[name]
    eta = family.natural_params(*params)
    start = eta * 0.5 + (0.3 if name in ("gamma", "beta", "dirichlet") else 0.1) * eta.sign()
    if name in ("normal", "lognormal"):
        start = eta * torch.tensor([0.5, 1.5], dtype=D)
    start = torch.where(family.in_domain(start).unsqueeze(-1), start, eta * 0.9)
    recovered = family.from_mean(family.mean_params(eta), start)
    torch.testing.assert_close(recovered, eta, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", CASES)
def test_density_and_entropy_match_the_distribution(name):
    # log q(x) = <lambda, T(x)> - A(lambda) (base measure 1), and the entropy matches torch's.
    family, params = CASES[name]
    eta = family.natural_params(*params)
    d = family.distribution(eta)
    x = d.sample((7,))
    stats = family.sufficient_statistics(x).to(D)
    log_q = (eta * stats).sum(-1) - family.log_normalizer(eta) + family.log_base_measure(x)
    # torch's von Mises normalizer is a polynomial approximation of log I0, good to ~1e-7.
    tol = 1e-6 if name == "von_mises" else 1e-10
    torch.testing.assert_close(log_q, d.log_prob(x), rtol=tol, atol=tol)
    if name != "von_mises":  # torch has no von Mises entropy; checked by the density above
        torch.testing.assert_close(family.entropy(eta), d.entropy(), rtol=1e-10, atol=1e-10)


def test_unreachable_expectations_raise():
    family = Beta()
    eta = family.natural_params(torch.tensor(2.0, dtype=D), torch.tensor(2.0, dtype=D))
    # Jensen: E[log x] + E[log(1 - x)] <= log m + log(1 - m) <= -2 log 2 for every Beta.
    impossible = torch.tensor([-0.1, -0.1], dtype=D)
    with pytest.raises(ValueError, match="not reached"):
        family.from_mean(impossible, eta)
