"""Distributed runs refuse what does not match (gloo, two processes spawned here): the ranks
agree on the model at set-up or all raise naming the rank that differs; unequal shards are
weighted by their share of the data and give the answer of one process on all of it; a rank
that stops early makes the others raise a clear error instead of waiting forever.
"""

import datetime
import os
import tempfile
import time
from fractions import Fraction

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.distributed import Collective, RanksDisagree, RanksOutOfStep
from pyro_blr.blr.rank_signature import data_shares, disagreements
from pyro_blr.blr.rules import rule_from_name

N = 16
D = torch.float64
SHARDS = (torch.arange(0, 4), torch.arange(4, 16))  # 4 and 12 of the 16 data


def data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, 3, generator=gen, dtype=D)
    y = torch.bernoulli(torch.sigmoid(X @ torch.tensor([1.0, -1.0, 0.5], dtype=D)), generator=gen)
    return X, y


def model(X, y, idx=None, size=N, dim=3):
    w = pyro.sample("w", dist.Normal(X.new_zeros(dim), 2.0).to_event(1))
    with pyro.plate("data", size, subsample=idx) as i:
        pyro.sample("y", dist.Bernoulli(logits=X[i, :dim] @ w), obs=y[i])


def params(guide):
    return {name: p.detach().clone() for name, p in guide.named_parameters()}


CASES = [("von", AutoMultivariateNormal), ("ivon", AutoNormal), ("expfamily", pb.AutoExpFamily)]


def fit(rule, guide_class, idx=None, steps=3, **model_kwargs):
    X, y = data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = guide_class(model)
    blr = pb.BLR(model, guide, rule_from_name(rule, lr=0.5), rank_noise=False)
    for _ in range(steps):
        blr.step(X, y, idx, **model_kwargs)
    return guide


def signature(minibatch, full=N, dim=3):
    return {
        "latent dimension D": dim,
        "dtype": "torch.float64",
        "plate 'data' full size": full,
        "plate 'data' minibatch size": minibatch,
    }


# ------------------------------------------------------------------ what each rank runs
def collective_api(rank, world):
    """The agreement through Collective's own API (no stepper involved)."""
    collective = Collective(None, rank_noise=False)
    out = {}
    try:
        collective.agree_on("the run", signature(8, dim=3 + rank))
    except RanksDisagree as error:
        out["dim"] = str(error)
    try:
        collective.join_run(signature(8, full=N + 8 * rank))
    except RanksDisagree as error:
        out["full"] = str(error)
    collective.join_run(signature(8))  # equal shards: the plain average
    out["equal_share"] = collective.share
    collective.join_run(signature((4, 12)[rank]))
    out["share"] = collective.share
    # The weighted mean of each rank's negative log joint gradient is the full-data one.
    X, y = data()
    w = torch.tensor([0.3, -0.2, 0.1], dtype=D, requires_grad=True)
    trace = pyro.poutine.trace(pyro.condition(model, data={"w": w})).get_trace(X, y, SHARDS[rank])
    (grad,) = torch.autograd.grad(-trace.log_prob_sum(), w)
    (out["grad"],) = collective.mean([grad])
    return {**out, **stops_early(rank, world, stay=False)}  # rank 1 then leaves


def stops_early(rank, world, stay):
    """Rank 1 leaves after one step (or stays alive, idle); rank 0 takes a second step."""
    X, y = data()
    pyro.clear_param_store()
    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, pb.VON(lr=0.5))
    blr.step(X, y, SHARDS[rank])
    if rank == 1:
        if stay:
            time.sleep(12)  # past rank 0's process-group timeout of 3 s
        return {}
    start = time.monotonic()
    try:
        blr.step(X, y, SHARDS[rank])
    except RanksOutOfStep as error:
        return {"error": str(error), "seconds": time.monotonic() - start}
    return {"error": None}


def integrated(rank, world):
    out = {rule: params(fit(rule, g, SHARDS[rank])) for rule, g in CASES}
    # Rank 1 declares a plate of 12 data (its 8 of them drawn from those), or has 2 latents.
    size = (SHARDS[rank], {"size": N - 4 * rank}) if rank == 0 else (torch.arange(8), {"size": 12})
    for what, (idx, kwargs) in (("size", size), ("dim", (SHARDS[rank], {"dim": 3 - rank}))):
        guide = None
        try:
            X, y = data()
            pyro.clear_param_store()
            guide = AutoNormal(model)
            guide(X, y, idx, **kwargs)
            before = params(guide)
            blr = pb.BLR(model, guide, pb.VON(lr=0.5))
            blr.step(X, y, idx, **kwargs)
        except Exception as error:  # what the ranks raised, whatever it is
            unchanged = all(torch.equal(v, before[k]) for k, v in params(guide).items())
            out[what] = (type(error).__name__, str(error), unchanged)
    return out


