r"""The natural parameters of a model's Gaussian prior, read from its latent sites in a trace.

Model merging (:func:`pyro_blr.blr.merge.merge`) subtracts the prior the posteriors share. When it
is not given, it is read here: the model runs with its latents set from the flat vector (the
layout of the guides), and each latent site's distribution must be a Gaussian over the site's
unconstrained coordinates with fixed parameters:

* ``Normal`` (possibly ``.expand(...)``-ed, ``.to_event(...)``-ed or in plates): mean ``loc``
  and precision ``1 / scale**2`` per coordinate;
* ``MultivariateNormal``: a block of the precision matrix per element of its batch.

A site scaled by ``poutine.scale`` has its precision scaled alike (a scaled Gaussian log density
is Gaussian). Anything else -- a distribution on a constrained support, a masked site, or
parameters that depend on other latent sites (a hierarchical prior, e.g. ``w ~ Normal(0, tau)``)
-- is refused, naming the site: its natural parameters are not fixed numbers, so pass the prior
explicitly. The dependence is checked by running the model at two latent vectors and comparing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.distributions.torch_distribution import ExpandedDistribution
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal

from pyro_blr.blr.merge_maths import GaussianNaturals
from pyro_blr.core import LatentLayout
from pyro_blr.core.log_joint import conditioned_trace

__all__ = ["model_prior"]

_FIX = (
    "pass prior= explicitly (a Gaussian guide holding the prior, or "
    "GaussianNaturals.from_moments(loc, precision) over the guides' flat latent vector)"
)


def _base(fn) -> object:
    """The distribution under ``Independent`` and ``expand`` wrappers (nothing else)."""
    while isinstance(fn, Independent | ExpandedDistribution):
        fn = fn.base_dist
    return fn


def _site_prior(name: str, site: dict, shape: torch.Size, like: Tensor) -> tuple[Tensor, Tensor]:
    """One site's prior mean ``(n,)`` and precision (``(n,)`` or a block matrix ``(n, n)``)."""
    fn = site["fn"]
    base = _base(fn)
    if site.get("mask") is not None and site["mask"] is not True:
        raise ValueError(
            f"latent site '{name}' is masked (poutine.mask): its prior is not a Gaussian over all "
            f"its coordinates; {_FIX}"
        )
    scale = torch.as_tensor(site.get("scale", 1.0), dtype=like.dtype, device=like.device)
    if scale.dim() > 0 or not bool(scale > 0):
        raise ValueError(
            f"latent site '{name}' is scaled by {scale.tolist()} (poutine.scale): a Gaussian "
            f"prior needs one positive scale; {_FIX}"
        )
    if type(base) is Normal or (isinstance(base, Normal) and base.support is Normal.support):
        mean = fn.mean.to(like).expand(shape).reshape(-1)
        precision = fn.variance.to(like).expand(shape).reshape(-1).reciprocal()
        return mean, scale * precision
    if isinstance(base, MultivariateNormal):
        size = base.event_shape[0]
        mean = fn.mean.to(like).expand(shape).reshape(-1)
        blocks = base.precision_matrix.to(like).expand(*shape[:-1], size, size)
        return mean, scale * torch.block_diag(*blocks.reshape(-1, size, size))
    raise ValueError(
        f"latent site '{name}' has prior {type(fn).__name__} (over {type(base).__name__}), not a "
        "Normal or MultivariateNormal over the real line: the guides' unconstrained "
        f"coordinates do not have a Gaussian prior to subtract; {_FIX}"
    )


def model_prior(
    model: Callable,
    layout: LatentLayout,
    points: Tensor,
    args: tuple,
    kwargs: dict,
    diagonal: bool,
) -> GaussianNaturals:
    r"""The model's prior over the flat latent vector as natural parameters, read from its
    latent sites' distributions (see the module docstring).

    Args:
        model: the Pyro model.
        layout: the latent layout of the guides.
        points: two latent vectors ``(2, D)`` at which the model runs: a prior whose parameters
            differ between them depends on other latents and is refused.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.
        diagonal: return a diagonal Gaussian (a full prior is projected:
            :meth:`GaussianNaturals.to_diagonal`).

    Returns:
        The prior's :class:`GaussianNaturals`.

    Raises:
        ValueError: a latent site whose prior is not a fixed Gaussian over the real line,
            naming it.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model():
        ...     pyro.sample("w", dist.Normal(torch.tensor([1.0, 0.0]), 2.0).to_event(1))
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace())
        >>> model_prior(model, layout, torch.zeros(2, 2), (), {}, diagonal=True)
        GaussianNaturals(eta=tensor([0.2500, 0.0000]), precision=tensor([0.2500, 0.2500]))
    """
    reads = []
    with torch.no_grad():
        for point in points:
            trace, _ = conditioned_trace(model, layout, point, args, kwargs, {})
            reads.append(
                [_site_prior(s.name, trace.nodes[s.name], s.shape, point) for s in layout.sites]
            )
    for site, (mean, precision), (mean2, precision2) in zip(layout.sites, *reads, strict=True):
        if not (torch.equal(mean, mean2) and torch.equal(precision, precision2)):
            raise ValueError(
                f"the prior of latent site '{site.name}' changes with the other latent sites (a "
                f"hierarchical prior): its natural parameters are not fixed numbers; {_FIX}"
            )
    means = torch.cat([mean for mean, _ in reads[0]])
    blocks = [precision for _, precision in reads[0]]
    if all(block.dim() == 1 for block in blocks):
        precision = torch.cat(blocks)
        precision = precision if diagonal else torch.diag(precision)
        return GaussianNaturals.from_moments(means, precision)
    matrices = [torch.diag(b) if b.dim() == 1 else b for b in blocks]
    prior = GaussianNaturals.from_moments(means, torch.block_diag(*matrices))
    return prior.to_diagonal() if diagonal else prior
