r"""Posterior draws from any guide, with everything ArviZ needs, in one vectorized pass.

For :math:`S` draws :math:`z_s \sim q` the guide runs once on all of them, the model is replayed on
them and gives the latent and ``pyro.deterministic`` values, :math:`\log p(\mathcal D, z_s)`,
:math:`\log q(z_s)`, the pointwise log-likelihood of every observed site and a posterior
predictive draw. When the model subsamples a plate, the model is replayed on successive
minibatches that cover all :math:`N` data, so the pointwise log-likelihood and the predictive are
those of the full data (this needs every latent to be global).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core import (
    PARTICLE_PLATE,
    check_full_data,
    check_model_and_guide,
    guess_max_plate_nesting,
    is_subsampled,
    replay_particles,
    sample_sites,
    sum_per_particle,
    unsubsampled_scale,
)
from pyro_blr.diagnostics.enumerated_draws import enumerated_draws
from pyro_blr.diagnostics.resample import Resample

__all__ = ["Draws", "draw"]


class Draws(NamedTuple):
    """Draws from a guide and what the model says of them; every tensor has the draws first.

    Attributes:
        posterior: latent and deterministic sites, constrained, ``(S, *shape)``.
        log_p: :math:`\\log p(\\mathcal D, z_s)` (full data), ``(S,)``.
        log_q: :math:`\\log q(z_s)`, ``(S,)``.
        log_likelihood: observed site -> pointwise log-likelihood, ``(S, *batch_shape)``.
        predictive: observed site -> posterior predictive draw, ``(S, *shape)``.
        observed: observed site -> data, ``shape``.
        dims: site -> names of its dimensions after the draw dimension.
        coords: plate name -> its indices.
    """

    posterior: dict[str, Tensor]
    log_p: Tensor
    log_q: Tensor
    log_likelihood: dict[str, Tensor]
    predictive: dict[str, Tensor]
    observed: dict[str, Tensor]
    dims: dict[str, list[str]]
    coords: dict[str, Tensor]


def _names(site: dict, shape: torch.Size, batch_ndim: int) -> list[str]:
    """Dimension names of a site's value: plate names for plate dimensions, else name_dim_i."""
    plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized}
    names = []
    for axis in range(len(shape)):
        dim = axis - batch_ndim if axis < batch_ndim else None
        names.append(plates.get(dim, f"{site['name']}_dim_{axis}"))
    return names


def _squeezable(site: dict, shape: torch.Size, batch_ndim: int) -> list[int]:
    """Batch axes of size 1 that belong to no plate (broadcasting left-overs)."""
    plates = {f.dim for f in site["cond_indep_stack"] if f.vectorized}
    return [a for a in range(batch_ndim) if shape[a] == 1 and a - batch_ndim not in plates]


def _natural(value: Tensor, num: int, shape: torch.Size, squeeze: list[int]) -> Tensor:
    """(S, 1, ..., *shape) -> (S, *shape) with the squeezable axes dropped."""
    value = value.reshape((num, *shape))
    return value.squeeze([a + 1 for a in squeeze]) if squeeze else value


def _prototype(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Trace, tuple]:
    """One full trace of ``model`` replayed on ``guide``, validated: no discrete site the guide
    leaves out unless it is marked for parallel enumeration (returned: those are summed out),
    no latent site local to a subsampled plate, no subsampled plate beside an enumerated site."""
    with poutine.block():
        proto_guide = poutine.trace(guide).get_trace(*args, **kwargs)
        proto = poutine.trace(poutine.replay(model, trace=proto_guide)).get_trace(*args, **kwargs)
    # A vectorized minibatch is covered minibatch by minibatch below; a sequential plate's sites
    # are named by the indices drawn (y_3, y_7, ...), so the others cannot be addressed.
    check_full_data(proto, "to_inference_data", sequential_only=True)
    enumerated = check_model_and_guide(model, guide, args, kwargs, summed=True)
    subsampled = _subsampled_plates(proto)
    if enumerated and subsampled:
        raise ValueError(
            f"to_inference_data sums the enumerated site(s) {list(enumerated)} out over the "
            f"full data only, and plate(s) {sorted(subsampled)} are subsampled: call the model "
            "without subsample_size"
        )
    for name, site in sample_sites(proto):
        local = [f.name for f in site["cond_indep_stack"] if f.name in subsampled]
        if local and not site["is_observed"]:
            raise ValueError(
                f"latent site '{name}' is local to the subsampled plate {local}: its values for "
                "all data do not exist; convert a full-data version of the model"
            )
    return proto, enumerated