def _worker(rank, world, init_file, out_dir, name, extra, timeout):
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )
    try:
        result = globals()[name](rank, world, *extra)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def run_ranks(name, *extra, world=2, timeout=120, group_timeout=60):
    """Run ``name(rank, world, *extra)`` in ``world`` spawned processes; their results."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        args = (world, init_file, tmp, name, extra, group_timeout)
        context = mp.spawn(_worker, args=args, nprocs=world, join=False)
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"{name}: the ranks did not finish within {timeout} s (a hang)")
        return [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]


# ------------------------------------------------------------------ the pure parts
def test_disagreements_name_each_entry_and_each_rank():
    found = disagreements([signature(4), signature(12, full=8), signature(4, dim=2)])
    assert found == [
        "latent dimension D: 3 on ranks 0, 1, 2 on rank 2",
        "plate 'data' full size: 16 on ranks 0, 2, 8 on rank 1",
    ]  # minibatch sizes may differ
    assert disagreements([signature(4), signature(12)]) == []


def test_data_shares_weight_each_rank_by_its_minibatch():
    assert data_shares([signature(4), signature(12)]) == [Fraction(1, 4), Fraction(3, 4)]
    assert data_shares([signature(8), signature(8)]) is None  # the plain average
    assert data_shares([signature(N), signature(N)]) is None  # not subsampled
    two = [{**signature(b), "plate 'b' full size": 8, "plate 'b' minibatch size": c}
           for b, c in ((4, 2), (12, 6))]  # fmt: skip
    assert data_shares(two) == [Fraction(1, 4), Fraction(3, 4)]  # the same shares: one weight
    two[1]["plate 'b' minibatch size"] = 2
    with pytest.raises(ValueError, match=r"shares of the data differ between plate 'data'.*"):
        data_shares(two)


# ------------------------------------------------------------------ through Collective
@pytest.fixture(scope="module")
def collective_runs():
    return run_ranks("collective_api")


def test_collective_agrees_on_the_run_and_weights_each_rank_by_its_share(collective_runs):
    first, second = collective_runs
    for result in (first, second):
        assert "latent dimension D: 3 on rank 0, 4 on rank 1" in result["dim"]
        assert "plate 'data' full size: 16 on rank 0, 24 on rank 1" in result["full"]
        assert "shard_indices" in result["full"]
        assert result["equal_share"] is None
    assert (first["share"], second["share"]) == (0.25, 0.75)
    # The full-data gradient at the same point, in one process (1e-12: round-off only).
    X, y = data()
    w = torch.tensor([0.3, -0.2, 0.1], dtype=D, requires_grad=True)
    trace = pyro.poutine.trace(pyro.condition(model, data={"w": w})).get_trace(X, y)
    (expected,) = torch.autograd.grad(-trace.log_prob_sum(), w)
    for result in (first, second):
        torch.testing.assert_close(result["grad"], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(first["grad"], second["grad"])


def check_stopped_early(first):
    assert first["error"] is not None, "rank 0's step with rank 1 gone did not raise"
    assert "BLR step 2: rank 0 of 2 could not reach the other ranks" in first["error"]
    assert "init_process_group(timeout=...)" in first["error"]


def test_a_rank_that_exits_early_makes_the_others_raise(collective_runs):
    check_stopped_early(collective_runs[0])


@pytest.mark.slow
def test_a_rank_that_stays_idle_makes_the_others_raise_at_the_timeout():
    first, _ = run_ranks("stops_early", True, group_timeout=3, timeout=60)
    check_stopped_early(first)
    assert first["seconds"] < 11  # the 3 s timeout, not gloo's default of 30 minutes


# ------------------------------------------------------------------ integrated (the lead's lines)
@pytest.fixture(scope="module")
def integrated_runs():
    try:  # without the lead's lines a rank aborts (gloo, on parameters of other shapes)
        return run_ranks("integrated")
    except Exception as error:  # raised in each test, so that it counts as that test's failure
        return error


def results(runs):
    if isinstance(runs, Exception):
        raise runs
    return runs


def test_unequal_shards_give_the_answer_of_one_process_on_all_data(integrated_runs):
    # Shards of 4 and 12 of 16 data. Unweighted, the first rank's data counted three times,
    # the second's two thirds (the posterior sd ended about one sd off).
    ranks = results(integrated_runs)
    for rule, guide_class in CASES:
        expected = params(fit(rule, guide_class))
        for result in ranks:
            for key, value in expected.items():
                torch.testing.assert_close(result[rule][key], value, rtol=1e-10, atol=1e-12)
        for key in expected:
            assert torch.equal(ranks[0][rule][key], ranks[1][rule][key]), (rule, key)


def test_ranks_with_other_plate_sizes_or_latent_dimensions_all_raise(integrated_runs):
    for result in results(integrated_runs):
        kind, message, unchanged = result["size"]
        assert kind == "RanksDisagree"
        assert "plate 'data' full size: 16 on rank 0, 12 on rank 1" in message
        assert "pyro.plate('data', N, subsample=idx)" in message
        assert unchanged
        kind, message, unchanged = result["dim"]
        assert kind == "RanksDisagree"
        assert "latent dimension D: 3 on rank 0, 2 on rank 1" in message
        assert "site 'w' shape: (3,) on rank 0, (2,) on rank 1" in message
        assert unchanged
