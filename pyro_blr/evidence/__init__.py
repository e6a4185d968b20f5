"""Estimates and bounds of the log evidence log p(D)."""

from pyro_blr.evidence.estimators import LogEvidence, log_evidence
from pyro_blr.evidence.jaakkola_jordan import JaakkolaJordan, jaakkola_jordan_evidence
from pyro_blr.evidence.sgd_entropy import SGDEvidence, sgd_evidence

__all__ = [
    "JaakkolaJordan",
    "LogEvidence",
    "SGDEvidence",
    "jaakkola_jordan_evidence",
    "log_evidence",
    "sgd_evidence",
]
