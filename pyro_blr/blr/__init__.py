"""The Bayesian learning rule: natural-gradient variational inference for Pyro models."""

from pyro_blr.blr.averaging import IterateAverage, converged
from pyro_blr.blr.distributed import RankFailed, shard_indices
from pyro_blr.blr.driver import BLR, FitResult

__all__ = ["BLR", "FitResult", "IterateAverage", "RankFailed", "converged", "shard_indices"]
