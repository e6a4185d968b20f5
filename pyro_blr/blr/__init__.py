"""The Bayesian learning rule: natural-gradient variational inference for Pyro models."""

from pyro_blr.blr.averaging import IterateAverage, converged
from pyro_blr.blr.distributed import RankFailed, shard_indices
from pyro_blr.blr.driver import BLR, FitResult
from pyro_blr.blr.merge import merge, natural_parameters
from pyro_blr.blr.merge_maths import GaussianNaturals, merge_naturals

__all__ = [
    "BLR",
    "FitResult",
    "GaussianNaturals",
    "IterateAverage",
    "RankFailed",
    "converged",
    "merge",
    "merge_naturals",
    "natural_parameters",
    "shard_indices",
]
