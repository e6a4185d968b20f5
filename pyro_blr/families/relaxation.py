r"""Latent discrete sites as the Bayesian learning rule sees them: relaxed, on :math:`[0, 1]` or
the simplex.

A latent ``Bernoulli`` site that is not marked for enumeration gets a Bernoulli factor in
:class:`pyro_blr.AutoExpFamily`; its gradient is estimated on relaxed values
:math:`x \in (0, 1)` (:meth:`pyro_blr.families.Bernoulli.relaxed_draws`). The model then runs at
such values, so the site's distribution is replaced by :class:`BinarySite`, whose log density
is the Bernoulli's own log mass :math:`x\lambda - \log(1 + e^\lambda)` extended to
:math:`[0, 1]` (what torch computes for a Bernoulli without validation) and whose support is the
unit interval, so that Pyro's validation and this package's flat latent vector
(:mod:`pyro_blr.core.layout`, by the sigmoid bijection) take it.

A latent ``OneHotCategorical`` site is the same over :math:`K` outcomes: its value is a one-hot
vector, relaxed to a point of the simplex (:meth:`pyro_blr.families.OneHotCategorical.
relaxed_draws`), and :class:`OneHotSite` extends its log mass :math:`\sum_k x_k\log\pi_k` to the
simplex (support ``simplex``: stick-breaking in the flat latent vector). A ``Categorical`` site
yields an integer index, which has no relaxed value: it is refused (see
:class:`pyro_blr.AutoExpFamily`); write it ``OneHotCategorical`` and use the value as a
vector (``z @ locs``, not ``locs[z.argmax(-1)]``), or enumerate it.

:func:`relax_binary_sites` makes both replacements in a model, by site name. Only models whose
likelihood is defined, and differentiable, at relaxed values (``x * w``, ``z @ locs``;
``torch.where(x > 0, ...)`` is not) give the right gradient; the BLR's expfamily stepper checks
that before its first step and names the site otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from pyro.poutine.messenger import Messenger
from torch import Tensor

__all__ = [
    "BinarySite",
    "OneHotSite",
    "binary_site",
    "is_binary_site",
    "is_one_hot_site",
    "is_relaxed_site",
    "one_hot_site",
    "relax_binary_sites",
    "relaxed_site",
]


class BinarySite(TorchDistribution):
    r"""A Bernoulli extended to :math:`[0, 1]`:
    :math:`\log p(x) = x\lambda - \log(1 + e^\lambda)`, :math:`\lambda` the Bernoulli's logits.

    Draws (:meth:`sample`) are the Bernoulli's own, binary, so that a model run on them is the
    model as written; its ``mean`` is the Bernoulli's probability.

    Args:
        base: the site's Bernoulli (any batch shape).

    Example:
        >>> import torch, pyro.distributions as dist
        >>> site = BinarySite(dist.Bernoulli(torch.tensor([0.2, 0.5])))
        >>> one = torch.ones(2)
        >>> torch.allclose(site.log_prob(one), dist.Bernoulli(site.mean).log_prob(one))
        True
        >>> site.support
        Interval(lower_bound=0.0, upper_bound=1.0)
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, base: torch.distributions.Bernoulli):
        self.base = base
        super().__init__(base.batch_shape, torch.Size(), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> BinarySite:
        return BinarySite(self.base.expand(batch_shape))

    @property
    def mean(self) -> Tensor:
        return self.base.mean

    def sample(self, sample_shape: tuple = ()) -> Tensor:
        return self.base.sample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        logits = self.base.logits
        return value * logits - torch.nn.functional.softplus(logits)


def binary_site(fn: dist.Distribution) -> dist.Distribution | None:
    """``fn`` with its Bernoulli replaced by a :class:`BinarySite` (under ``to_event`` too), or
    ``None`` where ``fn`` is no Bernoulli (a masked one included: it stays discrete).

    Example:
        >>> import torch, pyro.distributions as dist
        >>> type(binary_site(dist.Bernoulli(torch.full((3,), 0.5)).to_event(1)).base_dist).__name__
        'BinarySite'
        >>> binary_site(dist.Poisson(1.0)) is None
        True
    """
    if isinstance(fn, BinarySite):
        return fn
    if isinstance(fn, torch.distributions.Bernoulli):
        return BinarySite(fn)
    if isinstance(fn, torch.distributions.Independent):
        inner = binary_site(fn.base_dist)
        return None if inner is None else inner.to_event(fn.reinterpreted_batch_ndims)
    return None


def is_binary_site(fn: dist.Distribution) -> bool:
    """Whether ``fn`` is a :class:`BinarySite` (under ``to_event`` too)."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return isinstance(fn, BinarySite)


class OneHotSite(TorchDistribution):
    r"""A OneHotCategorical extended to the simplex:
    :math:`\log p(x) = \sum_k x_k \log\pi_k`, :math:`\pi` the OneHotCategorical's
    probabilities (what torch computes for it without validation).

    Draws (:meth:`sample`) are the OneHotCategorical's own, one-hot, so that a model run on them
    is the model as written; its ``mean`` is the probabilities.

    Args:
        base: the site's OneHotCategorical (any batch shape).

    Example:
        >>> import torch, pyro.distributions as dist
        >>> base = dist.OneHotCategorical(torch.tensor([0.2, 0.3, 0.5]))
        >>> site = OneHotSite(base)
        >>> vertex = torch.tensor([0.0, 1.0, 0.0])
        >>> torch.allclose(site.log_prob(vertex), base.log_prob(vertex))
        True
        >>> site.support, site.event_shape
        (Simplex(), torch.Size([3]))
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.simplex
    has_rsample = False

    def __init__(self, base: torch.distributions.OneHotCategorical):
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None) -> OneHotSite:
        return OneHotSite(self.base.expand(batch_shape))

    @property
    def mean(self) -> Tensor:
        return self.base.probs

    def sample(self, sample_shape: tuple = ()) -> Tensor:
        return self.base.sample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        return (value * self.base.logits).sum(-1)


