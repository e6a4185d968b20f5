"""Exponential families described once: natural and expectation parameters and their maps."""

from pyro_blr.families.gaussian import DIAGONAL, FULL, GaussianFamily, gaussian_family

__all__ = ["DIAGONAL", "FULL", "GaussianFamily", "gaussian_family"]
