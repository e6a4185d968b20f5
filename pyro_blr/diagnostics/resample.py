"""Posterior predictive draws: the model's observed sites drawn by the model instead of observed."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.uncondition_messenger import UnconditionMessenger

from pyro_blr.distributions import VonMises

__all__ = ["Resample", "safe_sampler"]


class Resample(UnconditionMessenger):
    """Draw the named observed sites from the model instead of observing them (and leave
    ``pyro.deterministic`` sites, which Pyro also marks observed, alone)."""

    def __init__(self, names: list[str]):
        super().__init__()
        self.names = set(names)

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] in self.names:
            super()._pyro_sample(msg)
            msg["fn"] = safe_sampler(msg["fn"])


def safe_sampler(fn):
    """``fn`` with torch's von Mises sampler, which never returns at a huge concentration (its
    rejection loop stops terminating near 1e17), replaced by this package's (Gaussian limit above
    2^26): the same distribution, through Pyro's wrappers (independent, expanded, masked; a
    mask does not change what is drawn)."""
    if isinstance(fn, torch.distributions.VonMises) and not isinstance(fn, VonMises):
        return VonMises(fn.loc, fn.concentration)
    if isinstance(fn, torch.distributions.Independent):
        return dist.Independent(safe_sampler(fn.base_dist), fn.reinterpreted_batch_ndims)
    if isinstance(fn, MaskedDistribution):
        return safe_sampler(fn.base_dist)
    if isinstance(fn, ExpandedDistribution):
        return safe_sampler(fn.base_dist).expand(fn.batch_shape)
    return fn
