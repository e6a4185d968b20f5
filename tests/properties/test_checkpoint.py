"""A checkpoint round trip changes nothing: ``BLR.state_dict()`` through ``torch.save`` and
``torch.load(weights_only=True)`` into a new driver on a new guide (a cleared param store), with
the random state restored, takes the next steps bit for bit as the original driver takes them:
the same losses, the same guide parameters, the same next checkpoint.

Restored with the model's arguments (at once) or without (at the next step), for every rule.
"""

from __future__ import annotations

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pyro.util import get_rng_state, set_rng_state

from tests.properties.cases import (
    CASES,
    PROFILES,
    Case,
    case_params,
    guide_draws,
    guide_state,
    problems,
    profile_settings,
)


def assert_identical(found, expected, where: str) -> None:
    """Bit-for-bit equality of nested dicts, lists and tensors."""
    if isinstance(expected, dict):
        assert isinstance(found, dict) and found.keys() == expected.keys(), where
        for key, value in expected.items():
            assert_identical(found[key], value, f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert type(found) is type(expected) and len(found) == len(expected), where
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            assert_identical(a, b, f"{where}[{i}]")
    elif torch.is_tensor(expected):
        assert torch.is_tensor(found) and found.dtype == expected.dtype, where
        assert found.shape == expected.shape and torch.equal(found, expected), where
    else:
        assert found == expected, f"{where}: {found!r} != {expected!r}"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", case_params(CASES))
def test_a_checkpoint_round_trip_changes_nothing(case, profile):
    @profile_settings(profile)
    @given(problems(), st.integers(1, 3), st.integers(1, 3), st.sampled_from([0.5, 1.0]),
           st.booleans())  # fmt: skip
    def round_trip(problem, before, after, lr, with_args):
        model, args = problem.model, problem.args
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = case.make_guide(model)
        driver = case.driver(model, guide, lr)
        for _ in range(before):
            driver.step(*args)
        buffer = io.BytesIO()
        torch.save(driver.state_dict(), buffer)
        rng = get_rng_state()
        losses = [driver.step(*args) for _ in range(after)]
        expected = guide_state(guide), guide_draws(guide, args), driver.state_dict()

        pyro.clear_param_store()
        pyro.set_rng_seed(1)  # elsewhere: whatever the new guide's set-up draws is overwritten
        resumed = case.make_guide(model)
        new = case.driver(model, resumed, lr)
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)
        if with_args:
            new.load_state_dict(checkpoint, *args)
        else:
            new.load_state_dict(checkpoint)
        set_rng_state(rng)
        found_losses = [new.step(*args) for _ in range(after)]
        found = guide_state(resumed), guide_draws(resumed, args), new.state_dict()
        assert found_losses == losses, "the losses after the round trip"
        assert_identical(found[0], expected[0], "guide parameters")
        assert_identical(found[1], expected[1], "guide draws")
        assert_identical(found[2], expected[2], "state_dict")
        assert new.num_steps == driver.num_steps == before + after

    round_trip()


def local_model(y: torch.Tensor, batch: int | None) -> None:
    """A global mean, one latent per datum (local latents), a subsampled data plate."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 2.0))
    with pyro.plate("data", y.shape[0], subsample_size=batch) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(z, 0.5), obs=y[idx])


LOCAL_CASES = [Case(rule, "AutoNormal") for rule in ("von", "newton")]
"""The rules that fit latents local to a subsampled plate (AutoNormal keeps one per datum)."""


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("case", case_params(LOCAL_CASES))
def test_a_checkpoint_of_local_latents_changes_nothing(case, profile):
    @profile_settings(profile)
    @given(st.integers(2, 8), st.integers(1, 8), st.integers(0, 2**16), st.integers(1, 3),
           st.integers(1, 3), st.booleans())  # fmt: skip
    def round_trip(num_data, batch, seed, before, after, with_args):
        batch = min(batch, num_data)
        gen = torch.Generator().manual_seed(seed)
        y = torch.randn(num_data, generator=gen, dtype=torch.float64)
        args = (y, batch)
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = case.make_guide(local_model)
        driver = case.driver(local_model, guide, 0.5)
        for _ in range(before):
            driver.step(*args)
        buffer = io.BytesIO()
        torch.save(driver.state_dict(), buffer)
        rng = get_rng_state()
        losses = [driver.step(*args) for _ in range(after)]
        expected = guide_state(guide), driver.state_dict()

        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        resumed = case.make_guide(local_model)
        new = case.driver(local_model, resumed, 0.5)
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)
        if with_args:
            new.load_state_dict(checkpoint, *args)
        else:
            new.load_state_dict(checkpoint)
        set_rng_state(rng)
        found_losses = [new.step(*args) for _ in range(after)]
        assert found_losses == losses, "the losses after the round trip"
        assert_identical(guide_state(resumed), expected[0], "guide parameters")
        assert_identical(new.state_dict(), expected[1], "state_dict")

    round_trip()
