r"""The latent vector of a Pyro model and its negative log joint in unconstrained coordinates.

A guide's prototype trace fixes the order, shapes and supports of the model's latent sites. A flat
vector :math:`\theta \in \mathbb R^D` of unconstrained values maps to constrained values
:math:`x = T(\theta)` site by site with ``biject_to(site.support)`` (the same bijections Pyro's
autoguides use, and in the same order, so a flat index means the same coordinate to both), and

.. math::
    \ell(\theta) = -\log p(\mathcal D, T(\theta)) - \log\lvert\det J_T(\theta)\rvert,

where :math:`\log p` is the model's log joint exactly as Pyro computes it: sites inside
``pyro.plate(..., subsample_size=B)`` are scaled by :math:`N/B`, masks are honoured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.trace_struct import Trace
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.transforms import Transform

__all__ = [
    "LatentLayout",
    "LatentSite",
    "latent_layout",
    "max_plate_nesting",
    "neg_log_joint",
    "trace_without_rng",
]

PARTICLE_PLATE = "_blr_particles"


@dataclass(frozen=True)
class LatentSite:
    """One latent site's block of the flat unconstrained vector.

    Attributes:
        name: the sample site's name.
        transform: the bijection from unconstrained to constrained values.
        shape: the unconstrained value's shape in the prototype trace (plate dimensions included).
        event_dim: how many rightmost dimensions of ``shape`` belong to the event.
        offset: the first index of this site in the flat vector.
        size: the number of coordinates of this site.
    """

    name: str
    transform: Transform
    shape: torch.Size
    event_dim: int
    offset: int
    size: int


@dataclass(frozen=True)
class LatentLayout:
    """The flat unconstrained latent vector of a model, site by site.

    Attributes:
        sites: the latent sites in the guide's order.
        dim: the total number of coordinates :math:`D`.
        max_plate_nesting: the number of batch dimensions the model's plates use.
    """

    sites: tuple[LatentSite, ...]
    dim: int
    max_plate_nesting: int

    def unpack(self, theta: Tensor) -> dict[str, Tensor]:
        """Split particles ``theta`` of shape ``(S, D)`` into unconstrained site values.

        Each value gets shape ``(S, 1, ..., 1) + site.shape`` so that the particle dimension sits
        left of every plate dimension.
        """
        num_particles = theta.shape[0]
        values = {}
        for site in self.sites:
            batch_dim = len(site.shape) - site.event_dim
            pad = (1,) * (self.max_plate_nesting - batch_dim)
            block = theta[:, site.offset : site.offset + site.size]
            values[site.name] = block.reshape((num_particles, *pad, *site.shape))
        return values

    def site_at(self, index: int) -> str:
        """The name of the site that owns flat coordinate ``index``."""
        for site in self.sites:
            if site.offset <= index < site.offset + site.size:
                return site.name
        raise IndexError(f"coordinate {index} is outside the latent vector of size {self.dim}")


def trace_without_rng(model: Callable, args: tuple, kwargs: dict, like: Tensor) -> Trace:
    """A full trace of ``model`` (observed sites included) that leaves the RNG where it was, so
    that a driver's set-up does not change the draws of the run it sets up (checkpoints resume
    bit for bit). ``like`` names the device whose generator is forked."""
    devices = [like.device] if like.is_cuda else []
    with torch.random.fork_rng(devices=devices), poutine.block():
        return poutine.trace(model).get_trace(*args, **kwargs)


def max_plate_nesting(trace: Trace) -> int:
    """How many batch dimensions the plates (and batched values) of a trace use."""
    nesting = 0
    for site in trace.nodes.values():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim is not None:
                nesting = max(nesting, -frame.dim)
        value = site["value"]
        if torch.is_tensor(value):
            nesting = max(nesting, value.dim() - site["fn"].event_dim)
    return nesting


def latent_layout(prototype_trace: Trace, model_trace: Trace | None = None) -> LatentLayout:
    """Build the flat latent layout from a guide's prototype trace.

    Args:
        prototype_trace: a trace of the model (e.g. ``guide.prototype_trace``); its unobserved
            sample sites, in order, are the latent sites.
        model_trace: a full trace of the model, observed sites included, used to find how many
            plate dimensions the model uses. Defaults to ``prototype_trace``.

    Raises:
        ValueError: for a discrete latent site, or a latent site inside a subsampled plate (its
            value changes size with the minibatch, so it has no fixed block in the flat vector).
    """
    sites = []
    offset = 0
    for name, site in prototype_trace.iter_stochastic_nodes():
        fn = site["fn"]
        if isinstance(fn, _Subsample):
            continue
        if getattr(fn, "has_enumerate_support", False) or fn.support.is_discrete:
            raise ValueError(
                f"latent site '{name}' is discrete ({type(fn).__name__}); the Bayesian learning "
                "rule needs continuous latents: enumerate it out in the model "
                "(infer={'enumerate': 'parallel'} with TraceEnum_ELBO) or observe it"
            )
        for frame in site["cond_indep_stack"]:
            full_size = frame.full_size if frame.full_size is not None else frame.size
            if frame.vectorized and full_size != frame.size:
                raise ValueError(
                    f"latent site '{name}' is local to the subsampled plate '{frame.name}' "
                    f"(size {full_size}, subsample {frame.size}); BLR drives global latents "
                    "under subsampling: use a full-data plate for local latents"
                )
        transform = biject_to(fn.support)
        unconstrained = transform.inv(site["value"].detach())
        event_dim = fn.event_dim + unconstrained.dim() - site["value"].dim()
        size = unconstrained.numel()
        sites.append(LatentSite(name, transform, unconstrained.shape, event_dim, offset, size))
        offset += size
    if not sites:
        raise ValueError("the model has no latent sites to infer")
    nesting = max_plate_nesting(model_trace if model_trace is not None else prototype_trace)
    return LatentLayout(tuple(sites), offset, nesting)


def _sum_per_particle(term: Tensor, num_particles: int, max_plate_nesting: int) -> Tensor:
    """Sum a log-density term over every dimension right of the particle dimension."""
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


def _log_prob_terms(trace: Trace):
    """The scaled and masked log density of every sample site that counts in the joint."""
    for site in trace.nodes.values():
        if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
            continue
        if site["infer"].get("_deterministic"):
            continue
        log_prob = site["fn"].log_prob(site["value"])
        log_prob = scale_and_mask(log_prob, site["scale"], site["mask"])
        site["blr_log_prob"] = log_prob
        if torch.is_tensor(log_prob):
            yield log_prob


def _to_constrained(site: LatentSite, unconstrained: Tensor, leading: int) -> tuple[Tensor, Tensor]:
    value = site.transform(unconstrained)
    jacobian = site.transform.log_abs_det_jacobian(unconstrained, value)
    return value, jacobian.reshape(leading, -1).sum(-1)


def neg_log_joint(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple = (),
    kwargs: dict | None = None,
    vectorize: bool = True,
    trace_out: list | None = None,
) -> Tensor:
    r"""The negative log joint :math:`\ell(\theta_s)` of each particle, shape ``(S,)``.

    Args:
        model: the Pyro model.
        layout: its latent layout.
        theta: unconstrained particles of shape ``(S, D)``.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.
        vectorize: run the model once on all particles, inside a plate left of its own plates
            (the model must broadcast, as for Pyro's ``vectorize_particles=True``); otherwise run
            it once per particle.
        trace_out: if given, the model traces are appended to it (to locate non-finite terms).
    """
    kwargs = kwargs or {}
    num_particles = theta.shape[0]
    if not vectorize:
        return torch.cat(
            [
                _neg_log_joint_one(model, layout, theta[s], args, kwargs, trace_out)
                for s in range(num_particles)
            ]
        )
    nesting = layout.max_plate_nesting
    values = {}
    log_det = theta.new_zeros(num_particles)
    for site, unconstrained in zip(layout.sites, layout.unpack(theta).values(), strict=True):
        values[site.name], jacobian = _to_constrained(site, unconstrained, num_particles)
        log_det = log_det + jacobian
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1):
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    log_joint = theta.new_zeros(num_particles)
    for log_prob in _log_prob_terms(trace):
        log_joint = log_joint + _sum_per_particle(log_prob, num_particles, nesting)
    if trace_out is not None:
        trace_out.append(trace)
    return -(log_joint + log_det)


def _neg_log_joint_one(
    model: Callable, layout: LatentLayout, theta: Tensor, args: tuple, kwargs: dict, trace_out
) -> Tensor:
    values = {}
    log_det = theta.new_zeros(1)
    for site in layout.sites:
        unconstrained = theta[site.offset : site.offset + site.size].reshape(site.shape)
        values[site.name], jacobian = _to_constrained(site, unconstrained, 1)
        log_det = log_det + jacobian
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    log_joint = sum(log_prob.sum() for log_prob in _log_prob_terms(trace))
    if trace_out is not None:
        trace_out.append(trace)
    return -(log_joint + log_det)
