r"""Pyro traces as this package reads them: sample sites, plates and per-particle sums.

Every entry point evaluates a model on :math:`S` particles at once by running it inside one extra
plate, :data:`PARTICLE_PLATE`, placed left of the model's own plates (Pyro's
``vectorize_particles``). The helpers here find how many plate dimensions a model uses, validate
site shapes as Pyro's ELBOs do, and reduce each site's log density to one number per particle.
Only public Pyro APIs are used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_site_shape
from torch import Tensor

from pyro_blr.core.plates import full_size, is_subsampled

__all__ = [
    "PARTICLE_PLATE",
    "guess_max_plate_nesting",
    "max_plate_nesting",
    "num_observations",
    "rng_kept",
    "sample_sites",
    "site_log_probs",
    "sum_per_particle",
    "trace_without_rng",
    "unsubsampled_scale",
    "validate_site_shapes",
]

PARTICLE_PLATE = "_pyro_blr_particles"
"""The name of the plate that holds the particles, left of every plate of the model."""


def sample_sites(trace: Trace, deterministic: bool = True) -> Iterator[tuple[str, dict]]:
    """The sample sites of a trace, without Pyro's subsample sites.

    Args:
        trace: a Pyro trace.
        deterministic: include ``pyro.deterministic`` sites (which Pyro marks observed).
    """
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not deterministic and site["infer"].get("_deterministic"):
            continue
        yield name, site


def site_log_probs(trace: Trace) -> list[tuple[str, Tensor]]:
    """``(name, log_prob)`` of every site that counts in the joint density, scaled by the
    minibatch factor :math:`N/B` and masked exactly as Pyro scales and masks it."""
    terms = []
    for name, site in sample_sites(trace, deterministic=False):
        log_prob = site["fn"].log_prob(site["value"])
        log_prob = scale_and_mask(log_prob, site["scale"], site["mask"])
        if torch.is_tensor(log_prob):
            terms.append((name, log_prob))
    return terms


def unsubsampled_scale(site: dict):
    """A site's own scale (``poutine.scale``, tempering) without the :math:`N/B` factors of
    its subsampled plates: what its terms weigh when the full data are used.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     with pyro.poutine.scale(scale=2.0), pyro.plate("data", 10, subsample_size=5):
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.zeros(5))
        >>> site = pyro.poutine.trace(model).get_trace().nodes["y"]
        >>> site["scale"], unsubsampled_scale(site)
        (4.0, 2.0)
    """
    factor = 1.0
    for frame in site["cond_indep_stack"]:
        if is_subsampled(frame):
            factor *= full_size(frame) / frame.size
    return site["scale"] / factor


def sum_per_particle(term: Tensor, num_particles: int, max_plate_nesting: int) -> Tensor:
    """Sum a log-density term over every dimension right of the particle dimension.

    Raises:
        ValueError: the term has batch dimensions left of the model's plates other than the
            particle dimension.

    Example:
        >>> import torch
        >>> sum_per_particle(torch.ones(3, 1, 4), num_particles=3, max_plate_nesting=2)
        tensor([4., 4., 4.])
    """
    if term.dim() <= max_plate_nesting:  # no particle dimension: shared by all particles
        return term.sum().expand(num_particles)
    term = term.flatten(term.dim() - max_plate_nesting) if max_plate_nesting else term[..., None]
    term = term.sum(-1)
    if term.dim() != 1:
        raise ValueError(
            f"a log density has batch shape {tuple(term.shape)} left of the model's "
            f"{max_plate_nesting} plate dimensions; declare every batch dimension with pyro.plate "
            "or pass max_plate_nesting"
        )
    return term.expand(num_particles)


def max_plate_nesting(trace: Trace) -> int:
    """How many batch dimensions the plates (and batched values) of a trace use."""
    nesting = 0
    for _, site in sample_sites(trace):
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim is not None:
                nesting = max(nesting, -frame.dim)
        value = site["value"]
        if torch.is_tensor(value):
            nesting = max(nesting, value.dim() - site["fn"].event_dim)
    return nesting


def num_observations(trace: Trace) -> int | float:
    r"""The number of observed data, each counted with the weight its log density carries: over
    the observed sample sites, the largest

    .. math::
        n_{\text{site}} = \bar c_{\text{site}} \prod_{p} N_p,

    the product of the full sizes :math:`N_p` of the site's plates (a subsampled plate counts all
    its elements: its :math:`N/B` factor times its :math:`B` elements; each site of a sequential
    plate counts its full size) times the mean of the site's own scale :math:`c`
    (``poutine.scale``, tempering; :func:`unsubsampled_scale`), at least 1. A model under
    ``poutine.scale(model, scale=2)`` counts each datum twice, as duplicated data would: both have
    the same log joint. It is the effective sample size of IVON's data-scale hyperparameters.
    An ``int`` where the count is whole.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", 1000, subsample_size=10) as idx:
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> num_observations(poutine.trace(model).get_trace(torch.zeros(1000)))
        1000
        >>> num_observations(poutine.trace(poutine.scale(model, 2.0)).get_trace(torch.zeros(1000)))
        2000
    """
    largest = 1
    for _, site in sample_sites(trace, deterministic=False):
        if site["is_observed"]:
            size = 1
            for frame in site["cond_indep_stack"]:
                size *= full_size(frame)  # a sequential plate's sites each count its full size
            weight = unsubsampled_scale(site)  # a tensor scale weighs each element: its mean
            weight = float(weight.mean()) if torch.is_tensor(weight) else float(weight)
            largest = max(largest, weight * size)
    return int(largest) if float(largest).is_integer() else float(largest)


def guess_max_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """The model's plate nesting from one run of ``guide`` and ``model`` replayed on it.

    With Pyro's validation on (the default), every site's log-density shape is checked against
    its plates first, as Pyro's ELBOs check it: a value that broadcasts against a plate it is not
    declared in (``y`` of shape ``(N, 1)`` in a plate of size ``N``) raises Pyro's shape error,
    naming the site, instead of being summed over a silently larger array.
    """
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    guide_trace, model_trace = (
        prune_subsample_sites(guide_trace),
        prune_subsample_sites(model_trace),
    )
    validate_site_shapes(guide_trace)
    validate_site_shapes(model_trace)
    sites = [
        site
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
    ]
    dims = [f.dim for site in sites for f in site["cond_indep_stack"] if f.vectorized]
    return -min(dims) if dims else 0


def validate_site_shapes(trace: Trace) -> None:
    """Check every site's log-density shape against its plates, as Pyro's ELBOs do (when Pyro's
    validation is on): a value that broadcasts against a plate it is not declared in raises
    Pyro's ``ValueError`` naming the site."""
    if not is_validation_enabled():
        return
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    for site in trace.nodes.values():
        if site["type"] == "sample":
            check_site_shape(site, max_plate_nesting=float("inf"))


def rng_kept(like: Tensor) -> AbstractContextManager:
    """A context that leaves torch's CPU generator, and the CUDA generator of ``like``'s device
    when it lives on one, where they were: work done inside (a set-up's probe draws, a model run
    that draws a minibatch) does not change the draws of the run around it.

    Example:
        >>> import torch
        >>> state = torch.get_rng_state()
        >>> with rng_kept(torch.zeros(())):
        ...     _ = torch.randn(3)
        >>> torch.equal(torch.get_rng_state(), state)
        True
    """
    return torch.random.fork_rng(devices=[like.device] if like.is_cuda else [])


def trace_without_rng(model: Callable, args: tuple, kwargs: dict, like: Tensor) -> Trace:
    """A full trace of ``model`` (observed sites included) that leaves the RNG where it was, so
    that an entry point's set-up does not change the draws of the run it sets up (checkpoints
    resume bit for bit). ``like`` names the device whose generator is kept."""
    with rng_kept(like), poutine.block():
        return poutine.trace(model).get_trace(*args, **kwargs)
