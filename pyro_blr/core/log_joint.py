r"""The negative log joint of a Pyro model at particles of its flat unconstrained latent vector.

.. math::
    \ell(\theta) = -\log p(\mathcal D, T(\theta)) - \log\lvert\det J_T(\theta)\rvert,

where :math:`\log p` is the model's log joint exactly as Pyro computes it (sites inside
``pyro.plate(..., subsample_size=B)`` scaled by :math:`N/B`, masks honoured) and :math:`T` maps
the flat vector to constrained site values (see :mod:`pyro_blr.core.layout`).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core.layout import LatentLayout, LatentSite
from pyro_blr.core.traces import PARTICLE_PLATE, site_log_probs, sum_per_particle

__all__ = ["log_joint", "neg_log_joint"]


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
    terms_out: list | None = None,
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
        terms_out: if given, each run's ``(name, log_prob)`` pairs (see
            :func:`pyro_blr.core.traces.site_log_probs`) and ``("log|det J|", log_det)`` are
            appended to it, to locate non-finite terms.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace())
        >>> neg_log_joint(model, layout, torch.tensor([[0.0], [1.0]])) - 0.5 * 1.8379
        tensor([0.0000, 0.5000])
    """
    kwargs = kwargs or {}
    num_particles = theta.shape[0]
    if not vectorize:
        rows = [
            _neg_log_joint_one(model, layout, theta[s], args, kwargs, terms_out)
            for s in range(num_particles)
        ]
        return torch.cat(rows)
    nesting = layout.max_plate_nesting
    values = {}
    log_det = theta.new_zeros(num_particles)
    for site, unconstrained in zip(layout.sites, layout.unpack(theta).values(), strict=True):
        values[site.name], jacobian = _to_constrained(site, unconstrained, num_particles)
        log_det = log_det + jacobian
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1):
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    terms = site_log_probs(trace)
    log_joint = theta.new_zeros(num_particles)
    for _, log_prob in terms:
        log_joint = log_joint + sum_per_particle(log_prob, num_particles, nesting)
    if terms_out is not None:
        terms_out.append([*terms, ("log|det J|", log_det)])
    return -(log_joint + log_det)


def _neg_log_joint_one(
    model: Callable, layout: LatentLayout, theta: Tensor, args: tuple, kwargs: dict, terms_out
) -> Tensor:
    values = {}
    log_det = theta.new_zeros(1)
    for site in layout.sites:
        unconstrained = theta[site.block].reshape(site.shape)
        values[site.name], jacobian = _to_constrained(site, unconstrained, 1)
        log_det = log_det + jacobian
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    terms = site_log_probs(trace)
    log_joint = sum(log_prob.sum() for _, log_prob in terms)
    if terms_out is not None:
        terms_out.append([*terms, ("log|det J|", log_det)])
    return -(log_joint + log_det)


def log_joint(
    model: Callable,
    values: dict[str, Tensor],
    batch_dims: dict[str, int],
    max_plate_nesting: int,
    args: tuple = (),
    kwargs: dict | None = None,
    vectorize: bool = True,
) -> Tensor:
    r""":math:`\log p(\mathcal D, x_s)` for constrained latent values with the particles first.

    The model runs conditioned on the values, once on all particles inside a plate left of its
    own plates (``vectorize=True``), or once per particle.

    Args:
        model: the Pyro model.
        values: site name -> constrained values of shape ``(S, *site_shape)``.
        batch_dims: site name -> how many leading dimensions of ``site_shape`` are batch (plate)
            dimensions.
        max_plate_nesting: the model's number of plate dimensions.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.
        vectorize: run the model once on all particles.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> log_joint(model, {"x": torch.tensor([0.0, 1.0])}, {"x": 0}, 0) + 0.5 * 1.8379
        tensor([ 0.0000, -0.5000])
    """
    kwargs = kwargs or {}
    num_particles = next(iter(values.values())).shape[0]
    if not vectorize:
        rows = []
        for s in range(num_particles):
            data = {name: value[s] for name, value in values.items()}
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
            rows.append(sum(log_prob.sum() for _, log_prob in site_log_probs(trace)))
        return torch.stack(rows)
    padded = {}
    for name, value in values.items():
        pad = (1,) * (max_plate_nesting - batch_dims[name])
        padded[name] = value.reshape((num_particles, *pad, *value.shape[1:]))
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1):
        trace = poutine.trace(poutine.condition(model, data=padded)).get_trace(*args, **kwargs)
    total = 0.0
    for _, log_prob in site_log_probs(trace):
        total = total + sum_per_particle(log_prob, num_particles, max_plate_nesting)
    return total
