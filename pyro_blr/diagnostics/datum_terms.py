r"""Per-datum log-likelihoods of a model at a flat latent vector, for the memory-perturbation
estimates (:func:`~pyro_blr.diagnostics.sensitivity.loo_sensitivity`).

The model runs conditioned on the constrained values of a flat unconstrained :math:`\theta`
(the guide's :class:`~pyro_blr.core.LatentLayout`); its observed sites in the data plate give
every datum's term :math:`\ell_i(\theta) = \log p(y_i \mid \theta)` before summing, with the
sites the model enumerates summed out of each datum's term. Their gradients and Hessians come
from forward-mode ``torch.func`` (one model run over all the data per tangent).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core import (
    PARTICLE_PLATE,
    LatentLayout,
    full_size,
    is_subsampled,
    sample_sites,
    site_log_probs,
)
from pyro_blr.core.enumeration import enumerated_trace
from pyro_blr.diagnostics.marginal import marginal_mean, scaled_pointwise_log_likelihood

__all__ = [
    "by_datum",
    "by_datum_rows",
    "conditioned_run",
    "data_plate",
    "enumerated_batch",
    "enumerated_run",
    "latent_values",
    "per_datum_derivatives",
    "per_datum_log_likelihood",
    "prediction_error",
    "without_validation",
]


def data_plate(
    trace, layout: LatentLayout, plate: str | None
) -> tuple[str, int, int, tuple[str, ...]]:
    """The data plate's name, size and dim, and the observed sites inside it."""
    observed = [
        (name, site)
        for name, site in sample_sites(trace, deterministic=False)
        if site["is_observed"]
    ]
    plates: dict[str, list[str]] = {}
    frames = {}
    for name, site in observed:
        for frame in site["cond_indep_stack"]:
            if frame.vectorized:
                plates.setdefault(frame.name, []).append(name)
                frames[frame.name] = frame
    if plate is None:
        if not plates:
            names = [name for name, _ in observed] or "none"
            raise ValueError(
                f"no observed site lies in a pyro.plate (observed sites: {names}): the data "
                "must be the elements of a vectorized plate"
            )
        if len(plates) > 1:
            where = "; ".join(f"'{p}': {sites}" for p, sites in plates.items())
            raise ValueError(
                f"the observed sites lie in several plates ({where}): say which plate holds the "
                "data with plate=..."
            )
        plate = next(iter(plates))
    if plate not in plates:
        raise ValueError(
            f"no observed site lies in plate '{plate}' (plates of observed sites: {list(plates)})"
        )
    frame = frames[plate]
    if is_subsampled(frame):
        raise ValueError(
            f"plate '{plate}' is subsampled ({frame.size} of {full_size(frame)}): leave-one-out "
            "sensitivity needs the full data; call the model without subsample_size"
        )
    for latent in layout.sites:
        stack = trace.nodes[latent.name]["cond_indep_stack"]
        if any(f.name == plate for f in stack):
            raise ValueError(
                f"latent site '{latent.name}' is local to the data plate '{plate}': leaving a "
                "datum out would also remove its latent, which the memory-perturbation "
                "equation does not cover; marginalize it out in the model"
            )
    return plate, frame.size, frame.dim, tuple(plates[plate])


def latent_values(layout: LatentLayout, theta: Tensor) -> dict[str, Tensor]:
    """Each latent site's constrained value at the flat unconstrained ``theta`` ``(D,)``."""
    return {
        site.name: site.transform(theta[site.block].reshape(site.shape)) for site in layout.sites
    }


def conditioned_run(
    model: Callable, layout: LatentLayout, theta: Tensor, args: tuple, kwargs: dict
):
    """One run of the model at ``theta``; the sites it enumerates are drawn from their prior
    (callers that need them summed out use :func:`enumerated_run`)."""
    values = latent_values(layout, theta)
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    for name, site in sample_sites(trace, deterministic=False):
        if not site["is_observed"] and name not in layout.enumerated:
            raise ValueError(
                f"latent site '{name}' is not in the guide: make the model sample it on every run"
            )
    return trace


