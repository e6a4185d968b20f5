"""controlled_gradient: exact where the loss is linear in the sufficient statistics, unbiased
where it is not, the plain reparameterization estimate where no fit is possible."""

import pytest
import torch

from pyro_blr.blr.steppers.expfamily_estimates import (
    controlled_gradient,
    per_draw_leaves,
    statistics_jacobian,
)
from pyro_blr.families import Dirichlet, Gamma, Normal

D = torch.float64


def _estimate(family, eta, loss, num):
    leaves = per_draw_leaves(eta, num)
    draws = family.distribution(leaves).rsample()
    values = loss(draws)
    (grads,) = torch.autograd.grad(values.sum(), leaves, retain_graph=True)
    jac = statistics_jacobian(family, draws, leaves)
    return controlled_gradient(family.fisher(eta), grads, jac), grads.mean(0)


@pytest.mark.parametrize("num", [3, 16])
@pytest.mark.parametrize(
    "family, eta",
    [
        (Gamma(), torch.tensor([399.0, -100.0], dtype=D)),  # concentrated: log x ~ x
        (Normal(), torch.tensor([3.0, -0.5], dtype=D)),
        (Dirichlet(), torch.tensor([2.0, 0.5, 7.0], dtype=D)),
    ],
    ids=["gamma", "normal", "dirichlet"],
)
def test_exact_on_a_loss_linear_in_the_statistics(family, eta, num):
    # l = <c, T(x)>: its lambda-gradient is F c exactly, from 3 draws on (a leave-one-out fit
    # from 2 draws). Round-off through F's condition number (1e5 for the Gamma): 1e-9.
    torch.manual_seed(0)
    c = torch.linspace(-1.0, 2.0, eta.shape[-1], dtype=D)
    exact = family.fisher(eta) @ c
    estimate, plain = _estimate(family, eta, lambda x: family.sufficient_statistics(x) @ c, num)
    torch.testing.assert_close(estimate, exact, rtol=1e-9, atol=1e-9)
    plain_mu = torch.linalg.solve(family.fisher(eta), plain)  # plain reparameterization: not
    assert not torch.allclose(plain_mu, c, rtol=1e-6)  # exact (Monte Carlo error times F^-1)


def test_unbiased_where_the_loss_is_not_linear_in_the_statistics():
    # l = x^4 under N(m, s^2): E[l] = m^4 + 6 m^2 s^2 + 3 s^4, differentiated in lambda by
    # autograd. 20000 independent estimates (a batch of sites) of 3 draws each: the mean is
    # within 5 standard errors of the exact gradient (a 6e-7 false-alarm rate per coordinate).
    torch.manual_seed(0)
    family = Normal()
    eta = torch.tensor([1.2, -0.8], dtype=D)

    def expected(e):
        precision = -2 * e[1]
        m, var = e[0] / precision, 1 / precision
        return m**4 + 6 * m**2 * var + 3 * var**2

    exact = torch.func.grad(expected)(eta)
    batch = eta.expand(20000, 2)
    estimates, _ = _estimate(family, batch, lambda x: x.pow(4), 3)
    stderr = estimates.std(0) / 20000**0.5
    assert ((estimates.mean(0) - exact).abs() < 5 * stderr).all()


@pytest.mark.parametrize("num", [1, 2])
def test_too_few_draws_for_a_fit_give_the_plain_estimate(num):
    # A fit on both of 2 draws would be exact on a conjugate site but biased elsewhere (a secant:
    # on x^4 / 4 it gives two thirds of grad_mu), so 2 draws keep the unbiased plain estimate.
    torch.manual_seed(0)
    family = Normal()
    eta = torch.tensor([0.5, -1.0], dtype=D)
    estimate, plain = _estimate(family, eta, lambda x: x.pow(4) / 4, num)
    torch.testing.assert_close(estimate, plain, rtol=0, atol=0)
