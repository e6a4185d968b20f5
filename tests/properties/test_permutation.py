"""Permuting the data changes nothing: for every rule, the fitted guide, the losses and every
entry point's answer are the same (the per-datum answers permuted alike).

The data are exchangeable in these models: a datum's position carries no information, so a fit
that depends on the order of the rows (a per-datum curvature matched to the wrong row, a
minibatch drawn by position, a sum over a shard) is a wrong answer that nothing else reveals.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.properties.cases import (
    CASES,
    PROFILES,
    Problem,
    assert_near,
    assert_scaled,
    assert_shifted,
    case_params,
    fit,
    problems,
    profile_settings,
)
from tests.properties.entry import ENTRY_CASES, entry_points, outputs


def permuted(problem: Problem, seed: int) -> tuple[Problem, torch.Tensor]:
    perm = torch.randperm(problem.num_data, generator=torch.Generator().manual_seed(seed))
    return replace(problem, X=problem.X[perm], y=problem.y[perm]), perm


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", case_params(CASES))
def test_blr_ignores_the_order_of_the_data(case, profile):
    @profile_settings(profile)
    @given(problems(), st.integers(0, 2**16), st.integers(1, 3), st.sampled_from([0.5, 1.0]),
           st.booleans())  # fmt: skip
    def ignores_order(problem, seed, steps, lr, via_fit):
        shuffled, _ = permuted(problem, seed)
        one = fit(case, problem.model, problem.args, steps, lr, via_fit=via_fit)
        other = fit(case, shuffled.model, shuffled.args, steps, lr, via_fit=via_fit)
        # The same draws on both sides; the sums over data differ in their order only.
        assert_scaled(other.draws, one.draws, 1.0, "draws of the fitted guide")
        for step, (found, ref) in enumerate(zip(other.losses, one.losses, strict=True)):
            assert_shifted(found, ref, 0.0, f"loss of step {step + 1}")

    ignores_order()


def check(name: str, found, ref, perm: torch.Tensor) -> None:
    """``found`` (on the permuted data) against ``ref``: the same, per-datum ones permuted."""
    if name == "log_evidence":
        for method in found:
            assert_shifted(found[method].value, ref[method].value, 0.0, method)
            assert_shifted(found[method].stderr, ref[method].stderr, 0.0, f"{method} stderr")
    elif name == "psis_diagnostic":
        assert_near(found.khat, ref.khat, "psis k-hat")
        assert_near(found.ess, ref.ess, "psis ess")
    elif name == "to_inference_data":
        for key in [("posterior", "w"), ("sample_stats", "log_q"), ("sample_stats", "log_p")]:
            assert_scaled(found[key], ref[key], 1.0, str(key))
        key = ("log_likelihood", "y")
        assert_scaled(found[key], ref[key][..., perm], 1.0, str(key))
        # (The posterior predictive draws its noise by position: not a relation.)
    else:  # loo_sensitivity
        assert found.method == ref.method
        for field in ("mean_shift", "influence", "lpd", "loo_lpd", "delta_lpd"):
            a, b = getattr(found, field), getattr(ref, field)[perm]
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * (1 + float(b.abs().max())))
        assert_shifted(float(found.elpd_loo), float(ref.elpd_loo), 0.0, "elpd_loo")
        assert_shifted(float(found.p_loo), float(ref.p_loo), 0.0, "p_loo")


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", ENTRY_CASES, ids=lambda c: c.id)
def test_entry_points_ignore_the_order_of_the_data(case, profile):
    @profile_settings(profile)
    @given(problems(), st.integers(0, 2**16), st.integers(1, 3))
    def ignore_order(problem, seed, steps):
        shuffled, perm = permuted(problem, seed)
        one = fit(case, problem.model, problem.args, steps, 1.0, then=entry_points(case))
        other = fit(case, shuffled.model, shuffled.args, steps, 1.0, then=entry_points(case))
        for name, found, ref in outputs(other, one):
            check(name, found, ref, perm)

    ignore_order()
