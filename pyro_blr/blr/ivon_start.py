r"""Where IVON's precision starts: on the data's scale, whatever the guide's ``init_scale``.

IVON's curvature estimate :math:`h` moves toward its target by the fraction :math:`1-\beta_2`
(0.1% at the default) a step, so a start that is off by a factor takes thousands of steps to
forget. The BLR's fixed point for a Gaussian (Khan & Rue 2023, Eq. 23) is

.. math::
    S = \mathbb E_q\big[\nabla^2 \ell(\theta)\big],

and the best start is its diagonal. With ``hess_init="auto"`` (the default) the driver takes it
at the guide as initialized, :math:`q_0`, averaged over :data:`START_DRAWS` draws:

.. math::
    h_{0,i} = \frac1K \sum_{k=1}^{K} \big[\nabla^2 \ell(\theta_k)\big]_{ii},
    \qquad \theta_k \sim q_0,

where it is positive and finite and the model has at most :data:`EXACT_START_MAX_DIM`
coordinates (each draw's Hessian costs :math:`D` backward passes). The expectation matters for
networks: at a symmetric start (all weights at zero) the Hessian at the mean has no curvature in
the hidden layers, while at draws from :math:`q_0` it has the data's. Elsewhere IVON's own
start applies: :math:`h_{0,i} = N_i h_0`, the paper's per-datum curvature :math:`h_0`
(``hess_init``; 1 under ``"auto"``) times the effective sample size :math:`N_i` that
coordinate sees: ``ess`` divided by the size of the plates its site lies in (a latent per datum
sees one datum). A number passed as ``hess_init`` always gives that start.

References:
    | Variational Learning is Effective for Large Deep Networks (Shen et al., ICML 2024)
    | https://arxiv.org/abs/2402.17641 (Algorithm 1, ``hess_init``)
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023)
    | https://arxiv.org/abs/2107.04562
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.poutine import Trace
from torch import Tensor

from pyro_blr.core import LatentLayout, derivatives

__all__ = [
    "AUTO_HESS_INIT",
    "EXACT_START_MAX_DIM",
    "START_DRAWS",
    "expected_curvature",
    "per_datum_start",
]

EXACT_START_MAX_DIM = 4096
"""``hess_init="auto"`` takes the expected Hessian diagonal up to this many coordinates."""

START_DRAWS = 4
"""Draws from the guide that ``hess_init="auto"`` averages the Hessian diagonal over."""

AUTO_HESS_INIT = 1.0
"""The per-datum curvature ``hess_init="auto"`` falls back on (standardized data's scale)."""


def per_datum_start(
    layout: LatentLayout, prototype_trace: Trace, ess: float, hess_init: float, like: Tensor
) -> Tensor:
    r"""IVON's start :math:`N_i h_0` per coordinate: ``ess`` divided by the size of the plates a
    site lies in (at least one datum), times ``hess_init``, on ``like``'s dtype and device.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_blr.core import latent_layout
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         z = pyro.sample("z", dist.Normal(mu, 1.0))
        ...         pyro.sample("y", dist.Normal(z, 1.0), obs=y)
        >>> guide = AutoNormal(model)
        >>> _ = guide(torch.zeros(3))
        >>> layout = latent_layout(guide.prototype_trace)
        >>> per_datum_start(layout, guide.prototype_trace, 3.0, 2.0, like=torch.zeros(()))
        tensor([6., 2., 2., 2.])
    """
    start = like.new_empty(layout.dim)
    for site in layout.sites:
        stack = prototype_trace.nodes[site.name]["cond_indep_stack"]
        copies = math.prod(f.full_size or f.size for f in stack if f.vectorized)
        start[site.block] = max(ess / copies, 1.0) * hess_init
    return start


def expected_curvature(
    neg_log_joint: Callable[[Tensor], Tensor],
    loc: Tensor,
    precision: Tensor,
    draws: int = START_DRAWS,
) -> Tensor:
    r"""The expected Hessian diagonal :math:`\mathbb E_q[\nabla^2\ell]_{ii}` under the diagonal
    Gaussian :math:`q = \mathcal N(m, \operatorname{diag}(s)^{-1})`, averaged over ``draws``
    draws from a private generator (the run's random stream is untouched, and every process of
    a distributed run draws the same points). Coordinates where some draw's Hessian is not
    finite come back as NaN.

    Args:
        neg_log_joint: maps particles ``(S, D)`` to :math:`\ell` per particle ``(S,)``.
        loc: the mean :math:`m`, shape ``(D,)``.
        precision: the diagonal precision :math:`s`, shape ``(D,)``.
        draws: how many draws to average over.

    Example:
        >>> import torch
        >>> ell = lambda t: t.exp().sum(-1)  # Hessian diagonal exp(theta): E_q = exp(m + 1/(2s))
        >>> h = expected_curvature(ell, torch.zeros(2, dtype=torch.float64),
        ...                        torch.full((2,), 1e6, dtype=torch.float64))
        >>> torch.allclose(h, torch.ones(2, dtype=torch.float64), rtol=1e-2)
        True
    """
    generator = torch.Generator(device=loc.device).manual_seed(0)
    noise = torch.randn(draws, loc.shape[-1], generator=generator, dtype=loc.dtype,
                        device=loc.device)  # fmt: skip
    hess = derivatives(neg_log_joint, loc + noise * precision.rsqrt(), hessian=True).hess
    diagonal = hess.diagonal(dim1=-2, dim2=-1)
    return torch.where(torch.isfinite(diagonal).all(0), diagonal.mean(0), torch.nan)
