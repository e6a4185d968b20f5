r"""The negative log joint split by datum, and its per-datum gradients.

With the data the elements of plates, the negative log joint of a minibatch splits as

.. math::
    \ell(\theta) = \sum_{i \in B} \tilde\ell_i(\theta) + \ell_{\text{rest}}(\theta),

where :math:`\tilde\ell_i = c_i \ell_i` is datum :math:`i`'s term of one observed site as the
model scales it (:math:`c_i`: the plate's :math:`N/B` times any ``poutine.scale``; the site summed
over its data plate's other dimensions) and :math:`\ell_{\text{rest}}` holds the priors and the
log-Jacobians. The per-datum gradients :math:`\nabla\tilde\ell_i` come from the model run on
each datum alone, batched by ``torch.func.vmap`` over the data plate's indices, where the model
reads its data through them (``with pyro.plate("data", N) as idx: ... X[idx]``, with no fixed
``subsample_size``, which Pyro would not let run on one datum) and those runs reproduce the
whole run's terms and gradient; else from one model run and one batched
backward pass (``is_grads_batched``; a loop over the data where an operator has no batching
rule), whose cost grows as :math:`B^2`. They give the Gauss--Newton (empirical Fisher)
curvature of variational online Gauss--Newton, each term's curvature
:math:`c_i \nabla\ell_i \nabla\ell_i^\top = \nabla\tilde\ell_i \nabla\tilde\ell_i^\top / c_i`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core.autodiff import _hessian_products
from pyro_blr.core.layout import LatentLayout
from pyro_blr.core.log_joint import conditioned_trace
from pyro_blr.core.traces import sample_sites, site_log_probs

__all__ = ["DataPlate", "PerDatum", "data_plates", "per_datum_gradients"]


class DataPlate(NamedTuple):
    """A plate whose elements are data.

    Attributes:
        name: the plate's name.
        dim: its (negative) batch dimension.
        size: its full size :math:`N`.
        sites: the observed sites inside it.
    """

    name: str
    dim: int
    size: int
    sites: tuple[str, ...]


class PerDatum(NamedTuple):
    """Per-datum gradients at particles ``(S, D)``.

    Attributes:
        value: :math:`\\ell(\\theta_s)`, shape ``(S,)``.
        grad: :math:`\\nabla\\ell(\\theta_s)`, shape ``(S, D)``.
        datum_grads: :math:`\\nabla\\tilde\\ell_i(\\theta_s)` as the model scales them, shape
            ``(S, B, D)``: each observed site's data in turn.
        scale: each row's scale (the plate's :math:`N/B` times any ``poutine.scale``), so that
            ``datum_grads / scale`` is the unscaled gradient, shape ``(B,)``.
        rest_hess: the exact Hessian of :math:`\\ell_{\\text{rest}}` (priors, log-Jacobians),
            ``(S, D, D)``, where asked for; it costs ``D`` products on the priors' graph only.
    """

    value: Tensor
    grad: Tensor
    datum_grads: Tensor
    scale: Tensor
    rest_hess: Tensor | None = None


def data_plates(
    trace: Trace, latents: Iterable[str] = ()
) -> tuple[tuple[DataPlate, ...], tuple[str, ...]]:
    """The plates whose elements are data, and the observed sites outside every plate; the
    ``latents`` (sites a conditioned run observes) are not data.

    An observed site's data plate is its subsampled plate, or else the outermost plate it lies
    in (the first entered: the data, when a plate of features nests inside).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", 5), pyro.plate("features", 2):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> plates, unplated = data_plates(pyro.poutine.trace(model).get_trace(torch.zeros(2, 5)))
        >>> [(p.name, p.size, p.sites) for p in plates], unplated
        ([('data', 5, ('y',))], ())
    """
    plates: dict[str, list[str]] = {}
    frames, unplated, latents = {}, [], set(latents)
    for name, site in sample_sites(trace, deterministic=False):
        if not site["is_observed"] or name in latents:
            continue
        vectorized = [f for f in site["cond_indep_stack"] if f.vectorized]
        if not vectorized:
            unplated.append(name)
            continue
        subsampled = [f for f in vectorized if f.full_size not in (None, f.size)]
        outer = (subsampled or vectorized)[0]  # the stack lists the outermost plate first
        plates.setdefault(outer.name, []).append(name)
        frames[outer.name] = outer
    found = tuple(
        DataPlate(
            name,
            frames[name].dim,
            frames[name].full_size if frames[name].full_size is not None else frames[name].size,
            tuple(sites),
        )
        for name, sites in plates.items()
    )
    return found, tuple(unplated)


def _split_one(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor],
) -> tuple[Tensor, Tensor, Tensor, tuple[DataPlate, ...], Trace]:
    """One particle's per-datum terms ``(B,)`` (each observed site's data in turn), their
    scales (the plate's :math:`N/B` times any ``poutine.scale``), the rest ``()``, the data
    plates and the run's trace, from one model run."""
    trace, log_det = conditioned_trace(model, layout, theta, args, kwargs, subsample)
    rest = -log_det[0]
    plates, unplated = data_plates(trace, (site.name for site in layout.sites))
    if unplated:
        raise ValueError(
            f"observed site(s) {list(unplated)} lie in no pyro.plate: per-datum curvature needs "
            "the data as the elements of a plate (declare it with pyro.plate, or use rule 'von' "
            "or 'ivon')"
        )
    plate_of = {site: plate for plate in plates for site in plate.sites}
    rows, scales = [], []
    for name, log_prob in site_log_probs(trace):
        if name not in plate_of:
            rest = rest - log_prob.sum()
            continue
        by_datum = -log_prob.movedim(plate_of[name].dim, 0)
        rows.append(by_datum.reshape(by_datum.shape[0], -1).sum(-1))
        # The site's whole scale: the plate's N/B times any poutine.scale.
        scale = torch.as_tensor(trace.nodes[name]["scale"], dtype=rest.dtype, device=rest.device)
        scales.append(scale.expand(rows[-1].shape))
    if not rows:
        raise ValueError("the model has no observed site: per-datum curvature needs data")
    return torch.cat(rows), torch.cat(scales), rest, plates, trace


def per_datum_gradients(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor] | None = None,
    rest_hessian: bool = False,
) -> PerDatum:
    """The negative log joint, its gradient and its per-datum gradients at each particle, and
    with ``rest_hessian`` the exact Hessian of the rest.

    Args:
        model: the Pyro model.
        layout: its latent layout.
        theta: particles ``(S, D)``.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.
        subsample: plate name -> the minibatch indices every run uses.
        rest_hessian: also return the Hessian of the priors and log-Jacobians.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([1.0, 3.0])
        >>> trace = pyro.poutine.trace(model).get_trace(y)
        >>> out = per_datum_gradients(model, latent_layout(trace), torch.zeros(1, 1), (y,), {})
        >>> out.datum_grads.squeeze(-1), out.grad  # mu - y_i, and their sum plus the prior's mu
        (tensor([[-1., -3.]]), tensor([[-4.]]))
    """
    subsample = subsample or {}
    values, grads, datum_grads, rest_hess = [], [], [], []
    for row in theta:
        with torch.enable_grad():
            row = row.detach().requires_grad_(True)
            per_datum, scale, rest, plates, trace = _split_one(
                model, layout, row, args, kwargs, subsample
            )
            total = per_datum.sum() + rest
            (grad,) = torch.autograd.grad(total, row, retain_graph=True)
            by_datum = _rows_by_datum(model, layout, row, args, kwargs, subsample, plates, trace)
            if by_datum is not None and _reproduces(by_datum, per_datum, scale, row):
                datum_grads.append(by_datum[0].detach())
            else:
                datum_grads.append(_batched_rows(per_datum, row))
            if rest_hessian:
                rest_hess.append(_hessian(rest, row))
        values.append(total.detach())
        grads.append(grad)
    return PerDatum(
        torch.stack(values),
        torch.stack(grads),
        torch.stack(datum_grads),
        scale,
        torch.stack(rest_hess) if rest_hessian else None,
    )


