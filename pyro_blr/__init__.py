"""pyro_blr: the Bayesian learning rule, richer variational families, objectives and diagnostics
for unchanged Pyro models."""

from pyro_blr.blr import BLR

__all__ = ["BLR"]
__version__ = "0.1.0.dev0"
