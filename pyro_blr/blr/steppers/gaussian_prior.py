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

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core import LatentLayout, Target
from pyro_blr.core.autodiff import EXACT_DIAGONAL_MAX

__all__ = ["prior_groups", "prior_precision"]

_WRAPPERS = (torch.distributions.Independent, dist.ExpandedDistribution, dist.MaskedDistribution)


def _elementwise(fn) -> bool:
    """Whether a prior is a product of univariate factors, one per element of its site."""
    while isinstance(fn, _WRAPPERS):
        fn = fn.base_dist
    return fn.event_shape == ()


def prior_groups(layout: LatentLayout, trace, device=None) -> Tensor:
    """Each coordinate's group for the prior's Hessian diagonal: one group per latent site whose
    prior is a product of univariate factors (its elements do not interact in their own prior;
    in their children's, latent sites of their own, only with the children), one group per
    coordinate of any other site (``MultivariateNormal``, ``Dirichlet``, ``LKJCholesky``).

    Args:
        layout: the latent layout.
        trace: a trace of the model holding each latent site's prior (``guide.prototype_trace``).
        device: where the groups go.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model():
        ...     tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
        ...     pyro.sample("w", dist.Normal(0.0, tau).expand([3]).to_event(1))
        ...     pyro.sample("v", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
        >>> trace = pyro.poutine.trace(model).get_trace()
        >>> prior_groups(latent_layout(trace), trace).tolist()
        [0, 1, 1, 1, 2, 3]
    """
    out, first = [], 0
    for site in layout.sites:
        if _elementwise(trace.nodes[site.name]["fn"]):
            out.append(torch.full((site.size,), first, device=device))
            first += 1
        else:
            out.append(torch.arange(first, first + site.size, device=device))
            first += site.size
    return torch.cat(out)


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
    groups: Tensor | None = None,
) -> Tensor:
    r"""The diagonal of the Hessian of the model's prior part at ``loc``, shape ``(D,)``.

    One Hessian-vector product per coordinate up to
    :data:`~pyro_blr.core.autodiff.EXACT_DIAGONAL_MAX` coordinates (exact whatever the priors);
    above, one per group of :func:`prior_groups` where given (``groups``): exact for hierarchical
    priors built from univariate factors, as long as no latent site's prior reads two elements of
    another site (``Normal(0, tau.sum())``), whose diagonal would then hold that block's row
    sums; else one per coordinate.

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
        groups: :func:`prior_groups` (``None``: one group per coordinate).

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
    if groups is None or layout.dim <= EXACT_DIAGONAL_MAX:
        groups = torch.arange(layout.dim, device=loc.device)
    try:
        delta = prior.derivatives(loc[None].detach(), "hessian", groups).hess[0]
    except RuntimeError as error:  # autograd: no prior term depends on the latents at all
        if "does not require grad" not in str(error):
            raise
        delta = torch.zeros_like(loc)
    bad = ~(delta > 0) | ~torch.isfinite(delta)
    if bad.any():
        sites = sorted({layout.site_at(int(i)) for i in bad.nonzero()})
        raise ValueError(
            f"{rule_name}(perturb=True) draws from N(m, 1/(v/N + delta)) with delta the prior's "
            f"curvature at the mean, which is not positive at site(s) {sites} (a flat or "
            "improper prior, or a heavy-tailed one far out): give them a log-concave prior (e.g. "
            "Normal), add weight_decay, or use perturb=False"
        )
    return delta
