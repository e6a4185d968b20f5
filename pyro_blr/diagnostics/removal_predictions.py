r"""The change of each prediction when a group of data is removed, from a
:class:`~pyro_blr.diagnostics.group_removal.GroupRemoval`: the model run on new inputs at the
fitted mean :math:`m` and at each :math:`m_{\setminus G}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide
from torch import Tensor
from torch.distributions import Independent

from pyro_blr.core import latent_layout, model_keywords
from pyro_blr.diagnostics.group_removal import GroupRemoval

__all__ = ["RemovalPredictions", "removal_predictions"]


class RemovalPredictions(NamedTuple):
    r"""A site's prediction before and after removing each group.

    Attributes:
        site: the site read.
        before: its prediction at the fitted mean :math:`m`.
        after: at each :math:`m_{\setminus G}`, shape ``(G, *before.shape)``.
        change: ``after - before``.
    """

    site: str
    before: Tensor
    after: Tensor
    change: Tensor


def _prediction(name: str, site: dict) -> Tensor:
    """A ``pyro.deterministic`` site's value; a sample site's probabilities (a discrete
    likelihood: ``Categorical``, ``Bernoulli``, ...) or else its mean."""
    fn = site["fn"]
    if site["infer"].get("_deterministic"):
        return site["value"]
    base = fn
    while isinstance(base, Independent):
        base = base.base_dist
    probs = getattr(base, "probs", None) if "probs" in base.arg_constraints else None
    if probs is not None:
        return probs
    try:
        return fn.mean
    except NotImplementedError:
        raise ValueError(
            f"site '{name}' has neither probabilities nor a mean ({type(fn).__name__}): record "
            "the prediction with pyro.deterministic and name that site"
        ) from None


def removal_predictions(
    model: Callable,
    guide: AutoGuide,
    removal: GroupRemoval,
    *args: Any,
    site: str,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> RemovalPredictions:
    r"""Predictions of ``site`` on new inputs at the fitted mean and after removing each group.

    The model runs with its latents set to :math:`m` and to every :math:`m_{\setminus G}`
    (plug-in predictions at the posterior mean: the change the removal makes to the mean's
    prediction, not to the predictive averaged over :math:`q`). The site's prediction is its
    value for a ``pyro.deterministic`` site, the probabilities of a discrete likelihood
    (``Categorical``, ``Bernoulli``, ...), or else the likelihood's mean.

    Args:
        model: the Pyro model.
        guide: the guide the removal was computed from (its latent layout).
        removal: :func:`~pyro_blr.diagnostics.group_removal.removal_sensitivity`'s result.
        *args: the model's positional arguments: the new inputs (an observed site may be
            ``None``, it is then drawn and only its distribution read).
        site: the site whose prediction is read.
        model_kwargs: the model's keyword arguments as a dict (required when one is named
            ``site``).
        **kwargs: the model's keyword arguments.

    Returns:
        A :class:`RemovalPredictions`.

    Raises:
        ValueError: the site is not in the model, or has neither probabilities nor a mean.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro_blr as pb
        >>> from pyro_blr.diagnostics.group_removal import removal_sensitivity
        >>> def model(y=None, n=4):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", n):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([2.0, 2.0, -1.0, 2.0])
        >>> guide = AutoNormal(model)
        >>> _ = pb.BLR(model, guide, pb.Newton(lr=1.0)).step(y)  # mean 5 / 5
        >>> removal = removal_sensitivity(model, guide, y, groups=[[0, 1]])
        >>> out = removal_predictions(model, guide, removal, None, 1, site="y")
        >>> round(float(out.before), 4), round(float(out.after), 4)  # without two 2s: 1 / 3
        (1.0, 0.3333)
    """
    kwargs = model_keywords(model, "removal_predictions", ("site",), kwargs, model_kwargs)
    layout = latent_layout(guide.prototype_trace)
    points = torch.cat([removal.loc[None], removal.means()])
    with torch.no_grad():
        values = []
        for theta in points:
            data = {s.name: s.transform(theta[s.block].reshape(s.shape)) for s in layout.sites}
            trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
            if site not in trace.nodes:
                names = [n for n, node in trace.nodes.items() if node["type"] == "sample"]
                raise ValueError(f"site '{site}' is not in the model's trace (sites: {names})")
            values.append(_prediction(site, trace.nodes[site]).detach())
    before, after = values[0], torch.stack(values[1:])
    return RemovalPredictions(site, before, after, after - before)
