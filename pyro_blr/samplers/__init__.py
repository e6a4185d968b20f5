"""Samplers beside the Bayesian learning rule: stochastic-gradient Langevin dynamics, and SVGD
with its particles packed per particle."""

from pyro_blr.samplers.schedules import RobbinsMonro, as_schedule
from pyro_blr.samplers.sgld import SGLD, langevin_step
from pyro_blr.samplers.svgd import SVGD

__all__ = ["SGLD", "SVGD", "RobbinsMonro", "as_schedule", "langevin_step"]