def _hessian(value: Tensor, row: Tensor) -> Tensor:
    """The Hessian ``(D, D)`` of a scalar with respect to ``row`` (zero where it does not
    depend on it)."""
    dim = row.shape[-1]
    if not value.requires_grad:
        return row.new_zeros(dim, dim)
    (grad,) = torch.autograd.grad(value, row, create_graph=True, retain_graph=True)
    if not grad.requires_grad:  # linear in row
        return row.new_zeros(dim, dim)
    basis = torch.eye(dim, dtype=row.dtype, device=row.device)
    hess = _hessian_products(grad, row, basis).detach()
    return 0.5 * (hess + hess.mT)


def _rows_by_datum(
    model: Callable,
    layout: LatentLayout,
    row: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor],
    plates: tuple[DataPlate, ...],
    trace: Trace,
) -> tuple[Tensor, Tensor] | None:
    """Each datum's unscaled gradients and terms, ``(B, D)`` and ``(B,)`` in the rows' order,
    from the model run on that datum alone: ``torch.func.vmap`` over the data plate's indices,
    each run given a minibatch of one. Costs one model run's worth of work over the data where
    the batched backward pass costs ``B`` of them; ``None`` where it does not apply (more than
    one data plate, a plate whose indices the model sets itself, an operator ``vmap`` cannot
    batch, a model that does not read its data through the plate's indices)."""
    if len(plates) != 1 or plates[0].name not in trace.nodes:
        return None
    plate = plates[0]
    indices = trace.nodes[plate.name]["value"]
    if not torch.is_tensor(indices) or indices.dim() != 1:
        return None
    others = {k: v for k, v in subsample.items() if k != plate.name}

    def terms(theta: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        per_datum, scale, *_ = _split_one(
            model, layout, theta, args, kwargs, {**others, plate.name: index}
        )
        unscaled = per_datum / scale
        return unscaled, unscaled

    batched = torch.func.vmap(torch.func.jacrev(terms, has_aux=True), in_dims=(None, 0))
    try:
        jac, value = batched(row.detach(), indices[:, None])
    except Exception:  # any failure of the runs on one datum: the general path below
        return None
    # (B, sites, D) datum-major -> the rows' order, each observed site's data in turn
    return jac.transpose(0, 1).reshape(-1, row.shape[-1]), value.transpose(0, 1).reshape(-1)


def _reproduces(
    by_datum: tuple[Tensor, Tensor], per_datum: Tensor, scale: Tensor, row: Tensor
) -> bool:
    """Whether the runs on one datum each reproduce the whole run: every datum's term, and
    the sum of their gradients (one backward pass). Scales the rows as the model scales them
    in place."""
    jac, value = by_datum
    if value.shape != per_datum.shape:
        return False
    jac.mul_(scale[:, None])
    (total,) = torch.autograd.grad(per_datum.sum(), row, retain_graph=True)
    rtol = 1e3 * torch.finfo(row.dtype).eps
    close = lambda a, b: bool(((a - b).abs() <= rtol * (1 + b.abs().amax())).all())  # noqa: E731
    return close(value * scale, per_datum.detach()) and close(jac.sum(0), total)


def _batched_rows(per_datum: Tensor, row: Tensor) -> Tensor:
    """The Jacobian ``(B, D)`` of ``per_datum`` with respect to ``row``."""
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
