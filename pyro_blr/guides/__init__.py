"""Guides: variational families for unchanged Pyro models."""

from pyro_blr.guides.expfamily import AutoExpFamily
from pyro_blr.guides.expfamily_mixture import ExpFamilyMixture
from pyro_blr.guides.flow import FLOWS, AutoFlow
from pyro_blr.guides.gaussian_mixture import GaussianMixture
from pyro_blr.guides.mixture import AutoMixture

__all__ = [
    "FLOWS",
    "AutoExpFamily",
    "AutoFlow",
    "AutoMixture",
    "ExpFamilyMixture",
    "GaussianMixture",
]
