"""Estimates and bounds of the log evidence log p(D)."""

from pyro_blr.evidence.estimators import LogEvidence, log_evidence
from pyro_blr.evidence.sgd_entropy import SGDEvidence, sgd_evidence

__all__ = ["LogEvidence", "SGDEvidence", "log_evidence", "sgd_evidence"]