def _subsampled_plates(proto: Trace) -> dict:
    """Plate name -> frame, for every plate of the trace that is subsampled."""
    return {
        f.name: f
        for _, site in sample_sites(proto)
        for f in site["cond_indep_stack"]
        if f.vectorized and is_subsampled(f)
    }


def _is_deterministic(site: dict) -> bool:
    return bool(site["infer"].get("_deterministic", False))


def _posterior(
    proto: Trace, model_trace: Trace, num: int, nesting: int
) -> tuple[dict[str, Tensor], dict[str, list[str]], Tensor | float]:
    """Latent and deterministic values ``(S, *shape)``, their dimension names, and the log prior
    of the latent sites per draw (unscaled: these sites are global)."""
    posterior, dims, log_prior = {}, {}, 0.0
    for name, site in sample_sites(proto):
        deterministic = _is_deterministic(site)
        if site["is_observed"] and not deterministic:
            continue
        shape = site["value"].shape
        # pyro.deterministic declares its whole value an event; name its dims by the plates too.
        batch_ndim = len(shape) if deterministic else len(shape) - site["fn"].event_dim
        squeeze = _squeezable(site, shape, batch_ndim)
        posterior[name] = _natural(model_trace.nodes[name]["value"], num, shape, squeeze)
        dims[name] = [n for a, n in enumerate(_names(site, shape, batch_ndim)) if a not in squeeze]
        if not deterministic:
            drawn = model_trace.nodes[name]
            scale = unsubsampled_scale(drawn)  # poutine.scale counts, minibatch factors do not
            log_prob = scale_and_mask(drawn["fn"].log_prob(drawn["value"]), scale, drawn["mask"])
            log_prior = log_prior + sum_per_particle(log_prob, num, nesting)
    return posterior, dims, log_prior


def _log_q(guide_trace: Trace, num: int, nesting: int) -> Tensor | float:
    """:math:`\\log q(z_s)` per draw."""
    log_q = 0.0
    for _, site in sample_sites(guide_trace):
        log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), 1.0, site["mask"])
        log_q = log_q + sum_per_particle(log_prob, num, nesting)
    return log_q


def _observed_part(
    model: Callable,
    guide_trace: Trace,
    args: tuple,
    kwargs: dict,
    num: int,
    nesting: int,
    proto: Trace,
    posterior: dict[str, Tensor],
    mode: str,
) -> tuple[dict, dict, dict, dict, dict[str, list[str]]]:
    """Pointwise log-likelihood, predictive and data of every observed site over the full data,
    the full-data values of deterministic sites inside a subsampled plate, and the observed
    sites' dimension names."""
    subsampled = _subsampled_plates(proto)
    names = [n for n, s in sample_sites(proto) if s["is_observed"] and not _is_deterministic(s)]
    chunked = [  # deterministic sites inside a subsampled plate: gathered over all the data
        n
        for n in posterior
        if _is_deterministic(proto.nodes[n])
        and any(f.name in subsampled for f in proto.nodes[n]["cond_indep_stack"])
    ]
    log_lik, predictive, observed, gathered = _observed(
        model, guide_trace, args, kwargs, num, nesting, proto, names, subsampled, chunked, mode
    )
    dims = {}
    for name in names:
        site = proto.nodes[name]
        dims[name] = _names(site, observed[name].shape, len(site["fn"].batch_shape))
    return log_lik, predictive, observed, gathered, dims