def enumerated_run(model: Callable, layout: LatentLayout, theta: Tensor, args: tuple, kwargs: dict):
    """One packed run of the model at ``theta`` with its enumerated sites enumerated."""
    return enumerated_trace(
        model, args, kwargs, layout.max_plate_nesting, latent_values(layout, theta)
    )


def enumerated_batch(
    model: Callable,
    layout: LatentLayout,
    dim: int,
    num_data: int,
    sites: tuple[str, ...],
    args: tuple,
    kwargs: dict,
) -> Callable[[Tensor], Tensor]:
    """:math:`\\theta \\mapsto (\\log p(y_i \\mid \\theta))_i` of many draws ``(B, D) -> (B, N)``
    in one enumerated run inside a particle plate, the enumerated sites summed out of each
    datum's term. The model must broadcast over the plate: the first three draws are checked
    against one run each (to :math:`\\sqrt{\\epsilon}`), and a mismatch or a failure raises
    ``ValueError``, on which the caller runs the draws one by one."""
    one = per_datum_log_likelihood(model, layout, dim, num_data, sites, args, kwargs)
    nesting = layout.max_plate_nesting

    def batched(theta: Tensor) -> Tensor:
        num = theta.shape[0]
        unpacked = layout.unpack(theta).values()
        values = {s.name: s.transform(u) for s, u in zip(layout.sites, unpacked, strict=True)}
        trace = enumerated_trace(model, args, kwargs, nesting, values, (PARTICLE_PLATE, num))
        rows = 0.0
        for name in sites:
            term = scaled_pointwise_log_likelihood(trace, name)
            term = term.reshape((*(1,) * (nesting + 1 - term.dim()), *term.shape))
            rows = rows + term.expand(num, *term.shape[1:]).movedim(dim, 1).reshape(
                num, num_data, -1
            ).sum(-1)
        count = min(3, num)
        exact = torch.stack([one(t) for t in theta[:count]])
        tol = torch.finfo(exact.dtype).eps ** 0.5
        if not torch.allclose(rows[:count], exact, rtol=tol, atol=tol, equal_nan=True):
            raise ValueError("the particle plate gives other per-datum terms than one run each")
        return rows

    return batched


def by_datum(term: Tensor, dim: int, num_data: int, name: str) -> Tensor:
    """A site's term with the data plate's dimension first, summed over the rest: ``(N,)``."""
    return by_datum_rows(term, dim, num_data, name).sum(-1)


def per_datum_log_likelihood(
    model: Callable,
    layout: LatentLayout,
    dim: int,
    num_data: int,
    sites: tuple[str, ...],
    args: tuple,
    kwargs: dict,
) -> Callable[[Tensor], Tensor]:
    """:math:`\\theta \\mapsto (\\log p(y_i \\mid \\theta))_i`, one model run for all ``N``;
    the sites the model enumerates are summed out of each datum's term,
    :math:`\\log p(y_i \\mid \\theta) = \\log \\sum_{z_i} p(z_i \\mid \\theta)\\,
    p(y_i \\mid z_i, \\theta)` (a site shared by several data, which has no such term, is
    refused by name)."""

    def log_lik(theta: Tensor) -> Tensor:
        if layout.enumerated:
            trace = enumerated_run(model, layout, theta, args, kwargs)
            terms = {name: scaled_pointwise_log_likelihood(trace, name) for name in sites}
        else:
            terms = dict(site_log_probs(conditioned_run(model, layout, theta, args, kwargs)))
        return sum(by_datum(terms[name], dim, num_data, name) for name in sites)

    return log_lik


