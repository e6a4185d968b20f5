"""Variational objectives as ``pyro.infer.ELBO`` subclasses."""

from pyro_blr.objectives.renyi import RenyiELBO, renyi_bound

__all__ = ["RenyiELBO", "renyi_bound"]
