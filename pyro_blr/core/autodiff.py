r"""Values, gradients and curvature of a function of a batch of particles, by torch autograd.

Curvature comes from double backward, as Hessian-vector products :math:`H v` batched with
``torch.func.vmap`` over the backward pass (with ``is_grads_batched`` for a few probes, or where an
operator has no functorch batching rule for its backward; a loop where neither batches):

* ``"full"``: the Hessian :math:`\nabla^2\ell(\theta_s)`, one product per coordinate,
  :data:`HESSIAN_CHUNK` at a time (``D`` products: quadratic in ``D`` for a model linear in it);
* ``"diag"``: its diagonal, never a ``D x D`` matrix: exact by one product per group of
  non-interacting coordinates where there are at most :data:`EXACT_DIAGONAL_MAX` groups, above
  that Hutchinson's unbiased estimate from Rademacher probes, a few products whatever ``D``
  (:func:`hessian_diagonal_estimate`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "EXACT_DIAGONAL_MAX",
    "Derivatives",
    "derivatives",
    "exact_diagonal",
    "hessian_diagonal_estimate",
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
            when computed by groups or asked for as ``"diag"``), or ``None`` if not asked for.
    """

    value: Tensor
    grad: Tensor
    hess: Tensor | None


FEW_PROBES = 8
"""Up to this many probes, :func:`_hessian_products` batches with ``is_grads_batched``."""

DIAGONAL_CHUNK = 256
"""Hessian-vector products :func:`hessian_diagonal_from_grad` batches at once."""

HESSIAN_CHUNK = 1024
"""Hessian-vector products :func:`hessian_from_grad` batches at once: memory holds this many
backward passes (on ``X @ w``, ``chunk x N`` floats per particle and intermediate), whatever
``D``. Smaller chunks cost time, and one product at a time costs the most, for the same Hessian
to float32 rounding (the benchmark ``vectorization``, "Hessian chunks", at ``N = 10^4,
D = 1000``). Up to ``D = 1024`` the Hessian is one batched pass; above, memory stays
bounded."""

EXACT_DIAGONAL_MAX = 64
"""Up to this many groups of coordinates (``D`` for a model without local latents) the
``"diag"`` curvature is exact, by one batched Hessian-vector product per group; above, it is
Hutchinson's estimate. The exact diagonal's cost grows with ``D`` (``D`` batched products, each
with the data's matrix-vector work) where the estimate's stays at one product: up to this size
it is a small multiple of the estimate's, beyond it the multiple keeps growing (the benchmark
``vectorization``, "The Hessian's diagonal: exact or estimated", on logistic regression at
``N = 10^4``)."""