def without_validation(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``fn`` with Pyro's validation off: its support checks are data-dependent control flow,
    which ``torch.func`` transforms refuse (validation runs once, outside)."""

    def quiet(theta: Tensor) -> Tensor:
        with pyro.validation_enabled(False):
            return fn(theta)

    return quiet


def per_datum_derivatives(
    log_lik: Callable[[Tensor], Tensor], loc: Tensor, functorch: bool = True
) -> tuple[Tensor, Tensor]:
    """Per-datum gradients ``(N, D)`` and Hessians ``(N, D, D)`` at ``loc``.

    Forward mode: each tangent is one model run over all ``N`` data, so the gradients cost
    :math:`D` runs and the Hessians :math:`D^2` (batched by ``vmap``), where reverse mode would
    need one backward pass per datum through the whole graph (:math:`N` times the work).
    ``functorch=False`` goes straight to autograd's loop (Pyro's tensor contraction, which sums
    enumerated sites out, has an ``autograd.Function`` that ``torch.func`` refuses).
    """
    quiet = without_validation(log_lik)
    jacfwd, jacrev = torch.func.jacfwd, torch.func.jacrev
    with torch.enable_grad():
        if functorch:
            try:
                return jacfwd(quiet)(loc).detach(), _symmetric(jacfwd(jacfwd(quiet))(loc))
            # an operator without a forward-mode rule (ValueError: the enumerated run names
            # the failure; a real error in the model is raised again by the loop, outside
            # torch.func)
            except (RuntimeError, NotImplementedError, ValueError):
                pass
            try:
                return jacrev(quiet)(loc).detach(), _symmetric(jacfwd(jacrev(quiet))(loc))
            except (RuntimeError, NotImplementedError, ValueError):  # nor a batching rule
                pass
        jacobian = torch.autograd.functional.jacobian
        hess = jacobian(lambda t: jacobian(quiet, t, create_graph=True), loc)
        return jacobian(quiet, loc).detach(), _symmetric(hess)


def _symmetric(hess: Tensor) -> Tensor:
    return (0.5 * (hess + hess.mT)).detach()


def prediction_error(
    model: Callable,
    layout: LatentLayout,
    dim: int,
    num_data: int,
    sites: tuple[str, ...],
    loc: Tensor,
    args: tuple,
    kwargs: dict,
) -> Tensor:
    """The residual of the likelihood's mean at ``loc``, per datum (a norm when vector-valued);
    the sites the model enumerates summed out of the mean by their prior
    (:func:`~pyro_blr.diagnostics.marginal.marginal_mean`)."""
    nesting = layout.max_plate_nesting
    with torch.no_grad():
        if layout.enumerated:
            trace = enumerated_run(model, layout, loc, args, kwargs)
        else:
            trace = conditioned_run(model, layout, loc, args, kwargs)
        residuals = []
        for name in sites:
            site = trace.nodes[name]
            fn, value = site["fn"], site["value"]
            batch_shape = fn.batch_shape
            if layout.enumerated:
                batch_shape = batch_shape[max(0, len(batch_shape) - nesting) :]
                mean = marginal_mean(trace, name, nesting)
            else:
                try:
                    mean = fn.mean
                except NotImplementedError:  # a likelihood without a mean
                    mean = None
            if mean is None:
                residual = torch.full_like(value, math.nan, dtype=loc.dtype)
            else:
                residual = (mean - value).to(loc.dtype)
            residual = residual.expand(batch_shape + fn.event_shape)
            flat = residual.reshape(*batch_shape, -1)  # the event flattened last
            residuals.append(by_datum_rows(flat, dim - 1, num_data, name))
        residual = torch.cat(residuals, -1)
    return residual[:, 0] if residual.shape[1] == 1 else residual.norm(dim=-1)


def by_datum_rows(term: Tensor, dim: int, num_data: int, name: str) -> Tensor:
    """``term`` with the data plate's dimension first and the rest flattened: ``(N, K)``."""
    if term.dim() < -dim or term.shape[dim] != num_data:
        raise ValueError(
            f"observed site '{name}' has shape {tuple(term.shape)}, without the data plate's "
            f"{num_data} elements at dim {dim}"
        )
    return term.movedim(dim, 0).reshape(num_data, -1)
