r"""Model merging: one Gaussian posterior from several fitted on separate data, or fine-tuned
from one prior (Daheim, Möllenhoff, Ponti, Gurevych & Khan, ICLR 2024).

It lives beside the Bayesian learning rule because it is the rule's own arithmetic: the BLR
fits a Gaussian guide by its natural parameters, and at a fixed point those are the prior's plus
a sum over the data (see :mod:`pyro_blr.blr.merge_maths`). Merging adds the posteriors' natural
parameters and subtracts the shared prior the right number of times; the result is written into
a new guide of the same class, which ``Predictive``, ``median()`` and ``pb.BLR`` take as any
fitted guide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoGuide, AutoMultivariateNormal
from torch import Tensor

from pyro_blr.blr.merge_maths import GaussianNaturals, merge_naturals, not_positive_definite
from pyro_blr.blr.merge_prior import model_prior
from pyro_blr.core import (
    GaussianGuide,
    LatentLayout,
    check_gaussian_guide,
    initialize_guide,
    latent_layout,
    model_keywords,
)

__all__ = ["merge", "natural_parameters"]

_LOCAL_PARAMS = (
    "fit each guide with pyro.settings.set(module_local_params=True) set first, so that every "
    "guide keeps its own parameters (by default Pyro's param store gives every "
    "AutoNormal(model) the same parameter names, and the last one fitted overwrites the others)"
)


def _layout(guide: AutoGuide, who: str) -> LatentLayout:
    check_gaussian_guide(guide, who)
    if guide.prototype_trace is None:
        raise ValueError(f"{who} has never been run: fit it (e.g. with pb.BLR) before merging")
    return latent_layout(guide.prototype_trace)


def natural_parameters(guide: AutoGuide) -> GaussianNaturals:
    r"""A fitted Gaussian autoguide's natural parameters :math:`(S m, S)` over its flat
    unconstrained latent vector (diagonal precision for ``AutoNormal`` and
    ``AutoDiagonalNormal``, a matrix for ``AutoMultivariateNormal``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro_blr as pb
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = AutoNormal(model)
        >>> _ = pb.BLR(model, guide, pb.Newton(lr=1.0)).step(torch.tensor([1.0, 2.0]))
        >>> natural_parameters(guide)  # precision 1 + 2 data, eta = 0 + 1 + 2
        GaussianNaturals(eta=tensor([3.0000]), precision=tensor([3.0000]))
    """
    layout = _layout(guide, f"natural_parameters: {type(guide).__name__}")
    loc, precision = GaussianGuide(guide, layout).read()
    return GaussianNaturals.from_moments(loc.detach(), precision.detach())


def _signature(layout: LatentLayout) -> list[tuple[str, tuple[int, ...]]]:
    return [(site.name, tuple(site.shape)) for site in layout.sites]


def _check_alike(guides: Sequence[AutoGuide]) -> LatentLayout:
    """The guides' common layout; raise naming the first guide that differs from guide 0."""
    if not guides:
        raise ValueError("merge needs at least one guide")
    layouts = [_layout(g, f"merge: guide {k} ({type(g).__name__})") for k, g in enumerate(guides)]
    first, full = guides[0], isinstance(guides[0], AutoMultivariateNormal)
    params = {id(p): 0 for p in first.parameters()}
    like = next(iter(first.parameters()))
    for k, (guide, layout) in enumerate(zip(guides, layouts, strict=True)):
        if isinstance(guide, AutoMultivariateNormal) != full:
            family = "full-covariance" if full else "diagonal"
            raise ValueError(
                f"merge: guide {k} ({type(guide).__name__}) is not a {family} Gaussian like "
                f"guide 0 ({type(first).__name__}): merge guides of one family"
            )
        if _signature(layout) != _signature(layouts[0]):
            raise ValueError(
                f"merge: guide {k} has latent sites {_signature(layout)}, guide 0 "
                f"{_signature(layouts[0])}: merged guides must be fitted to one model with the "
                "same latent sites and shapes (a latent local to the data plate differs "
                "between data sets and cannot be merged)"
            )
        param = next(iter(guide.parameters()))
        if (param.dtype, param.device) != (like.dtype, like.device):
            raise ValueError(
                f"merge: guide {k} holds {param.dtype} on {param.device}, guide 0 {like.dtype} "
                f"on {like.device}: fit them on data of one dtype and device"
            )
        shared = [j for p in guide.parameters() if (j := params.get(id(p))) is not None]
        if k > 0 and shared:
            raise ValueError(
                f"merge: guides {shared[0]} and {k} share their parameters (the same tensors), so "
                f"they hold the same posterior: {_LOCAL_PARAMS}"
            )
        params.update({id(p): k for p in guide.parameters()})
    return layouts[0]


def _prior(prior: Any, guides, layout, args, kwargs, diagonal: bool) -> GaussianNaturals:
    if isinstance(prior, GaussianNaturals):
        found = prior
    elif isinstance(prior, AutoGuide):
        if _signature(_layout(prior, "merge: the prior guide")) != _signature(layout):
            raise ValueError(
                "merge: the prior guide has other latent sites or shapes than the guides: it "
                "must be a fit of the same model"
            )
        found = natural_parameters(prior)
    elif isinstance(prior, str) and prior == "model":
        model = guides[0].model
        points = torch.stack([natural_parameters(g).mean() for g in guides[:2]])
        if len(points) == 1 or torch.equal(points[0], points[1]):
            points = torch.stack([points[0], points[0] + 1.0])
        found = model_prior(model, layout, points, args, kwargs, diagonal)
    else:
        raise TypeError(
            "merge: prior must be 'model' (read from the model's latent sites), a Gaussian "
            f"guide or GaussianNaturals, not {type(prior).__name__}"
        )
    like = next(iter(guides[0].parameters()))  # the guides' dtype and device
    found = GaussianNaturals(found.eta.detach().to(like), found.precision.detach().to(like))
    if found.diagonal != diagonal:
        if not diagonal:
            found = GaussianNaturals(found.eta, torch.diag(found.precision))
        else:
            found = found.to_diagonal()
    if found.eta.shape != (layout.dim,):
        raise ValueError(
            f"merge: the prior has {found.eta.shape[0]} coordinates, the guides {layout.dim}"
        )
    if (where := not_positive_definite(found.precision)) is not None:
        raise ValueError(
            f"merge: the prior's precision is not positive definite at latent site "
            f"'{layout.site_at(where)}' (an improper prior cannot be subtracted)"
        )
    return found


def merge(
    guides: Sequence[AutoGuide],
    *args: Any,
    prior: Any = "model",
    weights: Sequence[float] | Tensor | None = None,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> AutoGuide:
    r"""Merge Gaussian posteriors fitted on separate data (or fine-tuned from one prior).

    With natural parameters :math:`\lambda_k = (S_k m_k, S_k)` of the guides and
    :math:`\lambda_0` of the prior they were fitted from,

    .. math::
        \lambda = \lambda_0 + \sum_{k=1}^K \alpha_k (\lambda_k - \lambda_0), \qquad
        S = \sum_k S_k - (K-1) S_0, \quad
        m = S^{-1}\Big(\sum_k S_k m_k - (K-1) S_0 m_0\Big) \quad (\alpha_k = 1):

    the uncertainty-weighted average of the means of Daheim et al. (2024). For a conjugate
    Gaussian model with the data split into disjoint parts, each part's exact posterior (e.g.
    ``pb.BLR(model, guide, pb.Newton(lr=1.0))``, one step) merges into the exact posterior of
    all the data. For other models the merge is as good as each likelihood's Gaussian
    approximation, and for diagonal guides it is exact only where the coordinates are
    independent a posteriori (each guide's diagonal misses the correlations the data induce).

    Where the prior comes from (``prior=``):

    * ``"model"`` (the default): the model's latent sites read through a trace of
      ``guides[0].model`` run with ``*args, **kwargs`` (any of the data sets will do: only the
      latent sites' distributions are read, and they must not depend on the data); each must
      be a ``Normal`` or ``MultivariateNormal`` with fixed parameters over the real line (see
      :mod:`pyro_blr.blr.merge_prior`). For diagonal guides a correlated prior is projected to
      its diagonal (same mean, diagonal precision);
    * a fitted Gaussian guide: e.g. the pretrained model's posterior that every guide was
      fine-tuned from;
    * :class:`~pyro_blr.blr.merge_maths.GaussianNaturals` over the guides' flat latent vector.

    Merging natural parameters held outside guides is
    :func:`~pyro_blr.blr.merge_maths.merge_naturals`.

    Args:
        guides: the fitted ``AutoNormal``, ``AutoDiagonalNormal`` or ``AutoMultivariateNormal``
            guides, of one family (diagonal or full), one model and the same latent sites.
        *args: the model's positional arguments, to set up the merged guide (and to read the
            prior from the model).
        prior: ``"model"``, a Gaussian guide or ``GaussianNaturals`` (see above).
        weights: the scales :math:`\alpha_k` of each guide's data (default 1: the Bayesian merge
            of disjoint data).
        model_kwargs: the model's keyword arguments as a dict; required when the model has an
            argument named ``prior`` or ``weights``.
        **kwargs: the model's keyword arguments.

    Returns:
        A new guide of the class of ``guides[0]``, set up on ``guides[0].model`` with ``*args``
        and holding the merged posterior; the inputs are left as they were.

    Raises:
        TypeError: a guide that is not a Gaussian autoguide, or a prior of another type.
        ValueError: guides of different families, latent sites, shapes, dtypes or devices
            (naming the guide), guides that share their parameters through Pyro's param store,
            a guide never run, a prior that is not a fixed Gaussian (naming the site), or a
            merged precision that is not positive definite (naming the site: the posteriors do
            not share that prior, or the weights remove more than the data gave).

    Note:
        With Pyro's default param store, every ``AutoNormal(model)`` of one process uses the
        same parameter names: fitting one overwrites the others, and a guide called later
        takes whatever the store holds. Set ``pyro.settings.set(module_local_params=True)``
        before fitting guides to merge; without it, ``merge`` refuses guides that share their
        tensors and a param store that already holds the merged guide's names.

    References:
        | Model Merging by Uncertainty-Based Gradient Matching
        | (Daheim, Möllenhoff, Ponti, Gurevych & Khan, ICLR 2024)
        | https://arxiv.org/abs/2310.12808

    Example:
        Two halves of conjugate data merge into the posterior of all of it.

        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> import pyro_blr as pb
        >>> pyro.settings.set(module_local_params=True)
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([1.0, 2.0, 4.0, -1.0])
        >>> halves = []
        >>> for part in (y[:2], y[2:]):
        ...     guide = AutoMultivariateNormal(model)
        ...     _ = pb.BLR(model, guide, pb.Newton(lr=1.0)).step(part)
        ...     halves.append(guide)
        >>> merged = merge(halves, y)
        >>> merged.loc.detach(), merged.get_posterior().precision_matrix.detach()  # 6 / 5, 5
        (tensor([1.2000]), tensor([[5.0000]]))
        >>> pyro.settings.set(module_local_params=False)
    """
    options = ("prior", "weights")
    kwargs = model_keywords(_model_of(guides), "merge", options, kwargs, model_kwargs)
    layout = _check_alike(guides)
    diagonal = not isinstance(guides[0], AutoMultivariateNormal)
    prior_naturals = _prior(prior, guides, layout, args, kwargs, diagonal)
    merged = merge_naturals([natural_parameters(g) for g in guides], prior_naturals, weights)
    if (where := not_positive_definite(merged.precision)) is not None:
        raise ValueError(
            f"merge: the merged precision is not positive definite at latent site "
            f"'{layout.site_at(where)}' (coordinate {where}): the guides were not fitted from "
            "this prior, or the weights remove more than the data gave; pass the prior they "
            "share with prior=..."
        )
    return _new_guide(guides[0], layout, merged, args, kwargs)


def _model_of(guides: Sequence[AutoGuide]) -> Callable:
    if isinstance(guides, AutoGuide):
        raise TypeError("merge takes a list of guides, merge([guide_a, guide_b], *args)")
    if not guides:
        raise ValueError("merge needs at least one guide")
    check_gaussian_guide(guides[0], "merge: guide 0")
    return guides[0].model


def _new_guide(
    first: AutoGuide, layout: LatentLayout, merged: GaussianNaturals, args: tuple, kwargs: dict
) -> AutoGuide:
    """A new guide of ``first``'s class on its model, holding ``merged``; refuses a param store
    that would hand it another guide's tensors."""
    store = pyro.get_param_store()
    held = {id(p) for _, p in store.named_parameters()}
    guide = type(first)(first.model)
    initialize_guide(guide, args, kwargs)
    if any(id(p) in held for p in guide.parameters()):
        raise ValueError(
            f"merge: Pyro's param store already holds parameters named like the new "
            f"{type(first).__name__}'s, which it would read instead of the merged ones (and "
            f"writing them would change the guide that owns them): {_LOCAL_PARAMS}; or call "
            "pyro.clear_param_store() before merge"
        )
    new_layout = latent_layout(guide.prototype_trace)
    if _signature(new_layout) != _signature(layout):
        raise ValueError(
            f"merge: the model run with the arguments given has latent sites "
            f"{_signature(new_layout)}, the guides {_signature(layout)}: pass arguments of the "
            "data the guides were fitted to"
        )
    param = next(iter(guide.parameters()))
    like = merged.eta
    if (param.dtype, param.device) != (like.dtype, like.device):
        raise ValueError(
            f"merge: the model run with the arguments given makes a {param.dtype} guide on "
            f"{param.device}, the guides are {like.dtype} on {like.device}: pass data of the "
            "guides' dtype and device"
        )
    GaussianGuide(guide, new_layout).write(merged.mean(), merged.precision)
    return guide
