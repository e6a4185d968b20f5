"""Diagnostics: ArviZ conversion of any guide's posterior, PSIS for variational fits, and the
leave-one-out sensitivity of a Gaussian posterior to each datum."""

from pyro_blr.diagnostics.arviz import to_inference_data
from pyro_blr.diagnostics.arviz_compat import elpd_summary, import_arviz, psis_smooth, to_numpy
from pyro_blr.diagnostics.calibration import (
    ClassificationMetrics,
    accuracy,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    negative_log_likelihood,
)
from pyro_blr.diagnostics.group_removal import GroupRemoval, removal_sensitivity
from pyro_blr.diagnostics.particle_proposal import particle_proposal
from pyro_blr.diagnostics.particles import particles_to_inference_data
from pyro_blr.diagnostics.psis import PSISDiagnostic, psis_diagnostic
from pyro_blr.diagnostics.removal_predictions import RemovalPredictions, removal_predictions
from pyro_blr.diagnostics.sensitivity import LOOSensitivity, loo_sensitivity

__all__ = [
    "ClassificationMetrics",
    "GroupRemoval",
    "LOOSensitivity",
    "PSISDiagnostic",
    "RemovalPredictions",
    "accuracy",
    "brier_score",
    "classification_metrics",
    "elpd_summary",
    "expected_calibration_error",
    "import_arviz",
    "loo_sensitivity",
    "negative_log_likelihood",
    "particle_proposal",
    "particles_to_inference_data",
    "psis_diagnostic",
    "psis_smooth",
    "removal_predictions",
    "removal_sensitivity",
    "to_inference_data",
    "to_numpy",
]
