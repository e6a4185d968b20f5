"""One rank equals two ranks on the same data: two gloo processes, each with its shard of the
data, take the same steps as one process with all of it, for every rule that runs distributed.

Spawning processes takes seconds (a minute for a few examples on a busy machine), so each
example runs every rule in one spawn and the property runs under the slow profile only, with
:data:`EXAMPLES` examples per shard layout (``tests/blr/test_distributed.py`` checks one fixed
example in the default suite).

Shards of equal size and of unequal size (an odd number of data) are separate
parametrizations: the log-likelihood of a shard of ``B`` of ``N`` data is scaled by ``N / B``
(as Pyro scales a subsample), and the average over ranks is the full-data one only if the
ranks' shares are weighed by their sizes.
"""

from __future__ import annotations

import os
import tempfile
import time

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
from hypothesis import given

from tests.properties.cases import (
    PROFILES,
    Case,
    Problem,
    assert_scaled,
    guide_draws,
    problems,
    profile_settings,
)

CASES = [
    Case("ivon", "AutoNormal"),
    Case("ivon", "AutoDiagonalNormal"),
    *(Case(rule, guide) for rule in ("von", "vogn", "newton")
      for guide in ("AutoNormal", "AutoMultivariateNormal")),
    Case("expfamily", "AutoExpFamily"),
]  # fmt: skip
"""Every rule that runs distributed (Gaussian guides and AutoExpFamily)."""

EXAMPLES = {"blr-slow": 6}
STEPS = 2


def sharded(problem: Problem):
    """The problem's model with its data plate subsampled by ``idx`` (all data when ``None``)."""
    likelihood, prior_scale, noise = problem.likelihood, problem.prior_scale, problem.noise

    def model(X, y, idx=None):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), prior_scale).to_event(1))
        with pyro.plate("data", X.shape[0], subsample=idx) as i:
            if likelihood == "normal":
                pyro.sample("y", dist.Normal(X[i] @ w, noise), obs=y[i])
            else:
                pyro.sample("y", dist.Bernoulli(logits=X[i] @ w), obs=y[i])

    return model


def shard(num_data: int, rank: int) -> torch.Tensor:
    """Rank 0 takes the first ceil(N/2) data, rank 1 the rest."""
    half = (num_data + 1) // 2
    return torch.arange(0, half) if rank == 0 else torch.arange(half, num_data)


def run_cases(problem: Problem, idx: torch.Tensor | None) -> dict:
    """Every case's draws after :data:`STEPS` steps, in this process (``idx=None``) or on this
    rank's shard."""
    model = sharded(problem)
    args = (*problem.args, idx)
    out = {}
    for case in CASES:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = case.make_guide(model)
        driver = case.driver(model, guide, 0.5, rank_noise=False)
        for _ in range(STEPS):
            driver.step(*args)
        out[case.id] = guide_draws(guide, args)
    return out


def _worker(rank, world, init_file, out_dir, problem):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        torch.save(run_cases(problem, shard(problem.num_data, rank)), f"{out_dir}/{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def two_ranks(problem: Problem, timeout: float = 240) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        context = mp.spawn(_worker, args=(2, init_file, tmp, problem), nprocs=2, join=False)
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"the ranks did not finish within {timeout} s (a hang)")
        return [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("profile", [p for p in PROFILES if p.id == "slow"])
@pytest.mark.parametrize(
    "parity",
    [pytest.param(0, id="equal-shards"),
     pytest.param(1, id="unequal-shards")],
)  # fmt: skip
def test_two_ranks_equal_one_process(parity, profile):
    @profile_settings(profile, max_examples=EXAMPLES[profile])
    @given(problems(max_data=9).filter(lambda p: p.num_data % 2 == parity and p.num_data > 1))
    def equal(problem):
        one = run_cases(problem, None)
        for rank, result in enumerate(two_ranks(problem)):
            for case in CASES:
                assert_scaled(result[case.id], one[case.id], 1.0, f"{case.id} on rank {rank}")

    equal()
