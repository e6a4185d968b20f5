"""Duplicating every datum equals ``poutine.scale(model, scale=2)``.

``poutine.scale`` multiplies every log density of the model by 2, the prior's too, while
duplicated data leave the prior as it was. For a Gaussian prior the two agree once the scaled
model's prior scale is multiplied by sqrt(2):

    2 log N(w; 0, 2 tau^2) = log N(w; 0, tau^2) - log 2 - log tau - log(2 pi) / 2   (per weight),

so the scaled model's log joint is the duplicated model's plus a constant, and both have the same
posterior. Every rule must then take the same steps (a rule that counts data by the plate's
size, or squares the scale in a Gauss-Newton sum of per-datum gradients, does not), and the
evidence shifts by exactly the constant.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_feasible

from tests.properties.cases import (
    CASES,
    PROFILES,
    Problem,
    assert_near,
    assert_scaled,
    assert_shifted,
    case_params,
    fit,
    make_problem,
    problems,
    profile_settings,
    refused_alike,
)
from tests.properties.entry import ENTRY_CASES, entry_points, outputs


def duplicated(problem: Problem) -> Problem:
    return replace(problem, X=torch.cat([problem.X, problem.X]), y=torch.cat([problem.y] * 2))


def scaled(problem: Problem):
    """``poutine.scale(model, scale=2)`` of the model with prior scale ``sqrt(2) tau``, and the
    constant by which its log joint exceeds the duplicated model's."""
    tempered = replace(problem, prior_scale=math.sqrt(2) * problem.prior_scale)
    log_tau = math.log(problem.prior_scale)
    constant = -problem.dim * (math.log(2) + log_tau + 0.5 * math.log(2 * math.pi))
    return poutine.scale(tempered.model, scale=2.0), constant


START = init_to_feasible
"""Both sides start at w = 0 (a guide's default start at the median of prior draws would start
the scaled model, whose prior is wider, elsewhere)."""


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", case_params(CASES))
def test_duplicated_data_equal_a_scale_of_two(case, profile):
    @profile_settings(profile)
    @given(problems(), st.integers(1, 3), st.sampled_from([0.5, 1.0]), st.booleans())
    @example(make_problem("normal", 1, 1, 1.0, 1.0, 0), 1, 0.5, False)
    @example(make_problem("bernoulli", 5, 1, 0.1667274872212307, 1.0, 24833), 3, 0.5, False)
    def equal(problem, steps, lr, via_fit):
        twice = duplicated(problem)
        model, constant = scaled(problem)
        one = fit(case, twice.model, twice.args, steps, lr, init_loc_fn=START, via_fit=via_fit)
        other = fit(case, model, problem.args, steps, lr, init_loc_fn=START, via_fit=via_fit)
        if refused_alike(one, other):
            return
        assert_scaled(other.draws, one.draws, 1.0, "draws of the fitted guide")
        for step, (found, ref) in enumerate(zip(other.losses, one.losses, strict=True)):
            assert_shifted(found, ref, -constant, f"loss of step {step + 1}")

    equal()


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", ENTRY_CASES, ids=lambda c: c.id)
def test_entry_points_see_duplicated_data_as_a_scale_of_two(case, profile):
    # Per-datum answers (pointwise log-likelihood, leave-one-out) differ by definition: leaving
    # out one of two copies is not leaving out a datum of weight two. The evidence, PSIS and the
    # posterior draws are relations.
    then = entry_points(case, ("log_evidence", "psis_diagnostic", "to_inference_data"))

    @profile_settings(profile)
    @given(problems(), st.integers(1, 3))
    @example(make_problem("normal", 1, 1, 1.0, 1.0, 0), 1)
    def equal(problem, steps):
        twice = duplicated(problem)
        model, constant = scaled(problem)
        one = fit(case, twice.model, twice.args, steps, 1.0, then=then, init_loc_fn=START)
        other = fit(case, model, problem.args, steps, 1.0, then=then, init_loc_fn=START)
        for name, found, ref in outputs(other, one):
            if name == "log_evidence":
                for method in found:
                    assert_shifted(found[method].value, ref[method].value, constant, method)
                    assert_shifted(found[method].stderr, ref[method].stderr, 0.0, method)
            elif name == "psis_diagnostic":
                assert_near(found.khat, ref.khat, "psis k-hat")
                assert_near(found.ess, ref.ess, "psis ess")
            else:
                key = ("posterior", "w")
                assert_scaled(found[key], ref[key], 1.0, "posterior")
                key = ("sample_stats", "log_q")
                assert_scaled(found[key], ref[key], 1.0, "log q")

    equal()
