"""Batched gradients and Hessians against torch.autograd.functional."""

import pytest
import torch
from torch.autograd.functional import hessian, jacobian

from pyro_blr.core import derivatives, hessian_diagonal_from_grad


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


def test_many_coordinates_take_the_functorch_batching_and_agree():
    # Above FEW_PROBES coordinates the products are batched by torch.func.vmap, below by
    # is_grads_batched: both must give autograd's Hessian.
    from pyro_blr.core.autodiff import FEW_PROBES

    theta = torch.randn(2, FEW_PROBES + 4, dtype=torch.float64)
    out = derivatives(rosenbrock, theta, hessian=True)
    for s in range(2):
        torch.testing.assert_close(out.hess[s], hessian(rosenbrock, theta[s]))


@pytest.mark.parametrize("chunk_size", [1, 5, 256])
def test_the_chunked_hessian_diagonal_is_the_full_hessians(chunk_size):
    theta = torch.randn(3, 13, dtype=torch.float64, requires_grad=True)  # chunks of 5 leave 3
    (grad,) = torch.autograd.grad(rosenbrock(theta).sum(), theta, create_graph=True)
    groups = torch.arange(13)  # one group per coordinate: the diagonal of any Hessian
    diagonal = hessian_diagonal_from_grad(grad, theta, groups, chunk_size)
    full = derivatives(rosenbrock, theta, hessian=True).hess.diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(diagonal, full)
    theta = torch.ones(2, 3, requires_grad=True)
    (grad,) = torch.autograd.grad((2 * theta).sum(), theta, create_graph=True)
    linear = hessian_diagonal_from_grad(grad, theta, torch.arange(3), chunk_size)
    assert torch.equal(linear, torch.zeros(2, 3))


def test_chunks_of_groups_give_the_grouped_diagonal():
    # Coordinates 1 and 2 do not interact (one group); chunks of one group at a time must give
    # the same diagonal as all groups at once.
    theta = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    value = theta[0, 0] * (theta[0, 1] ** 3 + theta[0, 2] ** 3)
    (grad,) = torch.autograd.grad(value, theta, create_graph=True)
    groups = torch.tensor([0, 1, 1])
    expected = torch.tensor([[0.0, 12.0, 18.0]], dtype=torch.float64)
    for chunk_size in (1, 2):
        torch.testing.assert_close(hessian_diagonal_from_grad(grad, theta, groups, chunk_size),
                                   expected)  # fmt: skip
