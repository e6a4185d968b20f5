r"""A Gaussian proposal built from SVGD's particles, for an evidence estimate that has a density.

SVGD's particles carry no density, so they give no bound on :math:`\log p(\mathcal D)` (see
:mod:`pyro_blr.diagnostics.particles`). What they can give is a *proposal*: the Gaussian with
their mean :math:`\bar\theta` and covariance :math:`S` in the model's unconstrained
coordinates,

.. math::
    q(\theta) = \mathcal N(\theta;\ \bar\theta,\ S), \qquad
    \hat Z = \frac1K \sum_{k=1}^K \frac{p(\mathcal D, \theta_k)}{q(\theta_k)},
    \quad \theta_k \sim q \text{ drawn afresh},

and the importance-sampling estimate :math:`\hat Z` is unbiased for :math:`p(\mathcal D)`
whatever :math:`q` is (as long as it covers the posterior), so :math:`\mathbb E \log \hat Z \le
\log p(\mathcal D)` (the IWAE bound, ``pb.log_evidence(..., method="iwae")``). The particles only
choose :math:`q`; the new draws are independent of them, so nothing is counted twice. The
estimate is that proposal's: as tight as :math:`q` is close to the posterior, and it says
nothing of SVGD's own KL. With :math:`n \le 2D` particles in :math:`D` coordinates the sample
covariance is too noisy to factor and its diagonal is used (an ``AutoDiagonalNormal``).

References:
    | Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, ICLR 2016)
    | https://arxiv.org/abs/1509.00519
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.distributions.transforms import biject_to
from pyro.infer import SVGD
from pyro.infer.autoguide import AutoContinuous, AutoDiagonalNormal, AutoMultivariateNormal
from pyro.nn import PyroParam
from torch import nn

from pyro_blr.core import model_keywords
from pyro_blr.diagnostics.particles import svgd_particles

__all__ = ["particle_proposal"]


def particle_proposal(
    model: Callable,
    svgd: SVGD,
    *args: Any,
    full_covariance: bool | None = None,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> AutoContinuous:
    r"""A Gaussian guide with the mean and covariance of SVGD's particles (unconstrained).

    Args:
        model: the Pyro model the SVGD object was built with.
        svgd: a fitted ``pyro_blr.samplers.SVGD`` (or ``pyro.infer.SVGD`` on one latent site).
        *args: the model's positional arguments.
        full_covariance: an ``AutoMultivariateNormal`` with the particles' covariance (``True``)
            or an ``AutoDiagonalNormal`` with their variances (``False``); by default the full
            covariance when there are more than :math:`2D` particles.
        model_kwargs: the model's keyword arguments as a dict (when one is named like an option).
        **kwargs: the model's keyword arguments.

    Returns:
        The guide, ready for ``pb.log_evidence``, ``Predictive`` or ``pb.to_inference_data``.

    Raises:
        ValueError: a coordinate with no spread over the particles (naming its site), a
            particle covariance that is not positive definite with ``full_covariance=True``, or
            Pyro 1.9.2's own ``SVGD`` on more than one latent site, whose particles are mixed
            across sites (use ``pyro_blr.samplers.SVGD``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer import SVGD, RBFSteinKernel
        >>> import pyro_blr as pb
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([0.5, 1.5, 1.0])
        >>> svgd = SVGD(model, RBFSteinKernel(), pyro.optim.Adam({"lr": 0.1}), 20, 1)
        >>> _ = [svgd.step(y) for _ in range(50)]
        >>> guide = particle_proposal(model, svgd, y)
        >>> type(guide).__name__, pb.log_evidence(model, guide, y, num_particles=100).value < 0
        ('AutoMultivariateNormal', True)
    """
    options = ("full_covariance", "model_kwargs")
    kwargs = model_keywords(model, "particle_proposal", options, kwargs, model_kwargs)
    particles = svgd_particles(model, svgd, args, kwargs)
    num = svgd.num_particles
    probe = AutoDiagonalNormal(model)
    with poutine.block(), torch.no_grad():
        probe(*args, **kwargs)  # the latent layout: sites in the order AutoContinuous packs them
    columns, owners = [], []
    for name, site in probe.prototype_trace.iter_stochastic_nodes():
        value = biject_to(site["fn"].support).inv(particles[name]).reshape(num, -1)
        columns.append(value)
        owners += [name] * value.shape[-1]
    theta = torch.cat(columns, -1).detach()
    dim = theta.shape[-1]
    if full_covariance is None:
        full_covariance = num > 2 * dim
    mean, var = theta.mean(0), theta.var(0)
    flat = [owners[i] for i in range(dim) if not var[i] > 0]
    if flat:
        raise ValueError(
            f"site(s) {sorted(set(flat))} have a coordinate with no spread over the "
            f"{num} particles: no Gaussian proposal covers them; run SVGD with more particles "
            "or from a wider start"
        )
    guide = (AutoMultivariateNormal if full_covariance else AutoDiagonalNormal)(model)
    with poutine.block(), torch.no_grad():
        guide(*args, **kwargs)
        guide.loc = nn.Parameter(mean)
        if full_covariance:
            factor, info = torch.linalg.cholesky_ex(torch.cov(theta.T).reshape(dim, dim))
            if info != 0:
                raise ValueError(
                    f"the covariance of {num} particles in {dim} coordinates is not positive "
                    "definite: pass full_covariance=False (their variances)"
                )
            scale = factor.diagonal()
            guide.scale = PyroParam(scale, guide.scale_constraint)
            guide.scale_tril = PyroParam(factor / scale[:, None], guide.scale_tril_constraint)
        else:
            guide.scale = PyroParam(var.sqrt(), guide.scale_constraint)
    return guide