def _coords(proto: Trace, names: list[str]) -> dict[str, Tensor]:
    """Plate name -> the indices of all its data, for the plates of the named sites."""
    coords = {}
    for name in names:
        for f in proto.nodes[name]["cond_indep_stack"]:
            if f.vectorized and f.name != PARTICLE_PLATE:
                coords.setdefault(f.name, torch.arange(f.full_size or f.size))
    return coords


def draw(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    max_plate_nesting: int | None = None,
) -> Draws:
    """Draw ``num_samples`` times from ``guide`` and evaluate ``model`` on the draws.

    Sites marked ``infer={"enumerate": "parallel"}`` and left out of the guide are summed out of
    ``log_p`` and of the pointwise log-likelihood, and drawn from their exact conditional given
    each draw for the posterior and the predictive (see
    :mod:`pyro_blr.diagnostics.enumerated_draws`).

    Raises:
        ValueError: a latent site local to a subsampled plate (its full-data values do not exist
            in a minibatch guide), a discrete latent site the guide does not sample and the
            model does not mark for parallel enumeration, or a subsampled plate in a model
            with enumerated sites.
    """
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    nesting = max_plate_nesting
    proto, enumerated = _prototype(model, guide, args, kwargs)
    with poutine.block():
        with pyro.plate(PARTICLE_PLATE, num_samples, dim=-nesting - 1):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        if enumerated:
            return _draw_enumerated(model, guide_trace, args, kwargs, num_samples, nesting, proto)
        model_trace, mode = replay_particles(model, guide_trace, args, kwargs, num_samples, nesting)
    posterior, dims, log_prior = _posterior(proto, model_trace, num_samples, nesting)
    log_q = _log_q(guide_trace, num_samples, nesting)
    log_lik, predictive, observed, gathered, observed_dims = _observed_part(
        model, guide_trace, args, kwargs, num_samples, nesting, proto, posterior, mode
    )
    posterior.update(gathered)
    dims.update(observed_dims)
    log_p = log_prior + sum(lp.reshape(num_samples, -1).sum(-1) for lp in log_lik.values())
    coords = _coords(proto, list(observed) + list(posterior))
    return Draws(posterior, log_p, log_q, log_lik, predictive, observed, dims, coords)


def _draw_enumerated(
    model: Callable,
    guide_trace: Trace,
    args: tuple,
    kwargs: dict,
    num: int,
    nesting: int,
    proto: Trace,
) -> Draws:
    """:func:`draw` for a model with enumerated sites (full data): the marginal log joint and
    pointwise log-likelihood, the enumerated sites drawn given each continuous draw, and a
    predictive draw given both."""
    sites = list(sample_sites(proto))
    observed = [n for n, s in sites if s["is_observed"] and not _is_deterministic(s)]
    deterministic = [n for n, s in sites if _is_deterministic(s)]
    latents = [n for n, s in sites if not s["is_observed"] and n in guide_trace.nodes]
    summed = [n for n, s in sites if not s["is_observed"] and n not in guide_trace.nodes]
    part = enumerated_draws(
        model, guide_trace, args, kwargs, num, nesting, latents, summed, observed, deterministic
    )
    posterior, dims = {}, {}
    for name, site in sites:
        if name in observed:
            continue
        # a continuous latent as the guide drew it; an enumerated or deterministic site given
        # each draw
        value = guide_trace.nodes[name]["value"] if name in latents else part.sampled[name]
        shape = site["value"].shape
        batch_ndim = len(shape) if name in deterministic else len(shape) - site["fn"].event_dim
        squeeze = _squeezable(site, shape, batch_ndim)
        posterior[name] = _natural(_per_draw(value, num, shape), num, shape, squeeze)
        dims[name] = [n for a, n in enumerate(_names(site, shape, batch_ndim)) if a not in squeeze]
    log_lik, predictive, data = {}, {}, {}
    for name in observed:
        site = proto.nodes[name]
        batch_shape, value_shape = site["fn"].batch_shape, site["value"].shape
        predictive[name] = _per_draw(part.predictive[name], num, value_shape)
        data[name] = site["value"].reshape(value_shape)
        if name in part.log_likelihood:
            log_lik[name] = _per_draw(part.log_likelihood[name], num, batch_shape)
        dims[name] = _names(site, value_shape, len(batch_shape))
    log_q = _log_q(guide_trace, num, nesting)
    coords = _coords(proto, observed + list(posterior))
    return Draws(posterior, part.log_p, log_q, log_lik, predictive, data, dims, coords)


