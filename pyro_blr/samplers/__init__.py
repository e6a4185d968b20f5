"""Samplers beside the Bayesian learning rule: stochastic-gradient Langevin dynamics."""

from pyro_blr.samplers.schedules import RobbinsMonro, as_schedule
from pyro_blr.samplers.sgld import SGLD, langevin_step

__all__ = ["SGLD", "RobbinsMonro", "as_schedule", "langevin_step"]
