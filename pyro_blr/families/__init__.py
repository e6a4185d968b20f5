"""Exponential families described once: natural and expectation parameters and their maps."""

from pyro_blr.families.expfamily import (
    FAMILIES,
    Beta,
    Categorical,
    Dirichlet,
    ExpFamily,
    Gamma,
    VonMisesFamily,
)
from pyro_blr.families.gaussian import DIAGONAL, FULL, GaussianFamily, gaussian_family

__all__ = [
    "DIAGONAL",
    "FAMILIES",
    "FULL",
    "Beta",
    "Categorical",
    "Dirichlet",
    "ExpFamily",
    "Gamma",
    "GaussianFamily",
    "VonMisesFamily",
    "gaussian_family",
]
