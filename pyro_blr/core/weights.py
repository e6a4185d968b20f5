r"""Log importance weights :math:`\log w_k = \log p(\mathcal D, z_k) - \log q(z_k)` from traces.

The guide draws :math:`K` particles at once inside a plate left of the model's plates (Pyro's
``vectorize_particles``), the model is replayed on them, and every site's log density (scaled by
:math:`N/B` in subsampled plates, masked as Pyro masks it) is summed per particle.

When every site of the model and the guide lies inside one plate, the joint factorizes over that
plate's elements and so does the weight, :math:`\log w_{k} = \sum_i \log w_{k,i}`: the per-element
weights (unscaled, shape ``(K, B)``) are what an unbiased minibatch Rényi bound needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core.traces import PARTICLE_PLATE, sample_sites, sum_per_particle

__all__ = ["LogWeights", "log_weights", "vectorized_traces"]


class LogWeights(NamedTuple):
    """Log importance weights of :math:`K` particles.

    Attributes:
        joint: :math:`\\log w_k`, shape ``(K,)`` (scaled as Pyro scales minibatches).
        local: per-element weights :math:`\\log w_{k,i}`, shape ``(K, B)``, with the minibatch
            scale :math:`N/B` taken out, or ``None`` when the sites do not all share one plate.
        local_scale: the factor (:math:`N/B`) that turns the sum over the ``B`` elements into an
            estimate of the sum over all :math:`N`.
        subsampled: the names of subsampled plates in the model.
        outside: latent sites outside the shared plate (why ``local`` is ``None``).
    """

    joint: Tensor
    local: Tensor | None
    local_scale: float
    subsampled: tuple[str, ...]
    outside: tuple[str, ...]


class _Term(NamedTuple):
    log_prob: Tensor  # signed (+ model, - guide), scaled and masked as Pyro does
    frames: dict  # the site's vectorized plates, by name
    name: str
    latent: bool  # a latent site of the model


def _frames(site) -> dict:
    return {
        f.name: f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE
    }


def _per_element(log_prob: Tensor, num_particles: int, nesting: int, dim: int) -> Tensor:
    """Sum a term over every plate dimension except ``dim``: shape ``(K, B)``."""
    while log_prob.dim() < nesting + 1:
        log_prob = log_prob.unsqueeze(0)
    others = [d for d in range(-nesting, 0) if d != dim]
    if others:
        log_prob = log_prob.sum(others, keepdim=True)
    return log_prob.reshape(log_prob.shape[-nesting - 1], -1).expand(num_particles, -1)


def vectorized_traces(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, num_particles: int, nesting: int
) -> tuple[Trace, Trace]:
    """Run ``guide`` on ``num_particles`` particles at once and ``model`` replayed on them."""
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def log_weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    max_plate_nesting: int,
    require_rsample: bool = True,
) -> LogWeights:
    """Draw ``num_particles`` particles from ``guide`` (vectorized) and weigh them by ``model``.

    Raises:
        ValueError: a guide site that cannot be reparameterized (its gradient would need a
            score-function term), or a model that does not broadcast over the particle plate.
    """
    nesting = max_plate_nesting
    model_trace, guide_trace = vectorized_traces(model, guide, args, kwargs, num_particles, nesting)
    joint = 0.0
    terms = []
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for name, site in sample_sites(trace, deterministic=False):
            if require_rsample and trace is guide_trace and not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site '{name}' ({type(site['fn']).__name__}) cannot be "
                    "reparameterized; these objectives need reparameterized guides"
                )
            log_prob = scale_and_mask(
                site["fn"].log_prob(site["value"]), site["scale"], site["mask"]
            )
            if not torch.is_tensor(log_prob):
                continue
            joint = joint + sign * sum_per_particle(log_prob, num_particles, nesting)
            latent = trace is model_trace and not site["is_observed"]
            terms.append(_Term(sign * log_prob, _frames(site), name, latent))
    subsampled = sorted(
        {f.name for t in terms for f in t.frames.values() if f.full_size not in (None, f.size)}
    )
    shared = set.intersection(*(set(t.frames) for t in terms))
    if not shared:
        outside = {t.name for t in terms if t.latent and not t.frames.keys() & set(subsampled)}
        return LogWeights(joint, None, 1.0, tuple(subsampled), tuple(sorted(outside)))
    # Every site lies in these plates: split the weight over one of them (the subsampled one, if
    # any), undoing its N/B scale so that each element's weight is that of one datum.
    name = next((n for n in subsampled if n in shared), sorted(shared)[0])
    frame = terms[0].frames[name]
    local_scale = (frame.full_size or frame.size) / frame.size
    local = sum(_per_element(t.log_prob, num_particles, nesting, frame.dim) for t in terms)
    return LogWeights(joint, local / local_scale, local_scale, tuple(subsampled), ())