def _minibatches(subsampled: dict) -> list[dict]:
    """Index sets for every subsampled plate that together cover all their data."""
    if not subsampled:
        return [{}]
    if len(subsampled) > 1:
        raise ValueError(f"more than one subsampled plate: {sorted(subsampled)}")
    ((name, frame),) = subsampled.items()
    batches = math.ceil(frame.full_size / frame.size)
    return [
        {name: (torch.arange(frame.size) + b * frame.size) % frame.full_size}
        for b in range(batches)
    ]


def _per_draw(value: Tensor, num: int, shape: torch.Size) -> Tensor:
    """A value with or without the draws' dimension, as ``(S, *shape)``."""
    if value.numel() == num * math.prod(shape):
        return value.reshape((num, *shape))
    return value.reshape(shape).expand((num, *shape))


def _observed(
    model, guide_trace, args, kwargs, num, nesting, proto, names, subsampled, chunked, mode
):
    """Pointwise log-likelihood, predictive draw and data of each observed site, and the values
    of the deterministic sites ``chunked``, all over the full data."""
    log_lik, predictive, observed, gathered = {}, {}, {}, {}
    for indices in _minibatches(subsampled):
        conditioned = poutine.condition(model, indices)
        resample = Resample(names)(conditioned)
        with poutine.block():
            trace, _ = replay_particles(conditioned, guide_trace, args, kwargs, num, nesting, mode)
            resampled, _ = replay_particles(
                resample, guide_trace, args, kwargs, num, nesting, mode, resampled=names
            )
        for name in names:
            site, site_proto = trace.nodes[name], proto.nodes[name]
            batch_shape, value_shape = site_proto["fn"].batch_shape, site_proto["value"].shape
            scale = unsubsampled_scale(site)
            lp = scale_and_mask(site["fn"].log_prob(site["value"]), scale, site["mask"])
            lp = _per_draw(lp, num, batch_shape)
            pred = _per_draw(resampled.nodes[name]["value"], num, value_shape)
            obs = site["value"].reshape(value_shape)
            frame = next((f for f in site_proto["cond_indep_stack"] if f.name in indices), None)
            if frame is None:
                log_lik[name], predictive[name], observed[name] = lp, pred, obs
                continue
            axis = len(batch_shape) + frame.dim  # the plate's axis in the value
            idx = indices[frame.name].to(lp.device)
            if name not in log_lik:
                full = list(value_shape)
                full[axis] = frame.full_size
                log_lik[name] = lp.new_zeros((num, *full[: len(batch_shape)]))
                predictive[name] = pred.new_zeros((num, *full))
                observed[name] = obs.new_zeros(full)
            log_lik[name].index_copy_(axis + 1, idx, lp)
            predictive[name].index_copy_(axis + 1, idx, pred)
            observed[name].index_copy_(axis, idx, obs)
        for name in chunked:
            site_proto = proto.nodes[name]
            shape = site_proto["value"].shape
            value = _per_draw(trace.nodes[name]["value"], num, shape)
            frame = next(f for f in site_proto["cond_indep_stack"] if f.name in indices)
            axis = len(shape) + frame.dim
            if name not in gathered:
                full = list(shape)
                full[axis] = frame.full_size
                gathered[name] = value.new_zeros((num, *full))
            gathered[name].index_copy_(axis + 1, indices[frame.name].to(value.device), value)
    return log_lik, predictive, observed, gathered