def _hessian_products(grad: Tensor, theta: Tensor, probes: Tensor) -> Tensor:
    """Each particle's Hessian times each probe, ``(P, S, D)`` for probes ``(P, S, D)``
    (particles are independent, so cross-particle terms vanish; zero where the gradient does
    not reach ``theta``).

    Many probes are batched by ``torch.func.vmap`` over the backward pass, whose batching rules
    turn a product with a batched vector into one matrix product: ``X @ w``'s double backward
    reads ``X`` once for all probes, and was the faster with ``D = 100`` probes at
    ``N = 10^5``. Up to :data:`FEW_PROBES` probes the data are read a few times at most, and
    ``is_grads_batched``, with less overhead per operation, was the faster on a small model
    (both measured by the benchmark ``vectorization``, "Hessian-vector products: vmap or
    is_grads_batched").
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


def hessian_from_grad(grad: Tensor, theta: Tensor, chunk_size: int = HESSIAN_CHUNK) -> Tensor:
    """Per-particle Hessians ``(S, D, D)`` from gradients ``(S, D)`` built with ``create_graph``
    (or one Hessian ``(D, D)`` from a gradient ``(D,)``): the products with the ``D`` unit
    vectors, batched under ``torch.func.vmap`` ``chunk_size`` at a time (memory holds that many
    backward passes), symmetrized.

    Example:
        >>> import torch
        >>> theta = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> (grad,) = torch.autograd.grad(theta[0] ** 2 * theta[1], theta, create_graph=True)
        >>> hessian_from_grad(grad, theta, chunk_size=1)
        tensor([[4., 2.],
                [2., 0.]])
    """
    dim = theta.shape[-1]
    if not grad.requires_grad:  # the gradient does not depend on theta: a linear log joint
        return theta.new_zeros(*theta.shape, dim)
    # Row d of every particle's Hessian is its Hessian times the unit vector e_d.
    basis = torch.eye(dim, dtype=theta.dtype, device=theta.device)
    probes = basis.reshape(dim, *[1] * (theta.dim() - 1), dim).expand(dim, *theta.shape)
    rows = [
        _hessian_products(grad, theta, probes[first : first + chunk_size])
        for first in range(0, dim, chunk_size)
    ]
    hess = torch.cat(rows).movedim(0, -2)
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


def exact_diagonal(groups: Tensor | int) -> bool:
    """Whether the ``"diag"`` curvature of :func:`derivatives` is exact for these ``groups``
    (``(D,)``, or a number of coordinates ``D`` without local latents): at most
    :data:`EXACT_DIAGONAL_MAX` groups."""
    count = groups if isinstance(groups, int) else int(groups.max()) + 1 if groups.numel() else 0
    return count <= EXACT_DIAGONAL_MAX


def hessian_diagonal_estimate(
    grad: Tensor, theta: Tensor, probes: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    r"""Hutchinson's unbiased estimate of each particle's Hessian diagonal ``(S, D)``, from
    gradients ``(S, D)`` built with ``create_graph``: ``probes`` Hessian-vector products per
    particle, all batched in one backward pass, whatever ``D``.

    .. math::
        \hat d = \frac1P \sum_{p=1}^P v_p \odot H v_p, \quad v_p \in \{-1, 1\}^D
        \text{ uniform}, \qquad \mathbb E[\hat d_i] = H_{ii},\quad
        \operatorname{Var}[\hat d_i] = \frac1P \sum_{j \ne i} H_{ij}^2,

    since :math:`v_i (H v)_i = H_{ii} + \sum_{j\ne i} v_i v_j H_{ij}` and
    :math:`v_i^2 = 1`: the noise is the row's off-diagonal mass, zero for a diagonal Hessian
    (Rademacher probes give the least variance among probes with independent entries). It is
    not positive even where :math:`H` is: the BLR's precision update keeps the precision
    positive for any estimate, and its running average over steps (weight ``lr``) averages the
    probes' noise, as it does the draws' (Monte Carlo over :math:`q` and over the probes are
    one expectation). Each probe costs one product, about two gradients.

    References:
        | Bekas, Kokiopoulou & Saad, An estimator for the diagonal of a matrix, Applied
          Numerical Mathematics 57 (2007) https://doi.org/10.1016/j.apnum.2007.01.003
        | Hutchinson, A stochastic estimator of the trace of the influence matrix for Laplacian
          smoothing splines (1990)

    Args:
        grad: gradients ``(S, D)`` with a graph to ``theta``.
        theta: the particles ``(S, D)``.
        probes: Rademacher probes per particle (the variance falls as ``1 / probes``).
        generator: draws the probes (``None``: torch's global generator).

    Example:
        >>> import torch
        >>> theta = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> value = (theta**3).sum()  # a diagonal Hessian: the estimate is exact
        >>> (grad,) = torch.autograd.grad(value, theta, create_graph=True)
        >>> hessian_diagonal_estimate(grad, theta, probes=1)
        tensor([[ 6., 12.]])
    """
    if not grad.requires_grad:
        return theta.new_zeros(theta.shape)
    signs = torch.randint(0, 2, (probes, *theta.shape), generator=generator,
                          device=theta.device)  # fmt: skip
    vectors = (2 * signs - 1).to(theta.dtype)
    products = _hessian_products(grad, theta, vectors)
    return (vectors * products).mean(0).detach()


def derivatives(
    fn: Callable[[Tensor], Tensor],
    theta: Tensor,
    hessian: bool | str = False,
    groups: Tensor | None = None,
    *,
    probes: int = 1,
    generator: torch.Generator | None = None,
) -> Derivatives:
    """Evaluate ``fn`` (returning one value per particle) with its gradient and optional
    curvature.

    Args:
        fn: maps particles ``(S, D)`` to values ``(S,)``; particle ``s``'s value may depend only on
            row ``s``.
        theta: the particles.
        hessian: the curvature: ``False`` (or ``"none"``) none; ``True`` (or ``"full"``) the exact
            Hessian ``(S, D, D)`` of every particle by batched Hessian-vector products (with
            ``groups``: its exact diagonal ``(S, D)``, one product per group); ``"diag"`` the
            Hessian's diagonal ``(S, D)``, never a ``D x D`` matrix: exact by one product per
            group where there are at most :data:`EXACT_DIAGONAL_MAX` groups
            (:func:`exact_diagonal`), above that Hutchinson's unbiased estimate
            (:func:`hessian_diagonal_estimate`), whose cost does not grow with ``D``.
        groups: each coordinate's group of non-interacting coordinates (see
            :func:`hessian_diagonal_from_grad`); ``None``: one group per coordinate.
        probes: with ``"diag"`` estimated, Rademacher probes per particle.
        generator: with ``"diag"`` estimated, draws the probes.

    Example:
        >>> import torch
        >>> out = derivatives(lambda t: (t**3).sum(-1), torch.tensor([[1.0, 2.0]]), hessian=True)
        >>> out.grad.tolist(), out.hess.diagonal(dim1=-2, dim2=-1).tolist()
        ([[3.0, 12.0]], [[6.0, 12.0]])
        >>> derivatives(lambda t: (t**3).sum(-1), torch.tensor([[1.0, 2.0]]), "diag").hess
        tensor([[ 6., 12.]])
    """
    kind = {False: "none", True: "full"}.get(hessian, hessian)
    if kind not in ("none", "full", "diag"):
        raise ValueError(f"hessian={hessian!r}: choose False/'none', True/'full' or 'diag'")
    if kind == "full" and groups is not None:
        kind = "grouped"
    if kind == "diag":
        groups = torch.arange(theta.shape[-1], device=theta.device) if groups is None else groups
        kind = "grouped" if exact_diagonal(groups) else "estimated"
    with torch.enable_grad():
        theta = theta.detach().requires_grad_(True)
        value = fn(theta)
        (grad,) = torch.autograd.grad(value.sum(), theta, create_graph=kind != "none")
        if kind == "none":
            hess = None
        elif kind == "grouped":
            hess = hessian_diagonal_from_grad(grad, theta, groups)
        elif kind == "estimated":
            hess = hessian_diagonal_estimate(grad, theta, probes, generator)
        else:
            hess = hessian_from_grad(grad, theta)
    return Derivatives(value.detach(), grad.detach(), None if hess is None else hess.detach())
