"""How :class:`pyro_blr.AutoExpFamily` keeps latent discrete sites: a latent ``Bernoulli`` or
``OneHotCategorical`` (neither enumerated nor masked) becomes its relaxed stand-in in the guide's
prototype trace (:mod:`pyro_blr.families.relaxation`), started at its prior's probabilities;
every other discrete site is refused, naming the site and the fix."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pyro_blr.families.base import clamp_unit
from pyro_blr.families.relaxation import is_one_hot_site, relaxed_site

__all__ = ["keep_relaxed", "one_hot_mode_first"]


def _base(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn


def one_hot_mode_first(init_loc_fn: Callable) -> Callable:
    """``init_loc_fn`` with latent OneHotCategorical sites started at their prior's mode (Pyro's
    strategies fall back to ``init_to_feasible``, which has no transform for one-hot values);
    the guide then starts them from their prior's probabilities (:func:`keep_relaxed`).

    Example:
        >>> import pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import init_to_median
        >>> site = {"fn": dist.OneHotCategorical(torch.tensor([0.2, 0.5, 0.3]))}
        >>> one_hot_mode_first(init_to_median)(site)
        tensor([0., 1., 0.])
    """

    def init(site: dict) -> Tensor:
        if isinstance(_base(site["fn"]), torch.distributions.OneHotCategorical):
            probs = site["fn"].mean
            return torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
        return init_loc_fn(site)

    return init


def keep_relaxed(guide: str, name: str, site: dict, refuse: bool = False) -> None:
    """Make a latent Bernoulli or OneHotCategorical site of a guide's prototype trace a
    :class:`~pyro_blr.families.relaxation.BinarySite` or
    :class:`~pyro_blr.families.relaxation.OneHotSite`, its value the prior's probabilities
    (where the flat latent vector of the BLR starts; a one-hot site's clamped away from 0 and
    renormalized, an interior point of the simplex).

    Args:
        guide: the guide's class name, for the message.
        name: the site's name.
        site: the prototype trace's site, changed in place.
        refuse: refuse even those sites (a guide that cannot hold a discrete factor).

    Raises:
        ValueError: any other discrete site, or any discrete site where ``refuse``, naming the
            site and the fix; a ``Categorical`` index site is told to be written
            ``OneHotCategorical`` (``z @ locs``) or enumerated.
    """
    enumerated = site["infer"].get("enumerate")
    relaxed = None if enumerated else relaxed_site(site["fn"])
    if relaxed is None or refuse:
        kind = type(site["fn"]).__name__
        index = isinstance(_base(site["fn"]), torch.distributions.Categorical)
        rewrite = (
            f"its value is an integer index, which the BLR cannot relax: write it "
            f"pyro.sample('{name}', dist.OneHotCategorical(probs)) and use the one-hot value as "
            f"a vector ('{name} @ locs' where 'locs[{name}]' was), or "
            if index and not enumerated and not refuse
            else ""
        )
        raise ValueError(
            f"latent site '{name}' is discrete ({kind}); {guide} gives a Bernoulli or "
            "categorical factor to a latent Bernoulli or OneHotCategorical site of AutoExpFamily "
            "only (neither enumerated nor masked) and needs other sites continuous: "
            + rewrite
            + "enumerate it out (infer={'enumerate': 'parallel'}, hidden from the guide), "
            "observe it, or write a categorical choice as binary indicators"
        )
    site["fn"] = relaxed
    mean = relaxed.mean.detach()
    if is_one_hot_site(relaxed):
        mean = mean.clamp_min(torch.finfo(mean.dtype).eps)
        site["value"] = mean / mean.sum(-1, keepdim=True)
    else:
        site["value"] = clamp_unit(mean)
