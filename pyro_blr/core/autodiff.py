r"""Values, gradients and exact Hessians of a function of a batch of particles, by torch autograd.

The Hessian :math:`\nabla^2\ell(\theta_s)` comes from double backward: one Hessian-vector
product per coordinate, batched with ``is_grads_batched`` (a loop where an operator has no
batching rule for its backward).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Derivatives", "derivatives", "hessian_from_grad"]


class Derivatives(NamedTuple):
    """Values and derivatives of :math:`\\ell` at particles of shape ``(S, D)``.

    Attributes:
        value: :math:`\\ell(\\theta_s)`, shape ``(S,)``, detached.
        grad: :math:`\\nabla\\ell(\\theta_s)`, shape ``(S, D)``.
        hess: :math:`\\nabla^2\\ell(\\theta_s)`, shape ``(S, D, D)``, or ``None`` if not asked for.
    """

    value: Tensor
    grad: Tensor
    hess: Tensor | None


def hessian_from_grad(grad: Tensor, theta: Tensor) -> Tensor:
    """Per-particle Hessians ``(S, D, D)`` from gradients ``(S, D)`` built with ``create_graph``."""
    num_particles, dim = theta.shape
    zeros = theta.new_zeros(num_particles, dim, dim)
    if not grad.requires_grad:  # the gradient does not depend on theta: a linear log joint
        return zeros
    # Row d of every particle's Hessian is the gradient of sum_s grad[s, d] (particles are
    # independent, so cross-particle terms vanish).
    basis = torch.eye(dim, dtype=theta.dtype, device=theta.device)
    basis = basis.unsqueeze(1).expand(dim, num_particles, dim)
    try:
        (rows,) = torch.autograd.grad(
            grad, theta, grad_outputs=basis, is_grads_batched=True, allow_unused=True
        )
    except RuntimeError:  # an operator without a batching rule for its backward: loop instead
        rows = [
            torch.autograd.grad(grad[:, d].sum(), theta, retain_graph=True, allow_unused=True)[0]
            for d in range(dim)
        ]
        rows = None if rows[0] is None else torch.stack(rows)
    if rows is None:
        return zeros
    hess = rows.transpose(0, 1)
    return 0.5 * (hess + hess.mT)


def derivatives(
    fn: Callable[[Tensor], Tensor], theta: Tensor, hessian: bool = False
) -> Derivatives:
    """Evaluate ``fn`` (returning one value per particle) with its gradient and optional Hessian.

    Args:
        fn: maps particles ``(S, D)`` to values ``(S,)``; particle ``s``'s value may depend only on
            row ``s``.
        theta: the particles.
        hessian: also compute the exact Hessian of every particle.

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
        hess = hessian_from_grad(grad, theta) if hessian else None
    return Derivatives(value.detach(), grad.detach(), None if hess is None else hess.detach())
