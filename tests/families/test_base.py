"""The ExpFamily contract on every family: mu = grad A, lambda <-> mu inverse, densities,
entropies, and Newton failures reported as ValueError before any linear solve."""

import pytest
import torch

from pyro_blr.families import (
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


def refuse_linear_solves(monkeypatch):
    """Make every raising linear solve fail the test: Newton must check before it solves."""

    def forbidden(*args, **kwargs):
        raise AssertionError("from_mean called a linear solve that can raise")

    for name in ("solve", "cholesky", "inv"):
        monkeypatch.setattr(torch.linalg, name, forbidden)


def test_unreachable_expectations_raise_without_a_raising_solve(monkeypatch):
    # The Beta case above drifts towards eta -> infinity (the objective is unbounded below);
    # whatever the BLAS does with the ill-conditioned Fisher information, the answer is the
    # documented ValueError, and no solver exception can surface.
    refuse_linear_solves(monkeypatch)
    family = Beta()
    eta = family.natural_params(torch.tensor(2.0, dtype=D), torch.tensor(2.0, dtype=D))
    with pytest.raises(ValueError, match="not reached"):
        family.from_mean(torch.tensor([-0.1, -0.1], dtype=D), eta)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_divergent_newton_iterates_raise_value_error(monkeypatch, dtype):
    # Normal: E[x^2] < E[x]^2 is no variance; Gamma: E[log x] > log E[x] breaks Jensen; Dirichlet:
    # E[log x] positive for a simplex. Newton drifts off in each; all must end in ValueError.
    refuse_linear_solves(monkeypatch)
    cases = [
        (Normal(), torch.tensor([1.0, 0.5]), torch.tensor([0.0, -0.5])),
        (Gamma(), torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])),
        (Dirichlet(), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 1.0, 1.0])),
        (VonMisesFamily(), torch.tensor([1.5, 0.0]), torch.tensor([1.0, 0.0])),  # |mu| > 1
    ]
    for family, mu, start in cases:
        with pytest.raises(ValueError, match="not reached"):
            family.from_mean(mu.to(dtype), start.to(dtype))


def test_a_non_finite_start_is_reported_not_solved(monkeypatch):
    refuse_linear_solves(monkeypatch)
    family = Gamma()
    mu = family.mean_params(torch.tensor([1.0, -1.0], dtype=D))
    with pytest.raises(ValueError, match="not reached"):
        family.from_mean(mu, torch.tensor([float("inf"), -1.0], dtype=D))


@pytest.mark.parametrize("name", CASES)
def test_parameter_descriptions_build_the_distribution(name):
    # The names, constraints and event dims a guide reads must describe the distribution.
    family, params = CASES[name]
    eta = family.natural_params(*params)
    built = family.distribution_class(**family.params(eta))
    assert type(built) is type(family.distribution(eta))
    assert family.param_names == tuple(family.params(eta))
    for param, value in family.params(eta).items():
        assert family.param_constraints[param].check(value).all(), param
        event_dim = family.event_dim(param)
        assert value.dim() - event_dim == len(built.batch_shape), param
