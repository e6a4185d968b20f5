r"""ArviZ ``InferenceData`` from a fitted ``pyro.infer.SVGD``: its particles as the posterior draws.

Stein variational gradient descent (Liu & Wang, 2016) moves :math:`n` particles
:math:`\{\theta_i\}` along the direction that most decreases
:math:`\mathrm{KL}(q \,\|\, p(\theta \mid \mathcal D))` in the unit ball of a kernel's
reproducing-kernel Hilbert space,

.. math::
    \theta_i \leftarrow \theta_i + \frac{\epsilon}{n} \sum_{j=1}^n
        \bigl[k(\theta_j, \theta_i)\, \nabla_{\theta_j} \log p(\theta_j, \mathcal D)
        + \nabla_{\theta_j} k(\theta_j, \theta_i)\bigr],

the Stein operator of the posterior applied to the kernel, averaged over the particles
(their Algorithm 1). Pyro's ``pyro.infer.SVGD`` runs it in the unconstrained space; its
particles are the approximation, an empirical measure :math:`\frac1n \sum_i
\delta_{\theta_i}` with **no density**. The model is replayed once on each particle (a
guide of point masses), which gives everything
:func:`~pyro_blr.diagnostics.arviz.to_inference_data` gives for a guide but ``log_q``.

**No evidence.** A bound or estimate of :math:`\log p(\mathcal D)` needs
:math:`\log q(\theta)` at the draws (:math:`\mathbb E_q[\log p(\mathcal D, \theta) - \log
q(\theta)]`, or importance weights :math:`p(\mathcal D, \theta)/q(\theta)`), and an empirical
measure has none: its entropy is :math:`-\infty` and its "ELBO" is :math:`-\infty`, and a kernel
density put on the particles afterwards is a new approximation whose bound says nothing about SVGD's
own. No evidence is returned here. What is honest: use the particles to build a proposal with a
density (a Gaussian with their mean and covariance in the unconstrained space,
:func:`~pyro_blr.diagnostics.particle_proposal.particle_proposal`) and estimate
:math:`\log p(\mathcal D)` by importance sampling from it with fresh draws
(``pb.log_evidence(model, guide, method="iwae")``): the estimate is then that proposal's, valid
whatever the proposal, and only as tight as the proposal is close to the posterior.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVGD
from pyro.poutine.runtime import get_plates
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core import PARTICLE_PLATE, model_keywords, sample_sites
from pyro_blr.diagnostics.arviz_compat import from_dict, to_numpy
from pyro_blr.diagnostics.draws import draw
from pyro_blr.diagnostics.inputs import check_finite_inputs_at_draw
from pyro_blr.diagnostics.mistakes import check_call

__all__ = ["check_particle_packing", "particles_to_inference_data", "svgd_particles"]


def check_particle_packing(svgd: SVGD, sites: list[str]) -> None:
    """Refuse the particles of Pyro 1.9.2's own ``SVGD.step`` on more than one latent site.

    Pyro packs ``svgd_particles`` site by site (every particle's first site, then every
    particle's second) and its ``step`` reshapes them particle by particle, so with two or more
    sites each row its kernel sees mixes coordinates of different particles: the particles are
    not SVGD's. A subclass that overrides ``step`` (``pyro_blr.samplers.SVGD``) is trusted.

    Args:
        svgd: the fitted SVGD.
        sites: the names of its latent sites.

    Raises:
        ValueError: ``svgd`` runs Pyro's own ``step`` on more than one latent site (naming them).
    """
    if type(svgd).step is SVGD.step and len(sites) > 1 and svgd.num_particles > 1:
        raise ValueError(
            f"this pyro.infer.SVGD has latent sites {sites}: Pyro 1.9.2's SVGD.step packs "
            "particles site by site but reshapes them particle by particle, so its kernel mixes "
            "particles across these sites and its particles are not SVGD's; fit with "
            "pyro_blr.samplers.SVGD (same arguments), or write the latents as one site"
        )


def svgd_particles(model: Callable, svgd: SVGD, args: tuple, kwargs: dict) -> dict[str, Tensor]:
    """The particles of a fitted ``pyro.infer.SVGD``, site -> ``(n, *site shape)``, constrained.

    ``SVGD.get_named_particles`` gives each site with the particle plate's padding
    (``(n, 1, ..., *shape)``); the site shapes are read from one trace of ``model``.

    Raises:
        ValueError: ``svgd`` has no particles in the param store (never stepped, or the store was
            cleared), or its sites are not the latent sites of ``model`` (naming them), or
            it is Pyro 1.9.2's own ``SVGD`` on more than one latent site (see
            :func:`check_particle_packing`).
    """
    if not isinstance(svgd, SVGD):
        raise TypeError(f"expected a fitted pyro.infer.SVGD, got {type(svgd).__name__}")
    if "svgd_particles" not in pyro.get_param_store():
        raise ValueError(
            "the param store holds no 'svgd_particles': call svgd.step(...) before converting, "
            "and do not clear the param store in between"
        )
    named = svgd.get_named_particles()
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    latent = {
        name: site
        for name, site in sample_sites(trace, deterministic=False)
        if not site["is_observed"]
    }
    check_particle_packing(svgd, sorted(named))
    missing, extra = sorted(set(latent) - set(named)), sorted(set(named) - set(latent))
    if missing or extra:
        raise ValueError(
            f"the SVGD particles do not match the model's latent sites: the model's "
            f"{missing} have no particles, the particles' {extra} are not in the model; pass "
            "the model the SVGD object was built with, called with the same arguments"
        )
    num = svgd.num_particles
    particles = {}
    for name, site in latent.items():
        shape = site["value"].shape
        value = named[name].detach()
        if value.numel() != num * math.prod(shape):
            raise ValueError(
                f"site '{name}': the SVGD particles hold {tuple(value.shape)}, which is not "
                f"{num} particles of the model's shape {tuple(shape)}; pass the model the SVGD "
                "object was built with, called with the same arguments"
            )
        particles[name] = value.reshape((num, *shape))
    return particles


class _PointMasses:
    """A guide that puts each latent site at the particles: particle ``s`` for draw ``s`` inside
    a particle plate of ``n`` draws, the first particle outside one (a prototype trace). Each
    site is drawn inside the model's plates of that site, as an autoguide draws it, so its batch
    dimensions are known to whoever replays the draws."""

    def __init__(self, particles: dict[str, Tensor], trace: Trace, nesting: int):
        self.particles, self.nesting = particles, nesting
        self.event_dims = {name: trace.nodes[name]["fn"].event_dim for name in particles}
        self.plates = {
            name: [
                (f.name, f.size, f.dim)
                for f in trace.nodes[name]["cond_indep_stack"]
                if f.vectorized
            ]
            for name in particles
        }
        self.num = len(next(iter(particles.values())))

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        frames = [f for f in get_plates() if f.name == PARTICLE_PLATE]
        if frames and frames[0].size != self.num:
            raise ValueError(f"{frames[0].size} draws asked of {self.num} particles")
        for name, value in self.particles.items():
            event_dim = self.event_dims[name]
            if frames:  # (n, 1, ..., 1, *shape) with the particles at dim -nesting - 1
                batch_ndim = value.dim() - 1 - event_dim
                value = value.reshape(
                    (self.num, *[1] * (self.nesting - batch_ndim), *value.shape[1:])
                )
            else:
                value = value[0]
            with ExitStack() as stack:
                for plate, size, dim in self.plates[name]:
                    stack.enter_context(pyro.plate(plate, size, dim=dim))
                pyro.sample(name, dist.Delta(value, event_dim=event_dim))


def particles_to_inference_data(
    model: Callable,
    svgd: SVGD,
    *args: Any,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> Any:
    r"""ArviZ ``InferenceData`` of a fitted ``pyro.infer.SVGD``: one draw per particle.

    Groups as :func:`pb.to_inference_data <pyro_blr.diagnostics.arviz.to_inference_data>`:
    ``posterior`` (latent sites at the particles and ``pyro.deterministic`` sites, constrained,
    dimensions named after the plates), ``log_likelihood`` (pointwise, for ``az.loo``),
    ``posterior_predictive`` (one draw per particle), ``observed_data``, and ``sample_stats``
    with ``log_p`` :math:`= \log p(\mathcal D, \theta_i)` only: the particles have no density,
    so there is no ``log_q`` and no evidence (see the module's notes). One chain of ``n`` draws:
    the particles interact, so ArviZ's effective sample size and :math:`\hat R` do not apply;
    ``az.loo`` treats them as draws of :math:`\frac1n \sum_i \delta_{\theta_i}`, which is what
    SVGD approximates the posterior with.

    References:
        | Stein Variational Gradient Descent: A General Purpose Bayesian Inference Algorithm
          (Liu & Wang, NeurIPS 2016)
        | https://arxiv.org/abs/1608.04471

    Args:
        model: the Pyro model the SVGD object was built with (not its vectorized copy).
        svgd: a ``pyro.infer.SVGD`` that has taken its steps.
        *args: the model's positional arguments.
        model_kwargs: the model's keyword arguments, given as a dict; required when the model
            has an argument named ``model_kwargs``.
        **kwargs: the model's keyword arguments.

    Returns:
        ``arviz.InferenceData`` (ArviZ 0.x) or the ``DataTree`` of ArviZ 1.x, on the CPU, with
        ``attrs["inference_library"] == "pyro_blr"`` and ``attrs["approximation"] ==
        "svgd particles"``.

    Raises:
        TypeError: ``svgd`` is not a ``pyro.infer.SVGD``.
        ValueError: no particles in the param store, particles that do not match the model's
            latent sites (naming them), Pyro 1.9.2's own ``SVGD`` on more than one latent site
            (use ``pyro_blr.samplers.SVGD``), or anything :func:`to_inference_data` refuses.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer import SVGD, RBFSteinKernel
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([0.5, 1.5, 1.0])
        >>> svgd = SVGD(model, RBFSteinKernel(), pyro.optim.Adam({"lr": 0.1}), 10, 1)
        >>> _ = [svgd.step(y) for _ in range(5)]
        >>> idata = particles_to_inference_data(model, svgd, y)
        >>> idata.posterior["mu"].shape, idata.log_likelihood["y"].dims
        ((1, 10), ('chain', 'draw', 'data'))
    """
    kwargs = model_keywords(
        model, "particles_to_inference_data", ("model_kwargs",), kwargs, model_kwargs
    )
    particles = svgd_particles(model, svgd, args, kwargs)
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    nesting = svgd.max_plate_nesting
    guide = _PointMasses(particles, trace, nesting)
    check_call(model, guide, args, kwargs, "particles_to_inference_data")
    check_finite_inputs_at_draw(model, guide, args, kwargs, "particles_to_inference_data")
    with torch.no_grad():
        draws = draw(model, guide, args, kwargs, svgd.num_particles, nesting)

    def arrays(group: dict) -> dict:
        return {name: to_numpy(value)[None] for name, value in group.items()}

    groups = {
        "posterior": arrays(draws.posterior),
        "sample_stats": arrays({"log_p": draws.log_p}),
        "log_likelihood": arrays(draws.log_likelihood),
        "posterior_predictive": arrays(draws.predictive),
        "observed_data": {name: to_numpy(value) for name, value in draws.observed.items()},
    }
    coords = {name: to_numpy(idx) for name, idx in draws.coords.items()}
    attrs = {"inference_library": "pyro_blr", "approximation": "svgd particles"}
    return from_dict(groups, coords, draws.dims, attrs)