def one_hot_site(fn: dist.Distribution) -> dist.Distribution | None:
    """``fn`` with its OneHotCategorical replaced by a :class:`OneHotSite` (under ``to_event``
    too), or ``None`` where ``fn`` is no OneHotCategorical (a masked one included).

    Example:
        >>> import torch, pyro.distributions as dist
        >>> type(one_hot_site(dist.OneHotCategorical(torch.ones(2, 3) / 3))).__name__
        'OneHotSite'
        >>> one_hot_site(dist.Categorical(torch.ones(3) / 3)) is None
        True
    """
    if isinstance(fn, OneHotSite):
        return fn
    if isinstance(fn, torch.distributions.OneHotCategorical):
        return OneHotSite(fn)
    if isinstance(fn, torch.distributions.Independent):
        inner = one_hot_site(fn.base_dist)
        return None if inner is None else inner.to_event(fn.reinterpreted_batch_ndims)
    return None


def is_one_hot_site(fn: dist.Distribution) -> bool:
    """Whether ``fn`` is a :class:`OneHotSite` (under ``to_event`` too)."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return isinstance(fn, OneHotSite)


def relaxed_site(fn: dist.Distribution) -> dist.Distribution | None:
    """``fn`` relaxed: a Bernoulli as a :class:`BinarySite`, a OneHotCategorical as a
    :class:`OneHotSite` (under ``to_event`` too); ``None`` for any other distribution."""
    relaxed = binary_site(fn)
    return relaxed if relaxed is not None else one_hot_site(fn)


def is_relaxed_site(fn: dist.Distribution) -> bool:
    """Whether ``fn`` is a :class:`BinarySite` or a :class:`OneHotSite` (under ``to_event``)."""
    return is_binary_site(fn) or is_one_hot_site(fn)


class _RelaxSites(Messenger):
    """Replaces the distribution of the named latent Bernoulli and OneHotCategorical sites by
    their :class:`BinarySite` or :class:`OneHotSite` (the model's own plates have broadcast it
    already)."""

    def __init__(self, names: Iterable[str]):
        super().__init__()
        self.names = frozenset(names)

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] in self.names and not msg["is_observed"]:
            relaxed = relaxed_site(msg["fn"])
            if relaxed is not None:
                msg["fn"] = relaxed


def relax_binary_sites(model: Callable, names: Iterable[str]) -> Callable:
    """``model`` with the latent Bernoulli sites ``names`` taking values in :math:`[0, 1]` (see
    :class:`BinarySite`) and its OneHotCategorical sites ``names`` values on the simplex (see
    :class:`OneHotSite`); the model's signature is kept (``functools.wraps``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     return pyro.sample("z", dist.Bernoulli(0.5))
        >>> relaxed = relax_binary_sites(model, ["z"])
        >>> conditioned = pyro.poutine.condition(relaxed, {"z": torch.tensor(0.3)})
        >>> round(float(pyro.poutine.trace(conditioned).get_trace().log_prob_sum()), 4)
        -0.6931
    """

    @functools.wraps(model)
    def relaxed(*args, **kwargs):
        with _RelaxSites(names):
            return model(*args, **kwargs)

    return relaxed
