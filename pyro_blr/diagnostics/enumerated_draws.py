r"""What a model with enumerated discrete sites says of posterior draws from its guide.

A site marked ``infer={"enumerate": "parallel"}`` is left out of the guide and summed out, as
``TraceEnum_ELBO`` sums it. For each continuous draw :math:`\theta_s \sim q` this module gives

* the marginal log joint :math:`\log p(\mathcal D, \theta_s) = \log \sum_z p(\mathcal D,
  \theta_s, z)` (:func:`pyro_blr.core.enumeration.trace_log_joint`);
* each observed site's pointwise marginal log-likelihood, every enumerated site it depends on
  summed out, :math:`\log p(y_i \mid \theta_s) = \log \sum_{z_i} p(z_i \mid \theta_s)\,
  p(y_i \mid z_i, \theta_s)` (:func:`pyro_blr.core.enumerated_terms.pointwise_log_likelihood`,
  for ``az.loo``);
* a draw of the enumerated sites from their exact conditional
  :math:`z_s \sim p(z \mid \mathcal D, \theta_s)` with Pyro's ``infer_discrete``
  (:func:`pyro_blr.diagnostics.discrete.discrete_draws`), and the ``pyro.deterministic``
  values computed with it.

One model run per draw for each of these (the model need not broadcast over draws).

References:
    | Tensor Variable Elimination for Plated Factor Graphs (Obermeyer et al., ICML 2019)
    | https://arxiv.org/abs/1902.03210
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core import pointwise_log_likelihood, sample_sites, unsubsampled_scale
from pyro_blr.core.enumeration import trace_log_joint
from pyro_blr.core.weights import enumerated_model_traces
from pyro_blr.diagnostics.discrete import discrete_draws

__all__ = [
    "EnumeratedDraws",
    "enumerated_draws",
    "marginal_mean",
    "scaled_pointwise_log_likelihood",
]


class EnumeratedDraws(NamedTuple):
    """The model's view of :math:`S` continuous draws, its enumerated sites summed out.

    Attributes:
        particles: each draw's continuous latent values, in the shapes the model samples.
        sampled: enumerated site or ``pyro.deterministic`` site -> its values given each draw
            (enumerated ones drawn from :math:`p(z \\mid \\mathcal D, \\theta_s)`),
            ``(S, *shape)``.
        log_p: :math:`\\log p(\\mathcal D, \\theta_s)`, the enumerated sites summed out, ``(S,)``.
        log_likelihood: observed site -> its pointwise marginal log-likelihood (scaled as
            ``poutine.scale`` scales it), ``(S, *plate_shape)``; a site whose elements share an
            enumerated site (no per-element term) is left out, with a warning.
    """

    particles: list[dict[str, Tensor]]
    sampled: dict[str, Tensor]
    log_p: Tensor
    log_likelihood: dict[str, Tensor]


def enumerated_draws(
    model: Callable,
    guide_trace: Trace,
    args: tuple,
    kwargs: dict,
    num: int,
    nesting: int,
    latents: Sequence[str],
    observed: Sequence[str],
    deterministic: Sequence[str] = (),
) -> EnumeratedDraws:
    """Evaluate ``model`` on the ``num`` draws of a particle-vectorized ``guide_trace``.

    Args:
        model: the Pyro model, unchanged.
        guide_trace: the guide's trace inside a particle plate at dimension ``-nesting - 1``.
        args: the model's positional arguments.
        kwargs: its keyword arguments.
        num: the number of draws.
        nesting: the model's ``max_plate_nesting``.
        latents: the continuous latent sites (those the guide samples).
        observed: the observed sites whose pointwise log-likelihood to return.
        deterministic: ``pyro.deterministic`` sites whose values to return.

    Raises:
        ValueError: naming the site, from :func:`pyro_blr.core.enumeration.enumerated_trace`
            (a site that cannot be summed out, a shape that does not fit ``nesting``).

    Warns:
        UserWarning: an observed site without per-element log-likelihoods (its elements
            share an enumerated site: an HMM's chain, a global assignment), naming it.
    """
    traces = enumerated_model_traces(model, guide_trace, args, kwargs, num, nesting)
    particles = [{name: trace.nodes[name]["value"] for name in latents} for trace in traces]
    log_p = torch.stack([trace_log_joint(trace) for trace in traces])
    log_likelihood = {}
    for name in observed:
        try:
            rows = [scaled_pointwise_log_likelihood(trace, name) for trace in traces]
        except ValueError as error:
            warnings.warn(
                f"to_inference_data leaves observed site '{name}' out of the log_likelihood "
                f"group: {error}",
                UserWarning,
                stacklevel=3,
            )
            continue
        log_likelihood[name] = torch.stack(rows)
    sampled = discrete_draws(model, args, kwargs, nesting, particles, return_sites=deterministic)
    return EnumeratedDraws(particles, sampled, log_p, log_likelihood)


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
