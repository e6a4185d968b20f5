"""Distributions torch lacks: a von Mises with reparameterized samples."""

from pyro_blr.distributions.von_mises import GAUSSIAN_CONCENTRATION, VonMises, von_mises_cdf

__all__ = ["GAUSSIAN_CONCENTRATION", "VonMises", "von_mises_cdf"]
