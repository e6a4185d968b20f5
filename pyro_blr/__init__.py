"""pyro_blr: the Bayesian learning rule, richer variational families, objectives and diagnostics
for unchanged Pyro models."""

from pyro_blr.blr import BLR
from pyro_blr.evidence import log_evidence, sgd_evidence
from pyro_blr.objectives import RenyiELBO

__all__ = ["BLR", "RenyiELBO", "log_evidence", "sgd_evidence"]
__version__ = "0.1.0.dev0"
