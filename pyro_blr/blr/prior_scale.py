r"""The prior's scale per coordinate: the unit in which a Gaussian rule's safeguards are set.

Absolute constants in a rule's defaults (a clip radius of 0.1, a starting precision of one per
datum) assume data in units near one: with data in units of :math:`10^8` a clip of 0.1 moves
the mean nowhere in thousands of steps. The model's own prior says which units the latents live
in. For each coordinate :math:`i` of the flat unconstrained vector this module draws
:math:`K` = :data:`PRIOR_DRAWS` latent vectors from the model's prior (observed sites fixed,
hierarchies sampled as written), maps them to the guide's unconstrained coordinates and takes
the robust scale

.. math::
    s_i = \frac{q_{0.75}(u_i) - q_{0.25}(u_i)}{2\,\Phi^{-1}(0.75)},

the standard deviation for a Normal prior and finite for heavy-tailed ones (Cauchy, Student-t,
a half-Cauchy's logarithm). Rescaling the data, the priors and the likelihood's scales by
:math:`c` rescales every :math:`s_i` of a real-valued site by :math:`c` (up to floating-point
rounding), so whatever is measured in units of :math:`s_i` is invariant to the data's units.

A latent site whose log density the model scales by :math:`c` (``poutine.scale`` on the prior,
tempering; the :math:`N/B` of a subsampled plate excepted) has the effective prior density
:math:`p^c`, whose Gaussian standard deviation is :math:`s/\sqrt c`: its coordinates' scale is
:math:`s_i/\sqrt{c_i}`, with :math:`c_i` read from the traces the draws come from (NaN where the
draws disagree on it). A model and its ``poutine.scale(model, 2)`` with the prior's scale times
:math:`\sqrt 2` then have the same log joint up to a constant, and the same scale.

The draws come from a fixed seed with the run's generators left where they were: the scale is
the same in every process and after a checkpoint is restored. A coordinate whose scale is not
a positive finite number (a point-mass prior) is NaN; a model whose prior cannot be sampled
(``ImproperUniform``) gives ``None``. Callers then fall back to unit scale.

References:
    | Robust Statistics, 2nd ed. (Huber & Ronchetti, Wiley 2009), Section 5.1 (the
      interquartile range as a scale estimate)
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core import LatentLayout, rng_kept, unsubsampled_scale

__all__ = ["IQR_PER_SD", "PRIOR_DRAWS", "prior_scale", "robust_scale"]

PRIOR_DRAWS = 128
r"""Draws from the prior the scale is taken over: the interquartile range of :math:`n` Normal draws
has a relative standard deviation of about :math:`1.17/\sqrt n`, 10% here (enough for the unit of
a safeguard), at the cost of 128 model runs once per fit."""

IQR_PER_SD = 1.3489795003921634
r"""The interquartile range of a standard Normal, :math:`2\Phi^{-1}(0.75)`."""


def robust_scale(draws: Tensor) -> Tensor:
    """The interquartile range over the first dimension divided by :data:`IQR_PER_SD` (a
    Normal's standard deviation), NaN where it is not a positive finite number.

    Example:
        >>> import torch
        >>> x = torch.tensor([[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
        >>> robust_scale(x * 1e8) / 1e8
        tensor([0.7413,    nan], dtype=torch.float64)
    """
    quartiles = torch.quantile(draws, draws.new_tensor([0.25, 0.75]), dim=0)
    scale = (quartiles[1] - quartiles[0]) / IQR_PER_SD
    return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.nan)


def prior_scale(
    model: Callable,
    layout: LatentLayout,
    args: tuple,
    kwargs: dict,
    like: Tensor,
    draws: int = PRIOR_DRAWS,
) -> Tensor | None:
    r"""The prior's robust scale :math:`s_i / \sqrt{c_i}` of every coordinate of ``layout`` (see
    the module docstring: :math:`c_i` is the scale its site's log density carries), on ``like``'s
    dtype and device; ``None`` where the prior cannot be sampled or a draw does not fit the
    layout.

    Args:
        model: the Pyro model, unchanged.
        layout: its flat unconstrained latent vector.
        args: the model's positional arguments.
        kwargs: its keyword arguments.
        like: a tensor with the dtype and device of the result.
        draws: how many prior draws to take.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_blr.core import latent_layout
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 1e8))
        ...     pyro.sample("y", dist.Normal(mu, 1e8), obs=y)
        >>> guide = AutoNormal(model)
        >>> y = torch.zeros((), dtype=torch.float64)
        >>> _ = guide(y)
        >>> s = prior_scale(model, latent_layout(guide.prototype_trace), (y,), {}, like=y)
        >>> 0.75e8 < float(s) < 1.25e8
        True
        >>> tempered = prior_scale(pyro.poutine.scale(model, 4.0), latent_layout(
        ...     guide.prototype_trace), (y,), {}, like=y)
        >>> torch.allclose(tempered, s / 2)
        True
    """
    rows, weights = [], []
    with rng_kept(like), poutine.block(), torch.no_grad():
        torch.manual_seed(0)
        try:
            for _ in range(draws):
                trace = poutine.trace(model).get_trace(*args, **kwargs)
                rows.append(_unconstrained(layout, trace))
                weights.append(_site_scales(layout, trace))
        except Exception:  # the fit's own model runs raise what is the model's to raise
            return None  # e.g. an ImproperUniform prior, which has no sampler
    if any(row is None for row in rows):
        return None
    scale = robust_scale(torch.stack(rows).to(dtype=like.dtype, device=like.device))
    weights = torch.stack(weights).to(dtype=like.dtype, device=like.device)
    weight = torch.where((weights == weights[0]).all(0), weights[0], torch.nan)
    scale = scale / weight.sqrt()  # p^c has the Gaussian sd s / sqrt(c)
    return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.nan)


def _unconstrained(layout: LatentLayout, trace) -> Tensor | None:
    """The trace's latent values as one flat unconstrained vector, or ``None`` if a site's
    value does not have the size the layout gives it."""
    parts = []
    for site in layout.sites:
        value = site.transform.inv(trace.nodes[site.name]["value"]).reshape(-1)
        if value.numel() != site.size:
            return None
        parts.append(value)
    return torch.cat(parts)


def _site_scales(layout: LatentLayout, trace) -> Tensor:
    r"""The scale :math:`c` each site's log density carries in ``trace`` (without the
    :math:`N/B` of its subsampled plates), one per coordinate of ``layout`` (float64); NaN for a
    site whose scale does not broadcast against its batch shape."""
    parts = []
    for site in layout.sites:
        node = trace.nodes[site.name]
        weight = torch.as_tensor(unsubsampled_scale(node), dtype=torch.float64).cpu()
        if weight.numel() == 1:
            parts.append(weight.reshape(1).expand(site.size))
            continue
        batch_shape = node["fn"].batch_shape
        try:
            weight = torch.broadcast_to(weight, batch_shape)
        except RuntimeError:
            parts.append(torch.full((site.size,), torch.nan, dtype=torch.float64))
            continue
        per_element = site.size // max(weight.numel(), 1)  # the unconstrained event's size
        if per_element * weight.numel() != site.size:
            parts.append(torch.full((site.size,), torch.nan, dtype=torch.float64))
            continue
        parts.append(weight.reshape(-1, 1).expand(-1, per_element).reshape(-1))
    return torch.cat(parts)
