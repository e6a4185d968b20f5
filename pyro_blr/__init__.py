"""pyro_blr: the Bayesian learning rule, richer variational families, objectives and diagnostics
for unchanged Pyro models."""

from pyro_blr.blr import BLR, merge
from pyro_blr.blr.rules import (
    IVON,
    OGN,
    SGD,
    VOGN,
    VON,
    Adam,
    ExpFamilyRule,
    MixtureRule,
    Newton,
    RMSprop,
)
from pyro_blr.diagnostics import (
    loo_sensitivity,
    psis_diagnostic,
    removal_sensitivity,
    to_inference_data,
)
from pyro_blr.evidence import jaakkola_jordan_evidence, log_evidence, sgd_evidence
from pyro_blr.guides import AutoExpFamily, AutoFlow, AutoMixture
from pyro_blr.objectives import RenyiELBO
from pyro_blr.samplers import SGLD, RobbinsMonro

__all__ = [
    "BLR",
    "IVON",
    "OGN",
    "SGD",
    "SGLD",
    "VOGN",
    "VON",
    "Adam",
    "AutoExpFamily",
    "AutoFlow",
    "AutoMixture",
    "ExpFamilyRule",
    "MixtureRule",
    "Newton",
    "RMSprop",
    "RenyiELBO",
    "RobbinsMonro",
    "jaakkola_jordan_evidence",
    "log_evidence",
    "loo_sensitivity",
    "merge",
    "psis_diagnostic",
    "removal_sensitivity",
    "sgd_evidence",
    "to_inference_data",
]
__version__ = "0.1.0.dev0"
