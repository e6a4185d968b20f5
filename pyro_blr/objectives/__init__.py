"""Variational objectives as ``pyro.infer.ELBO`` subclasses."""

from pyro_blr.objectives.renyi import RenyiELBO, as_alpha, renyi_bound

__all__ = ["RenyiELBO", "as_alpha", "renyi_bound"]
