r"""Four ways to the Jacobian of a model's per-datum terms, cheapest first.

For the minibatch's per-datum terms :math:`\tilde\ell_i(\theta)`, :math:`i \in B`, of a latent
vector :math:`\theta \in \mathbb R^D`, the Jacobian rows :math:`\nabla\tilde\ell_i` cost

* **one run per datum** (:func:`rows_by_one_datum_runs`): the model run on datum :math:`i`
  alone, batched by ``torch.func.vmap`` over the data plate's indices: about one run's worth of
  work over the data. It needs a model that reads its data through the plate's indices
  (``with pyro.plate("data", N) as idx: ... X[idx]``), and it is used only where those runs
  reproduce the whole run (:func:`reproduces`);
* **one run per datum's arguments**: the same, for a model that reads its data whole
  (``X @ w`` inside ``pyro.plate("data", N)``), run on each datum's slice of its arguments
  (:func:`datum_arguments`: every tensor whose leading dimension is the data plate's size
  :math:`N`, cut to that datum's row, vmapped along that dimension without a copy). Reverse
  mode under ``vmap``: one batched backward pass over the data, linear in :math:`D`, where
  forward mode costs :math:`D` passes. Used on minibatches of :data:`FORWARD_MIN_DATA` data
  or more, and only where the runs reproduce every datum's term and the gradient
  (:func:`reproduces`);
* **forward mode** (:func:`rows_by_forward_mode`): :math:`D` Jacobian-vector products of the
  whole run, batched: the cost of :math:`D` forward passes, for any model without random draws
  (``X @ w`` inside ``pyro.plate("data", N)`` included). Used where :math:`D < B` and the
  minibatch is large (:data:`FORWARD_MIN_DATA`), and only where its rows sum to the whole
  run's gradient (:func:`sums_to_gradient`);
* **a batched backward pass** (:func:`rows_by_batched_backward`): :math:`B` vector-Jacobian
  products of the whole run, :math:`B^2` in all; always applicable.

What each way costs is measured by the benchmark ``per_datum_cost`` (``python -m
benchmarks.per_datum_cost``; its table is on the docs' Benchmarks page, "What per-datum
gradients cost"): on a model that reads ``X`` whole with few coordinates, forward mode costs a
few gradients where the batched backward pass costs hundreds; on a network with more
coordinates than data, the runs on one datum cost a few gradients where the other two cost
hundreds; and with many data and coordinates (``X @ w`` at :math:`N = 10^4, D = 1000`) forward
mode's :math:`D` passes grow quadratically in :math:`D` where the runs on each datum's arguments
do not.

References:
    | Jacobians, Hessians, hvp, vhp, and more: composing function transforms (PyTorch
      tutorial) https://pytorch.org/tutorials/intermediate/jacobians_hessians.html
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["FORWARD_CHUNK", "FORWARD_MIN_DATA", "datum_arguments", "reproduces",
           "rows_by_batched_backward", "rows_by_forward_mode", "rows_by_one_datum_runs",
           "sums_to_gradient"]  # fmt: skip

logger = logging.getLogger(__name__)

FORWARD_CHUNK = 64
"""Jacobian-vector products batched at once in forward mode (each holds a run's activations)."""

FORWARD_MIN_DATA = 512
"""Forward mode only for minibatches of at least this many data: below, the batched backward
pass costs less than forward mode's overhead under ``torch.func`` (the benchmark
``per_datum_cost``'s logistic regression at ``B = 300, D = 3``; with more coordinates forward
mode can win on fewer data)."""

Terms = Callable[..., tuple[Tensor, Tensor]]
"""``(theta, subsample, *rows) -> (per-datum terms (B,), their scales (B,))`` from one model run
(``rows``: a datum's rows of the arguments cut by :func:`datum_arguments`, where any)."""


def rows_by_one_datum_runs(
    terms: Terms,
    row: Tensor,
    plate: str,
    indices: Tensor,
    subsample: dict[str, Tensor],
    data: tuple[Tensor, ...] = (),
) -> tuple[Tensor, Tensor] | None:
    """Each datum's unscaled gradients and terms, ``(B, D)`` and ``(B,)`` in the rows' order
    (each observed site's data in turn), from the model run on that datum alone; ``None``
    where a run fails (an operator ``vmap`` cannot batch, a model that reads its data whole and
    so mismatches a plate of one, a ``subsample_size`` Pyro holds to).

    Reverse mode under ``torch.func.vmap`` over the data: one batched backward pass. With
    ``data`` (tensors whose leading dimension is the plate's full size), datum ``i``'s run also
    gets row ``indices[i]`` of each, shaped ``(1, ...)``, as ``terms``' further arguments (see
    :func:`datum_arguments`).

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0, 3.0])
        >>> def terms(theta, subsample):  # l_i = x_i theta^2 / 2
        ...     idx = subsample.get("data", torch.arange(3))
        ...     return x[idx] * theta[0] ** 2 / 2, torch.ones(len(idx))
        >>> jac, value = rows_by_one_datum_runs(terms, torch.ones(1), "data", torch.arange(3), {})
        >>> jac.squeeze(-1), value
        (tensor([1., 2., 3.]), tensor([0.5000, 1.0000, 1.5000]))
    """

    def one(theta: Tensor, index: Tensor, *rows: Tensor) -> tuple[Tensor, Tensor]:
        rows = tuple(value.unsqueeze(0) for value in rows)
        per_datum, scale = terms(theta, {**subsample, plate: index}, *rows)
        unscaled = per_datum / scale
        return unscaled, unscaled

    if data and not torch.equal(indices, torch.arange(len(indices), device=indices.device)):
        data = tuple(value.index_select(0, indices) for value in data)  # the minibatch's rows
    in_dims = (None, 0, *[0] * len(data))
    batched = torch.func.vmap(torch.func.jacrev(one, has_aux=True), in_dims=in_dims)
    try:
        jac, value = batched(row.detach(), indices[:, None], *data)
    except Exception as error:  # any failure of the runs on one datum: another way is taken
        logger.debug("per-datum gradients: runs on one datum failed (%s)", error)
        return None
    # (B, sites, D) datum-major -> the rows' order, each observed site's data in turn; detached
    # from a model's own parameters, which the runs read too
    jac = jac.detach().transpose(0, 1).reshape(-1, row.shape[-1])
    return jac, value.detach().transpose(0, 1).reshape(-1)


def datum_arguments(args: tuple, kwargs: dict, size: int) -> tuple[tuple, Callable]:
    """The tensors among a model's arguments that hold one row per datum (leading dimension
    the data plate's full ``size``), and a function that puts one datum's rows ``(1, ...)`` in
    their place: ``with_rows(*rows) -> (args, kwargs)``. A tensor of that length that is not
    data (a coincidence of sizes) makes the runs differ from the whole run, which
    :func:`reproduces` refuses.

    Example:
        >>> import torch
        >>> X, y = torch.arange(6.0).reshape(3, 2), torch.tensor([1.0, 0.0, 1.0])
        >>> data, with_rows = datum_arguments((X, 2.0), {"y": y}, 3)
        >>> len(data), with_rows(X[1:2], y[1:2])
        (2, ((tensor([[2., 3.]]), 2.0), {'y': tensor([0.])}))
    """

    def is_data(value) -> bool:
        return torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size

    places = [i for i, value in enumerate(args) if is_data(value)]
    names = [name for name, value in kwargs.items() if is_data(value)]
    data = tuple(args[i] for i in places) + tuple(kwargs[name] for name in names)

    def with_rows(*rows: Tensor) -> tuple[tuple, dict]:
        cut_args, cut_kwargs = list(args), dict(kwargs)
        for i, value in zip(places, rows[: len(places)], strict=True):
            cut_args[i] = value
        for name, value in zip(names, rows[len(places) :], strict=True):
            cut_kwargs[name] = value
        return tuple(cut_args), cut_kwargs

    return data, with_rows


def sums_to_gradient(
    jac: Tensor, per_datum: Tensor, row: Tensor, scale: Tensor | None = None
) -> bool:
    """Whether scaled rows ``jac`` ``(B, D)`` sum to the gradient of ``per_datum.sum()`` (built
    from ``row`` with autograd; one backward pass), to a tolerance relative to the size of the
    rows summed (a sum that cancels, at a mode, keeps their rounding). A way that reruns the
    model (runs on one datum, forward mode) must pass it: a rerun that saw other data (numpy
    randomness, a model that pulls its next batch) does not. With ``scale`` ``(B,)``, the rows
    are ``jac * scale[:, None]``, never formed.

    Example:
        >>> import torch
        >>> row = torch.ones(1, requires_grad=True)
        >>> per_datum = torch.tensor([1.0, 2.0]) * row**2 / 2
        >>> sums_to_gradient(torch.tensor([[1.0], [2.0]]), per_datum, row)
        True
        >>> sums_to_gradient(torch.tensor([[1.0], [3.0]]), per_datum, row)
        False
    """
    (total,) = torch.autograd.grad(per_datum.sum(), row, retain_graph=True)
    rtol = 1e3 * torch.finfo(row.dtype).eps
    # Column sums as matrix-vector products (BLAS: a fifth of a reduction over dim 0's time at
    # B = 10^4, D = 1000); the sizes summed as |jac|'s column sums.
    ones = jac.new_ones(jac.shape[0])
    if scale is None:
        summed, size = ones @ jac, jac.abs().sum(0)
    elif bool((scale == scale[0]).all()):  # sum_i |c J_i| = |c| sum_i |J_i|: no (B, D) product
        summed, size = scale[0] * (ones @ jac), scale[0].abs() * jac.abs().sum(0)
    else:
        summed, size = scale @ jac, scale.abs() @ jac.abs()
    return bool(((summed - total).abs() <= rtol * (1 + size)).all())


def reproduces(
    by_datum: tuple[Tensor, Tensor], per_datum: Tensor, scale: Tensor, row: Tensor
) -> bool:
    """Whether the runs on one datum (unscaled rows and terms, as
    :func:`rows_by_one_datum_runs` returns them) reproduce the whole run's ``per_datum`` (built
    from ``row`` with autograd, scaled by ``scale``): every datum's term, and
    :func:`sums_to_gradient`.

    Example:
        >>> import torch
        >>> row = torch.ones(1, requires_grad=True)
        >>> x, scale = torch.tensor([1.0, 2.0]), torch.full((2,), 3.0)
        >>> per_datum = scale * x * row**2 / 2  # each datum's term as the plate scales it
        >>> reproduces((x[:, None], x / 2), per_datum, scale, row)
        True
    """
    jac, value = by_datum
    if value.shape != per_datum.shape:
        return False
    rtol = 1e3 * torch.finfo(row.dtype).eps
    terms = per_datum.detach()
    if not ((value * scale - terms).abs() <= rtol * (1 + terms.abs().amax())).all():
        return False
    return sums_to_gradient(jac, per_datum, row, scale)


def rows_by_forward_mode(
    terms: Terms, row: Tensor, subsample: dict[str, Tensor], chunk: int = FORWARD_CHUNK
) -> Tensor | None:
    """The Jacobian ``(B, D)`` of the scaled per-datum terms by forward mode, ``chunk``
    coordinates at a time; ``None`` where the run fails under ``torch.func`` (a random draw,
    an operator without a forward-mode rule).

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0, 3.0])
        >>> terms = lambda theta, subsample: (x * theta[0] ** 2 / 2, torch.ones(3))
        >>> rows_by_forward_mode(terms, torch.ones(1), {}).squeeze(-1)
        tensor([1., 2., 3.])
    """
    row = row.detach()
    dim = row.shape[-1]

    def along(direction: Tensor) -> Tensor:
        return torch.func.jvp(lambda t: terms(t, subsample)[0], (row,), (direction,))[1]

    basis = torch.eye(dim, dtype=row.dtype, device=row.device)
    try:
        columns = [torch.func.vmap(along)(basis[k : k + chunk]) for k in range(0, dim, chunk)]
    except Exception as error:  # any failure under forward mode: another way is taken
        logger.debug("per-datum gradients: forward mode failed (%s)", error)
        return None
    return torch.cat(columns).T.detach()  # detached from a model's own parameters


def rows_by_batched_backward(per_datum: Tensor, row: Tensor) -> Tensor:
    """The Jacobian ``(B, D)`` of ``per_datum`` (built from ``row`` with autograd) by ``B``
    batched vector-Jacobian products (``is_grads_batched``; a loop where an operator has no
    batching rule for its backward).

    Example:
        >>> import torch
        >>> row = torch.ones(1, requires_grad=True)
        >>> rows_by_batched_backward(torch.tensor([1.0, 2.0]) * row**2 / 2, row).squeeze(-1)
        tensor([1., 2.])
    """
    basis = torch.eye(per_datum.shape[0], dtype=per_datum.dtype, device=per_datum.device)
    try:
        (jac,) = torch.autograd.grad(
            per_datum, row, grad_outputs=basis, is_grads_batched=True, retain_graph=True
        )
    except RuntimeError:  # an operator without a batching rule for its backward: loop instead
        jac = torch.stack(
            [torch.autograd.grad(term, row, retain_graph=True)[0] for term in per_datum]
        )
    return jac.detach()
