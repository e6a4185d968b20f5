r"""The prior's curvature per coordinate: the :math:`\delta` of Vadam's precision.

``RMSprop(perturb=True)`` and ``Adam(perturb=True)`` draw from
:math:`\mathcal N(m, 1/(v/N + \delta))` (Khan et al. 2018), where :math:`\delta` is the prior's
precision: here the diagonal of the Hessian of the part of :math:`\ell` that is not the data's,
the model run with its observed sites blocked (priors, log-Jacobians and the ``weight_decay``
penalty), at the guide's mean. For a ``Normal(., s)`` prior it is :math:`1/s^2` exactly.

References:
    | Fast and Scalable Bayesian Deep Learning by Weight-Perturbation in Adam (Khan et al., ICML
      2018) https://arxiv.org/abs/1806.04854
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core import LatentLayout, Target
from pyro_blr.core.autodiff import EXACT_DIAGONAL_MAX

__all__ = ["prior_precision"]


def prior_precision(
    model: Callable,
    args: tuple,
    kwargs: dict,
    layout: LatentLayout,
    mode: str,
    loc: Tensor,
    weight_decay: float = 0.0,
    subsample: dict[str, Tensor] | None = None,
    rule_name: str = "Adam",
) -> Tensor:
    r"""The diagonal of the Hessian of the model's prior part at ``loc``, shape ``(D,)``.

    Exact by one Hessian-vector product per coordinate up to
    :data:`~pyro_blr.core.autodiff.EXACT_DIAGONAL_MAX` coordinates; above, Hutchinson's estimate
    from Rademacher probes drawn from a fixed seed (the run's random stream is untouched), exact
    where the priors do not couple coordinates (a diagonal Hessian), an estimate for hierarchical
    priors.

    Args:
        model: the Pyro model.
        args: its positional arguments.
        kwargs: its keyword arguments.
        layout: its latent layout.
        mode: how particles are evaluated (see :class:`pyro_blr.core.Target`).
        loc: the guide's mean, shape ``(D,)``.
        weight_decay: the rule's extra penalty, whose curvature is added.
        subsample: the step's minibatch indices (the priors of global sites do not see them).
        rule_name: the rule's name, for the error.

    Raises:
        ValueError: a coordinate whose prior curvature is not positive, naming its site.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
        ...     pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor(1.0)
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace(y))
        >>> prior_precision(model, (y,), {}, layout, "loop", torch.zeros(1))  # 1 / 2**2
        tensor([0.2500])
    """
    blocked = poutine.block(model, hide_fn=lambda msg: msg.get("is_observed", False))
    prior = Target.build(blocked, args, kwargs, layout, mode, weight_decay=weight_decay)
    prior = prior.with_subsample(subsample)
    generator = torch.Generator(device=loc.device).manual_seed(0)
    try:
        delta = prior.derivatives(loc[None].detach(), "diag", generator=generator).hess[0]
    except RuntimeError as error:  # autograd: no prior term depends on the latents at all
        if "does not require grad" not in str(error):
            raise
        delta = torch.zeros_like(loc)
    bad = ~(delta > 0) | ~torch.isfinite(delta)
    if bad.any():
        sites = sorted({layout.site_at(int(i)) for i in bad.nonzero()})
        estimated = (
            f"; above {EXACT_DIAGONAL_MAX} coordinates it is estimated from Rademacher probes, "
            "exact only where the priors do not couple coordinates (a hierarchical prior makes "
            "it noisy)"
            if layout.dim > EXACT_DIAGONAL_MAX
            else ""
        )
        raise ValueError(
            f"{rule_name}(perturb=True) draws from N(m, 1/(v/N + delta)) with delta the prior's "
            f"curvature at the mean, which is not positive at site(s) {sites} (a flat or "
            f"improper prior, or a heavy-tailed one far out{estimated}): give them a log-concave "
            "prior (e.g. Normal), add weight_decay, or use perturb=False"
        )
    return delta
