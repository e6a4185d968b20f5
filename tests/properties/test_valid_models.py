"""Every entry point answers every valid model: a model that ``pyro.infer.SVI`` and ``pb.BLR``
run is never refused by an importance-sampling entry point (only ``loo_sensitivity`` may refuse,
naming the datum, a guide that is not at a fixed point of the learning rule).

The relations elsewhere accept a refusal when both sides refuse alike, so a refusal that both
sides share would pass them: this property closes that gap.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.properties.cases import (
    PROFILES,
    fit,
    make_problem,
    problems,
    profile_settings,
)
from tests.properties.entry import ENTRY_CASES, entry_points

FIXED_POINT = "ValueError: leaving out datum"  # loo_sensitivity's documented refusal

ONE_BY_ONE = (
    "log_weights (log_evidence, psis_diagnostic, to_inference_data, RenyiELBO) refuses a model "
    "written X @ w with one datum and one feature: 'a log density has batch shape (K, K) left of "
    "the model's 1 plate dimensions; declare every batch dimension with pyro.plate', although "
    "the model declares every dimension and SVI and the BLR run it. Minimal example: "
    "Problem('normal', num_data=1, dim=1, prior_scale=1.0, noise=1.0, seed=0), 1 step"
)


@pytest.mark.xfail(strict=True, reason=ONE_BY_ONE)
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", ENTRY_CASES, ids=lambda c: c.id)
def test_entry_points_answer_every_valid_model(case, profile):
    @profile_settings(profile)
    @given(problems(), st.integers(1, 3))
    @example(make_problem("normal", 1, 1, 1.0, 1.0, 0), 1)
    def answers(problem, steps):
        out = fit(case, problem.model, problem.args, steps, 1.0, then=entry_points(case)).out
        for name, value in out.items():
            refused = isinstance(value, str)
            assert not refused or value.startswith(FIXED_POINT), f"{name} refused: {value}"

    answers()
