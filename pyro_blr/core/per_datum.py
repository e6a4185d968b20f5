r"""The negative log joint split by datum, and its per-datum gradients.

With the data the elements of plates, the negative log joint of a minibatch splits as

.. math::
    \ell(\theta) = \sum_{i \in B} \tilde\ell_i(\theta) + \ell_{\text{rest}}(\theta),

where :math:`\tilde\ell_i = c_i \ell_i` is datum :math:`i`'s term of one observed site as the
model scales it (:math:`c_i`: the plate's :math:`N/B` times any ``poutine.scale``; the site summed
over its data plate's other dimensions) and :math:`\ell_{\text{rest}}` holds the priors and the
log-Jacobians. The per-datum gradients :math:`\nabla\tilde\ell_i` come from the cheapest of
four ways that applies (:mod:`pyro_blr.core.datum_jacobian`): the model run on each datum
alone, forward mode, or one batched backward pass. They give the Gauss--Newton (empirical Fisher)
curvature of variational online Gauss--Newton, each term's curvature
:math:`c_i \nabla\ell_i \nabla\ell_i^\top = \nabla\tilde\ell_i \nabla\tilde\ell_i^\top / c_i`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core.autodiff import hessian_of_scalar
from pyro_blr.core.datum_jacobian import (
    FORWARD_CHUNK,
    FORWARD_MIN_DATA,
    datum_arguments,
    reproduces,
    rows_by_batched_backward,
    rows_by_forward_mode,
    rows_by_one_datum_runs,
    sums_to_gradient,
)
from pyro_blr.core.layout import LatentLayout
from pyro_blr.core.log_joint import conditioned_trace
from pyro_blr.core.plates import full_size, is_subsampled
from pyro_blr.core.traces import sample_sites, site_log_probs

__all__ = ["DataPlate", "DatumTerms", "PerDatum", "data_plates", "datum_terms",
           "per_datum_gradients", "per_datum_jacobian"]  # fmt: skip


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
        subsampled = [f for f in vectorized if is_subsampled(f)]
        outer = (subsampled or vectorized)[0]  # the stack lists the outermost plate first
        plates.setdefault(outer.name, []).append(name)
        frames[outer.name] = outer
    found = tuple(
        DataPlate(
            name,
            frames[name].dim,
            full_size(frames[name]),
            tuple(sites),
        )
        for name, sites in plates.items()
    )
    return found, tuple(unplated)


class DatumTerms(NamedTuple):
    """One model run at one particle, its negative log joint split by datum.

    Attributes:
        per_datum: the terms :math:`\\tilde\\ell_i` ``(B,)``, each observed site's data in turn.
        scale: each term's scale :math:`c_i` (the plate's :math:`N/B` times any
            ``poutine.scale``), ``(B,)``.
        rest: :math:`\\ell_{\\text{rest}}` (priors, log-Jacobians, sites outside the data
            plates), ``()``.
        plates: the data plates.
        trace: the run's trace.
    """

    per_datum: Tensor
    scale: Tensor
    rest: Tensor
    plates: tuple[DataPlate, ...]
    trace: Trace


def datum_terms(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor],
    with_rest: bool = True,
) -> DatumTerms:
    """One particle's negative log joint ``theta`` ``(D,)`` split by datum, from one model run
    (without ``with_rest``, the rest is left at the log-Jacobian's, its sites' densities not
    computed: for runs that need the data's terms only).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([1.0, 3.0])
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace(y))
        >>> split = datum_terms(model, layout, torch.zeros(1), (y,), {}, {})
        >>> split.per_datum, split.scale, split.rest  # y_i^2 / 2 + log(2 pi) / 2; mu's prior
        (tensor([1.4189, 5.4189]), tensor([1., 1.]), tensor(0.9189))
    """
    trace, log_det = conditioned_trace(model, layout, theta, args, kwargs, subsample)
    rest = -log_det[0]
    plates, unplated = data_plates(trace, (site.name for site in layout.sites))
    if unplated:
        stacks = (trace.nodes[name]["cond_indep_stack"] for name in unplated)
        sequential = sorted({f.name for stack in stacks for f in stack if not f.vectorized})
        where = f" (they lie in the sequential plate(s) {sequential})" if sequential else ""
        raise ValueError(
            f"observed site(s) {list(unplated)} lie in no vectorized pyro.plate{where}: per-datum "
            "curvature needs the data as the elements of one (declare it with `with "
            "pyro.plate(...)`; a sequential `for i in pyro.plate(...)` does not count), or use "
            "rule 'von' or 'ivon'"
        )
    plate_of = {site: plate for plate in plates for site in plate.sites}
    rows, scales = [], []
    kept = trace if with_rest else _only(trace, plate_of)
    for name, log_prob in site_log_probs(kept):
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
    return DatumTerms(torch.cat(rows), torch.cat(scales), rest, plates, trace)


def _scaled(rows: Tensor, scale: Tensor) -> Tensor:
    """Rows ``(B, D)`` times their scales ``(B,)``; the rows themselves where every scale is 1
    (no ``(B, D)`` product)."""
    return rows if bool((scale == 1).all()) else rows * scale[:, None]


def _only(trace: Trace, names) -> Trace:
    """A shallow copy of ``trace`` holding only the sites ``names``, in its order."""
    kept = Trace()
    for name, site in trace.nodes.items():
        if name in names:
            kept.add_node(name, **site)
    return kept


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
            split = datum_terms(model, layout, row, args, kwargs, subsample)
            total = split.per_datum.sum() + split.rest
            (grad,) = torch.autograd.grad(total, row, retain_graph=True)
            jac, _ = per_datum_jacobian(model, layout, row, args, kwargs, subsample, split)
            datum_grads.append(jac)
            if rest_hessian:
                rest_hess.append(hessian_of_scalar(split.rest, row))
        values.append(total.detach())
        grads.append(grad)
    return PerDatum(
        torch.stack(values),
        torch.stack(grads),
        torch.stack(datum_grads),
        split.scale,
        torch.stack(rest_hess) if rest_hessian else None,
    )


def per_datum_jacobian(
    model: Callable,
    layout: LatentLayout,
    row: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor],
    split: DatumTerms,
) -> tuple[Tensor, str]:
    """The scaled per-datum gradients :math:`\\nabla\\tilde\\ell_i` ``(B, D)`` at one
    particle, given its :func:`datum_terms` ``split`` built from ``row`` with autograd, by the
    cheapest way that applies (:mod:`pyro_blr.core.datum_jacobian`), and the way's name:
    ``"one datum each"``, ``"one datum's arguments each"``, ``"forward mode"`` or
    ``"batched backward"``.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)) as idx:
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> y = torch.tensor([1.0, 3.0])
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace(y))
        >>> row = torch.zeros(1, requires_grad=True)
        >>> split = datum_terms(model, layout, row, (y,), {}, {})
        >>> jac, way = per_datum_jacobian(model, layout, row, (y,), {}, {}, split)
        >>> jac.squeeze(-1), way  # mu - y_i, from the model run on each datum alone
        (tensor([-1., -3.]), 'one datum each')
    """

    def terms(theta: Tensor, minibatch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return datum_terms(model, layout, theta, args, kwargs, minibatch, False)[:2]

    per_datum, scale, _, plates, trace = split
    one_plate = len(plates) == 1 and torch.is_tensor(
        trace.nodes.get(plates[0].name, {}).get("value")
    )
    if one_plate:
        name = plates[0].name
        indices = trace.nodes[name]["value"]
        others = {k: v for k, v in subsample.items() if k != name}
        by_datum = rows_by_one_datum_runs(terms, row, name, indices, others)
        if by_datum is not None and reproduces(by_datum, per_datum, scale, row):
            return _scaled(by_datum[0], scale), "one datum each"

    def by_arguments() -> Tensor | None:
        """Runs on each datum's rows of the arguments: a model that reads its data whole."""
        data, with_rows = datum_arguments(args, kwargs, plates[0].size)
        if not data:
            return None

        def cut_terms(theta: Tensor, minibatch: dict[str, Tensor], *rows: Tensor):
            cut_args, cut_kwargs = with_rows(*rows)
            split = datum_terms(model, layout, theta, cut_args, cut_kwargs, minibatch, False)
            return split[:2]

        by_datum = rows_by_one_datum_runs(cut_terms, row, name, indices, others, data)
        if by_datum is None or not reproduces(by_datum, per_datum, scale, row):
            return None
        return _scaled(by_datum[0], scale)

    def by_forward_mode() -> Tensor | None:
        jac = rows_by_forward_mode(terms, row, subsample)
        return jac if jac is not None and sums_to_gradient(jac, per_datum, row) else None

    # On a large minibatch (below, the batched backward pass's B products cost less than either
    # way's set-up): forward mode where its D products are one batched pass, else the runs on
    # each datum's arguments, linear in D, and forward mode only where they do not apply.
    ways = []
    if FORWARD_MIN_DATA <= per_datum.shape[0]:
        forward = [] if row.shape[-1] >= per_datum.shape[0] else [(by_forward_mode, "forward mode")]
        cut = [(by_arguments, "one datum's arguments each")] if one_plate else []
        ways = forward + cut if row.shape[-1] <= FORWARD_CHUNK else cut + forward
    for way, way_name in ways:
        jac = way()
        if jac is not None:
            return jac, way_name
    return rows_by_batched_backward(per_datum, row), "batched backward"
