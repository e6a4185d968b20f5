"""Diagnostics: ArviZ conversion of any guide's posterior and PSIS for variational fits."""

from pyro_blr.diagnostics.arviz import to_inference_data
from pyro_blr.diagnostics.psis import PSISDiagnostic, psis_diagnostic

__all__ = ["PSISDiagnostic", "psis_diagnostic", "to_inference_data"]
