"""IVON's default start on a ReLU MLP above 2048 coordinates (benchmarks/ivon_large_start.py)."""

import pytest

from benchmarks.ivon_large_start import fit_rmse


@pytest.mark.slow  # three fits of 300 steps (about 10 s each on an idle thread)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ivons_default_start_leaves_the_constant_predictor(seed):
    # Test RMSE after 300 steps, the constant predictor at about 1. Started at N_i/s_i^2 (fan-in
    # times N_i) the fits stayed there: 0.999, 0.928, 1.005 for seeds 0-2; started at the
    # measured curvature they reach 0.607, 0.369, 0.712, level with IVON's reference start
    # hess_init=1 (0.638, 0.413, 0.703). 0.85 lies between the two starts' groups.
    assert fit_rmse("auto", seed) < 0.85
