"""Distributions torch lacks: a von Mises with reparameterized samples."""

from pyro_blr.distributions.von_mises import VonMises, von_mises_cdf

__all__ = ["VonMises", "von_mises_cdf"]
