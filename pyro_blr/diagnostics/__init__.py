"""Diagnostics: ArviZ conversion of any guide's posterior and PSIS for variational fits."""

from pyro_blr.diagnostics.arviz import to_inference_data
from pyro_blr.diagnostics.arviz_compat import import_arviz, psis_smooth, to_numpy
from pyro_blr.diagnostics.psis import PSISDiagnostic, psis_diagnostic

__all__ = [
    "PSISDiagnostic",
    "import_arviz",
    "psis_diagnostic",
    "psis_smooth",
    "to_inference_data",
    "to_numpy",
]
