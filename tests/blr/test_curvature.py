"""Batched gradients and Hessians against torch.autograd.functional."""

import torch
from torch.autograd.functional import hessian, jacobian

from pyro_blr.blr.curvature import derivatives, reparam_hessian_diagonal


def rosenbrock(theta):
    x, y = theta[..., 0], theta[..., 1:]
    return ((1 - x) ** 2 + 100 * (y - x[..., None] ** 2).square().sum(-1)) + theta.sin().prod(-1)


def test_gradient_and_hessian_match_autograd_per_particle():
    theta = torch.randn(5, 3, dtype=torch.float64)
    out = derivatives(rosenbrock, theta, hessian=True)
    assert out.value.shape == (5,) and out.grad.shape == (5, 3) and out.hess.shape == (5, 3, 3)
    for s in range(5):
        torch.testing.assert_close(out.value[s], rosenbrock(theta[s]))
        torch.testing.assert_close(out.grad[s], jacobian(rosenbrock, theta[s]))
        torch.testing.assert_close(out.hess[s], hessian(rosenbrock, theta[s]))


def test_linear_function_has_zero_hessian():
    out = derivatives(lambda t: (2 * t).sum(-1), torch.ones(2, 3), hessian=True)
    assert torch.equal(out.hess, torch.zeros(2, 3, 3))


def test_reparam_estimate_is_unbiased_for_the_hessian_diagonal():
    # l(t) = sum_i a_i t_i^2 / 2 + t_0 t_1: the expected estimate is a under any Gaussian.
    # 2e5 draws: each coordinate's estimate has sd a_i * sqrt(2 / 2e5) ~ 0.003 a_i (plus the
    # cross term's), so a 2% tolerance is over six standard errors.
    a = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    loc = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    precision = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    theta = loc + torch.randn(200_000, 3, generator=gen, dtype=torch.float64) * precision.rsqrt()
    grad = a * theta + torch.stack([theta[:, 1], theta[:, 0], 0 * theta[:, 2]], -1)
    estimate = reparam_hessian_diagonal(grad, theta, loc, precision).mean(0)
    torch.testing.assert_close(estimate, a, rtol=0.02, atol=0)
