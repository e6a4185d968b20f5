"""Exponential families described once: natural and expectation parameters and their maps.

One module per family (``normal``, ``gamma``, ``beta``, ``dirichlet``, ``von_mises``,
``bernoulli``, ``categorical``; the Gaussian's closed forms in ``gaussian``; latent Bernoulli
and one-hot sites, relaxed to :math:`[0, 1]` and the simplex, in ``relaxation``), the shared
interface in ``base``, and the registry below: :data:`FAMILIES` by name and
:func:`family_for_site`, which picks the family of a site's support.
"""

from __future__ import annotations

from pyro_blr.families.base import ExpFamily, site_support
from pyro_blr.families.bernoulli import Bernoulli
from pyro_blr.families.beta import Beta
from pyro_blr.families.categorical import Categorical, OneHotCategorical
from pyro_blr.families.dirichlet import Dirichlet
from pyro_blr.families.gamma import Gamma
from pyro_blr.families.gaussian import (
    DIAGONAL,
    FULL,
    GaussianFamily,
    gaussian_family,
    is_positive_definite,
)
from pyro_blr.families.normal import LogNormal, Normal
from pyro_blr.families.relaxation import is_relaxed_site
from pyro_blr.families.von_mises import VonMisesFamily

__all__ = [
    "DIAGONAL",
    "FAMILIES",
    "FULL",
    "Bernoulli",
    "Beta",
    "Categorical",
    "Dirichlet",
    "ExpFamily",
    "Gamma",
    "GaussianFamily",
    "LogNormal",
    "Normal",
    "OneHotCategorical",
    "VonMisesFamily",
    "family_for_site",
    "gaussian_family",
    "is_positive_definite",
]

FAMILIES: dict[str, ExpFamily] = {
    f.name: f
    for f in (
        Normal(),
        LogNormal(),
        Gamma(),
        Beta(),
        Dirichlet(),
        VonMisesFamily(),
        Bernoulli(),
        OneHotCategorical(),
    )
}
"""The families of latent sites, by name (the categorical of mixture weights takes K)."""

_AUTOMATIC = (
    "bernoulli",
    "one_hot_categorical",
    "von_mises",
    "normal",
    "gamma",
    "beta",
    "dirichlet",
)  # first wins


def family_for_site(site: dict, name: str | None = None) -> ExpFamily:
    """The family of a latent site: ``name`` if given (checked against the site's support),
    else the first of Bernoulli, OneHotCategorical, von Mises, Normal, Gamma, Beta, Dirichlet
    that matches it. A relaxed discrete site (:class:`pyro_blr.families.relaxation.BinarySite`,
    :class:`~pyro_blr.families.relaxation.OneHotSite`) takes only a discrete family: its support
    is the unit interval or the simplex, but a Beta or a Dirichlet there would fit another model.

    Args:
        site: a sample site of a Pyro trace (its ``"name"`` and ``"fn"`` are read).
        name: a family name from :data:`FAMILIES` chosen by the user, or ``None``.

    Raises:
        ValueError: an unknown family name; a family that does not live on the site's support
            (the message names the site, the family, the support and the families that fit);
            or no family for the site's support (the message lists the ``families={...}``
            choices).

    Example:
        >>> import pyro.distributions as dist, torch
        >>> site = {"name": "rate", "fn": dist.Gamma(torch.tensor(2.0), 1.0)}
        >>> family_for_site(site).name, family_for_site(site, "lognormal").name
        ('gamma', 'lognormal')
        >>> try:
        ...     family_for_site(site, "beta")
        ... except ValueError as error:
        ...     print(str(error).split("; ")[-1])
        families that fit it: ['gamma', 'lognormal']
    """
    site_name, fn = site["name"], site["fn"]
    relaxed = is_relaxed_site(fn)

    def fits(family: ExpFamily) -> bool:
        return family.matches(fn) and family.discrete == relaxed

    if name is not None:
        if name not in FAMILIES:
            raise ValueError(
                f"unknown family {name!r} for site '{site_name}'; choose one of {sorted(FAMILIES)}"
            )
        if not fits(FAMILIES[name]):
            fitting = sorted(n for n, f in FAMILIES.items() if fits(f))
            raise ValueError(
                f"family {name!r} does not fit site '{site_name}' with support "
                f"{site_support(fn)}; families that fit it: {fitting}"
            )
        return FAMILIES[name]
    for candidate in _AUTOMATIC:
        if fits(FAMILIES[candidate]):
            return FAMILIES[candidate]
    choices = "|".join(f"'{n}'" for n in FAMILIES)
    raise ValueError(
        f"no family for site '{site_name}' with support {site_support(fn)}; choose one with "
        f"families={{'{site_name}': {choices}}}, enumerate a discrete site, or use AutoNormal"
    )
