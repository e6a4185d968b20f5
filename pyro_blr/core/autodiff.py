r"""Values, gradients and exact Hessians of a function of a batch of particles, by torch autograd.

The Hessian :math:`\nabla^2\ell(\theta_s)` comes from double backward: one Hessian-vector
product per coordinate, batched with ``torch.func.vmap`` over the backward pass (with
``is_grads_batched`` for a few coordinates, or where an operator has no functorch batching rule
for its backward; a loop where neither batches).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Derivatives",
    "derivatives",
    "hessian_diagonal_from_grad",
    "hessian_from_grad",
    "hessian_of_scalar",
]


class Derivatives(NamedTuple):
    """Values and derivatives of :math:`\\ell` at particles of shape ``(S, D)``.

    Attributes:
        value: :math:`\\ell(\\theta_s)`, shape ``(S,)``, detached.
        grad: :math:`\\nabla\\ell(\\theta_s)`, shape ``(S, D)``.
        hess: :math:`\\nabla^2\\ell(\\theta_s)`, shape ``(S, D, D)`` (its diagonal ``(S, D)``
            when computed by groups), or ``None`` if not asked for.
    """

    value: Tensor
    grad: Tensor
    hess: Tensor | None


FEW_PROBES = 8
"""Up to this many probes, :func:`_hessian_products` batches with ``is_grads_batched``."""

DIAGONAL_CHUNK = 256
"""Hessian-vector products :func:`hessian_diagonal_from_grad` batches at once."""


def _hessian_products(grad: Tensor, theta: Tensor, probes: Tensor) -> Tensor:
    """Each particle's Hessian times each probe, ``(P, S, D)`` for probes ``(P, S, D)``
    (particles are independent, so cross-particle terms vanish; zero where the gradient does
    not reach ``theta``).

    Many probes are batched by ``torch.func.vmap`` over the backward pass, whose batching rules
    turn a product with a batched vector into one matrix product: ``X @ w``'s double backward
    reads ``X`` once for all probes, where ``is_grads_batched`` reads it once per probe (17
    times slower at ``N = 10^5, D = 100``). Up to :data:`FEW_PROBES` probes the data are read
    a few times at most, and ``is_grads_batched``, with less overhead per operation, is the
    faster (15% a step on posteriordb's ``arma11``, a 200-step recursion with ``D = 4``).
    Either falls back to the other, then to a loop, where an operator has no batching rule
    for its backward."""

    def product(probe: Tensor) -> Tensor:
        (row,) = torch.autograd.grad(grad, theta, probe, retain_graph=True, allow_unused=True)
        return torch.zeros_like(theta) if row is None else row

    def by_functorch() -> Tensor:
        return torch.func.vmap(product)(probes)

    def by_autograd() -> Tensor:
        (rows,) = torch.autograd.grad(
            grad, theta, grad_outputs=probes, is_grads_batched=True, allow_unused=True,
            retain_graph=True,
        )  # fmt: skip
        return torch.zeros_like(probes) if rows is None else rows

    ways = (by_autograd, by_functorch) if len(probes) <= FEW_PROBES else (by_functorch, by_autograd)
    for way in ways:
        try:
            return way()
        except RuntimeError:
            continue
    return torch.stack([product(probe) for probe in probes])


def hessian_from_grad(grad: Tensor, theta: Tensor) -> Tensor:
    """Per-particle Hessians ``(S, D, D)`` from gradients ``(S, D)`` built with ``create_graph``
    (or one Hessian ``(D, D)`` from a gradient ``(D,)``)."""
    dim = theta.shape[-1]
    if not grad.requires_grad:  # the gradient does not depend on theta: a linear log joint
        return theta.new_zeros(*theta.shape, dim)
    # Row d of every particle's Hessian is its Hessian times the unit vector e_d.
    basis = torch.eye(dim, dtype=theta.dtype, device=theta.device)
    probes = basis.reshape(dim, *[1] * (theta.dim() - 1), dim).expand(dim, *theta.shape)
    hess = _hessian_products(grad, theta, probes).movedim(0, -2)
    return 0.5 * (hess + hess.mT)


def hessian_of_scalar(value: Tensor, theta: Tensor) -> Tensor:
    """The Hessian ``(D, D)``, detached, of a scalar ``value`` built from ``theta`` ``(D,)`` with
    autograd (zero where it does not depend on it, or only linearly).

    Example:
        >>> import torch
        >>> theta = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> hessian_of_scalar(theta[0] ** 2 * theta[1], theta)
        tensor([[4., 2.],
                [2., 0.]])
    """
    if not value.requires_grad:
        return theta.new_zeros(theta.shape[-1], theta.shape[-1])
    (grad,) = torch.autograd.grad(value, theta, create_graph=True, retain_graph=True)
    return hessian_from_grad(grad, theta).detach()


def hessian_diagonal_from_grad(
    grad: Tensor, theta: Tensor, groups: Tensor, chunk_size: int = DIAGONAL_CHUNK
) -> Tensor:
    r"""Per-particle Hessian diagonals ``(S, D)`` from gradients ``(S, D)`` built with
    ``create_graph``, with one Hessian-vector product per group of coordinates, ``chunk_size``
    groups at a time (memory holds that many backward passes, whatever the number of groups).

    ``groups`` ``(D,)`` gives each coordinate's group, ``0 .. G-1``. Coordinates of one group
    must not interact (:math:`\partial^2\ell / \partial\theta_i \partial\theta_j = 0` for
    ``i != j`` in a group), as a latent's rows in different elements of a plate do not: then
    :math:`(H 1_g)_i = H_{ii}` for every ``i`` in group ``g`` (Curtis, Powell & Reid 1974, the
    column grouping of a sparse Jacobian). ``torch.arange(D)``, one group per coordinate, gives
    the diagonal of any Hessian.

    Example:
        >>> import torch
        >>> theta = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
        >>> value = theta[0, 0] * (theta[0, 1] ** 3 + theta[0, 2] ** 3)  # 1 and 2 do not interact
        >>> (grad,) = torch.autograd.grad(value, theta, create_graph=True)
        >>> hessian_diagonal_from_grad(grad, theta, torch.tensor([0, 1, 1]))
        tensor([[ 0., 12., 18.]])
    """
    num_particles, dim = theta.shape
    diagonal = theta.new_zeros(num_particles, dim)
    if not grad.requires_grad:
        return diagonal
    num_groups = int(groups.max()) + 1
    for first in range(0, num_groups, chunk_size):
        chunk = torch.arange(first, min(first + chunk_size, num_groups), device=groups.device)
        probes = (groups == chunk[:, None]).to(theta.dtype)  # (C, D)
        rows = _hessian_products(
            grad, theta, probes.unsqueeze(1).expand(len(chunk), num_particles, dim)
        )
        (coordinates,) = ((groups >= first) & (groups < first + len(chunk))).nonzero(as_tuple=True)
        diagonal[:, coordinates] = rows[groups[coordinates] - first, :, coordinates].T
    return diagonal


def derivatives(
    fn: Callable[[Tensor], Tensor],
    theta: Tensor,
    hessian: bool = False,
    groups: Tensor | None = None,
) -> Derivatives:
    """Evaluate ``fn`` (returning one value per particle) with its gradient and optional Hessian.

    Args:
        fn: maps particles ``(S, D)`` to values ``(S,)``; particle ``s``'s value may depend only on
            row ``s``.
        theta: the particles.
        hessian: also compute the exact Hessian of every particle.
        groups: with ``hessian``, only the Hessian's diagonal ``(S, D)``, by one
            Hessian-vector product per group of non-interacting coordinates (see
            :func:`hessian_diagonal_from_grad`).

    Example:
        >>> import torch
        >>> out = derivatives(lambda t: (t**3).sum(-1), torch.tensor([[1.0, 2.0]]), hessian=True)
        >>> out.grad.tolist(), out.hess.diagonal(dim1=-2, dim2=-1).tolist()
        ([[3.0, 12.0]], [[6.0, 12.0]])
    """
    with torch.enable_grad():
        theta = theta.detach().requires_grad_(True)
        value = fn(theta)
        (grad,) = torch.autograd.grad(value.sum(), theta, create_graph=hessian)
        if not hessian:
            hess = None
        elif groups is not None:
            hess = hessian_diagonal_from_grad(grad, theta, groups)
        else:
            hess = hessian_from_grad(grad, theta)
    return Derivatives(value.detach(), grad.detach(), None if hess is None else hess.detach())
