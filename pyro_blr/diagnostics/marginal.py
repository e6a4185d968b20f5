r"""Per-site terms of a model whose enumerated sites are summed out, for the diagnostics: each
datum's marginal log-likelihood as the model scales and masks it, and the marginal mean of an
observed site.

Both read a packed trace from :func:`pyro_blr.core.enumeration.enumerated_trace`.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core import pointwise_log_likelihood, sample_sites, unsubsampled_scale

__all__ = ["marginal_mean", "scaled_pointwise_log_likelihood"]


def scaled_pointwise_log_likelihood(trace: Trace, name: str) -> Tensor:
    """:func:`pyro_blr.core.enumerated_terms.pointwise_log_likelihood` of observed site
    ``name`` of a packed enumerated trace, weighted by the site's ``poutine.scale`` (its
    minibatch factor left out: the data are full) and masked as Pyro masks it: a masked-out
    element has no term (0, as without enumeration; where the site depends on an enumerated
    site its mask was applied inside the sum, which gives 0 there as well).

    Raises:
        ValueError: the site's elements share an enumerated site (see
            :func:`pyro_blr.core.enumerated_terms.pointwise_log_likelihood`).
    """
    site = trace.nodes[name]
    term = pointwise_log_likelihood(trace, name)
    return scale_and_mask(term, unsubsampled_scale(site), site["mask"])


def marginal_mean(trace: Trace, name: str, nesting: int) -> Tensor | None:
    r"""The mean of observed site ``name`` of an enumerated trace with the enumerated sites it
    depends on summed out by their prior, :math:`\mathbb E[y \mid \theta] = \sum_z
    p(z \mid \theta)\, \mathbb E[y \mid z, \theta]`, shape ``batch_shape + event_shape``
    (the plate dimensions, right of the enumerated ones); ``None`` where it is not determined
    here: the likelihood has no mean, or the enumerated sites' joint prior does not sum to one
    over their values as broadcast (dimensions recycled along a ``pyro.markov`` chain).

    The prior is the product of the conditionals of the enumerated sites connected to ``y``
    (through an enumerated dimension of size above one they share), each unmasked and so
    normalized, as in ``TraceEnum_ELBO``.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core.enumeration import enumerated_trace
        >>> def model():
        ...     with pyro.plate("data", 2):
        ...         k = pyro.sample("k", dist.Bernoulli(0.25), infer={"enumerate": "parallel"})
        ...         pyro.sample("x", dist.Normal(4.0 * k, 1.0), obs=torch.zeros(2))
        >>> marginal_mean(enumerated_trace(model, (), {}, 1, {}), "x", 1)
        tensor([1., 1.])
    """
    site = trace.nodes[name]
    fn = site["fn"]
    try:
        mean = fn.mean
    except NotImplementedError:  # a likelihood without a mean (e.g. Categorical)
        return None
    event_dim = len(fn.event_shape)
    batch_shape = fn.batch_shape[max(0, len(fn.batch_shape) - nesting) :]
    mean = mean.expand(fn.batch_shape + fn.event_shape)
    enumerated = [
        s["unscaled_log_prob"]
        for _, s in sample_sites(trace, deterministic=False)
        if not s["is_observed"]
    ]
    reached = _enum_positions(fn.batch_shape, nesting)
    connected, grown = [], True
    while grown:
        grown = False
        for log_prob in enumerated:
            positions = _enum_positions(log_prob.shape, nesting)
            if not any(t is log_prob for t in connected) and positions & reached:
                connected.append(log_prob)
                reached |= positions
                grown = True
    if not connected:
        return mean.reshape(batch_shape + fn.event_shape)
    weight = sum(connected).exp()
    total = weight.sum([d for d in range(-weight.dim(), -nesting)], keepdim=True)
    if not torch.allclose(total, torch.ones_like(total)):
        return None
    weighted = weight.reshape(weight.shape + (1,) * event_dim) * mean
    left = weighted.dim() - nesting - event_dim
    if left > 0:
        weighted = weighted.sum(list(range(left)))
    shape = batch_shape + fn.event_shape
    if weighted.numel() != shape.numel():  # the prior spans plates the site is not in
        return None
    return weighted.reshape(shape)


def _enum_positions(shape: torch.Size, nesting: int) -> set[int]:
    """The (negative) positions of a batch shape's dimensions of size above one left of the
    ``nesting`` plate dimensions: the enumerated values it depends on."""
    return {d for d in range(-len(shape), -nesting) if shape[d] > 1}
