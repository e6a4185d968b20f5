"""The BLR over torch.distributed (gloo, two processes spawned here): two ranks with half the
data each equal one process with all of it, independent noise halves the variance, a failing
rank makes both raise with the guides unchanged, and checkpoints move between world sizes."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.distributed import RankFailed, shard_indices
from pyro_blr.blr.rules import rule_from_name
from tests.blr.gloo import run_ranks

N = 40
D = torch.float64
CASES = [
    ("expfamily", pb.AutoExpFamily),
    ("ivon", AutoNormal),
    ("von", AutoNormal),
    ("von", AutoMultivariateNormal),
    ("vogn", AutoNormal),
    ("vogn", AutoMultivariateNormal),
    ("newton", AutoMultivariateNormal),
]


def data():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(N, 3, generator=gen, dtype=D)
    y = torch.bernoulli(torch.sigmoid(X @ torch.tensor([1.0, -1.0, 0.5], dtype=D)), generator=gen)
    return X, y


def model(X, y, idx=None):
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 2.0).to_event(1))
    with pyro.plate("data", N, subsample=idx) as i:
        pyro.sample("y", dist.Bernoulli(logits=X[i] @ w), obs=y[i])


def params(guide):
    return {name: p.detach().clone() for name, p in guide.named_parameters()}


def fit(rule, guide_class, steps, idx=None, state=None, seed=0, **options):
    """``steps`` steps of one driver (on this rank's shard ``idx``), from a checkpoint if given."""
    X, y = data()
    pyro.clear_param_store()
    guide = guide_class(model)
    blr = pb.BLR(model, guide, rule_from_name(rule, lr=0.5, **options), rank_noise=False)
    if state is not None:
        blr.load_state_dict(state["blr"], X, y, idx)
        torch.set_rng_state(state["rng"])
    else:
        pyro.set_rng_seed(seed)
    for _ in range(steps):
        blr.step(X, y, idx)
    return guide, {"blr": blr.state_dict(), "rng": torch.get_rng_state()}


def half(rank):
    return torch.arange(rank * N // 2, (rank + 1) * N // 2)


# ------------------------------------------------------------------ what each rank runs
def equal_to_one_process(rank, world):
    out = {f"{r}-{g.__name__}": params(fit(r, g, 3, half(rank))[0]) for r, g in CASES}
    out["reused"] = params(fit("von", AutoMultivariateNormal, 6, half(rank), hessian_every=3)[0])
    return out


def independent_noise(rank, world):
    X, y = data()
    locs = []
    for rep in range(150):
        pyro.clear_param_store()
        pyro.set_rng_seed(rep)
        guide = AutoNormal(model, init_scale=0.5)
        pb.BLR(model, guide, pb.VON(lr=1.0, antithetic=False, mc_samples=2)).step(X, y)
        locs.append(guide.locs.w.detach().clone())
    return torch.stack(locs)


def failing_rank(rank, world):
    X, y = data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, pb.VON(lr=0.5))
    blr.step(X, y, half(rank))
    before = params(guide)
    bad = y.clone()
    if rank == 1:
        bad[half(1)[0]] = float("nan")
    try:
        blr.step(X, bad, half(rank))
    except (FloatingPointError, ValueError, RankFailed) as error:
        raised = type(error).__name__
    else:
        raised = None
    unchanged = all(torch.equal(before[k], v) for k, v in params(guide).items())
    return {"raised": raised, "unchanged": unchanged}


def with_param(X, y, idx=None):
    offset = pyro.param("offset", torch.randn((), dtype=D))  # rank-dependent start
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 2.0).to_event(1))
    with pyro.plate("data", N, subsample=idx) as i:
        pyro.sample("y", dist.Bernoulli(logits=X[i] @ w + offset), obs=y[i])


def model_parameters(rank, world):
    X, y = data()
    pyro.clear_param_store()
    pyro.set_rng_seed(rank)  # different starts, guide and model parameter alike
    guide = AutoNormal(with_param)
    blr = pb.BLR(with_param, guide, pb.IVON())
    for _ in range(3):
        blr.step(X, y, half(rank))
    return {"offset": pyro.param("offset").detach().clone(), **params(guide)}


FAIL = {"armed": False}


def failing(X, y, idx=None):
    if FAIL["armed"]:
        raise RuntimeError("the model failed")
    model(X, y, idx)


def setup_fails_then_retries(rank, world):
    X, y = data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(failing)
    guide(X, y, half(rank))  # the guide set up before the failing run
    blr = pb.BLR(failing, guide, pb.VON())
    FAIL["armed"] = rank == 1
    try:
        blr.step(X, y, half(rank))
    except (RuntimeError, RankFailed) as error:
        first = type(error).__name__
    FAIL["armed"] = False
    blr.step(X, y, half(rank))  # the retry: every rank sets up again, nobody hangs
    return {"first": first, **params(guide)}


def resume_from_two_ranks(rank, world):
    _, state = fit("ivon", AutoNormal, 2, half(rank))
    guide, _ = fit("ivon", AutoNormal, 2, half(rank), state=state)
    return {"checkpoint": state, "final": params(guide)}


def resume_in_two_ranks(rank, world, state):
    return params(fit("ivon", AutoNormal, 2, half(rank), state=state)[0])


# ------------------------------------------------------------------ the tests
def test_two_ranks_with_half_the_data_equal_one_process_for_every_rule():
    ranks = run_ranks(equal_to_one_process)
    for rule, guide_class in CASES:
        expected = params(fit(rule, guide_class, 3)[0])
        for result in ranks:
            found = result[f"{rule}-{guide_class.__name__}"]
            for key, value in expected.items():
                torch.testing.assert_close(found[key], value, atol=1e-12, rtol=1e-12)
        for key in expected:  # bit-identical across ranks
            assert torch.equal(ranks[0][f"{rule}-{guide_class.__name__}"][key],
                               ranks[1][f"{rule}-{guide_class.__name__}"][key])  # fmt: skip
    # A reused Hessian (hessian_every) is reused alike on every rank: the ranks decide from
    # all-reduced numbers only.
    expected = params(fit("von", AutoMultivariateNormal, 6, hessian_every=3)[0])
    for key, value in expected.items():
        torch.testing.assert_close(ranks[0]["reused"][key], value, atol=1e-12, rtol=1e-12)
        assert torch.equal(ranks[0]["reused"][key], ranks[1]["reused"][key])


def test_independent_noise_on_two_ranks_halves_the_variance():
    two = run_ranks(independent_noise)[0]
    one = independent_noise(0, 1)
    ratio = two.var(0) / one.var(0)
    # Each variance from 150 repeats has relative sd sqrt(2/149) = 0.12, the ratio about 0.16:
    # 0.5 +- 0.25 is three of those on every coordinate.
    assert ((ratio > 0.25) & (ratio < 0.75)).all(), ratio


def test_a_failing_rank_makes_every_rank_raise_with_the_guide_unchanged():
    first, second = run_ranks(failing_rank)
    # Rank 1's NaN datum fails Pyro's support check (or makes the log joint NaN) there.
    assert second["raised"] in ("ValueError", "FloatingPointError")
    assert first["raised"] == "RankFailed"
    assert first["unchanged"] and second["unchanged"]


def test_model_parameters_start_from_rank_0_and_stay_identical():
    first, second = run_ranks(model_parameters)
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


def test_a_set_up_that_fails_on_one_rank_is_retried_by_all():
    first, second = run_ranks(setup_fails_then_retries, timeout=90)
    assert (first["first"], second["first"]) == ("RankFailed", "RuntimeError")
    for key, value in first.items():
        if key != "first":
            assert torch.equal(value, second[key]), key


def test_checkpoints_move_between_world_sizes():
    two = run_ranks(resume_from_two_ranks)
    one, _ = fit("ivon", AutoNormal, 2, state=two[0]["checkpoint"])  # resumed in one process
    for key, value in params(one).items():
        torch.testing.assert_close(two[0]["final"][key], value, atol=1e-12, rtol=1e-12)
    _, state = fit("ivon", AutoNormal, 2)  # and the other way
    resumed = run_ranks(resume_in_two_ranks, state)
    expected = params(fit("ivon", AutoNormal, 4)[0])
    for result in resumed:
        for key, value in expected.items():
            torch.testing.assert_close(result[key], value, atol=1e-12, rtol=1e-12)


def test_shards_are_disjoint_and_cover_each_epoch():
    seen = torch.cat(
        [shard_indices(12, 3, step, r, 2, seed=1) for step in range(2) for r in (0, 1)]
    )
    assert sorted(seen.tolist()) == list(range(12))
    with pytest.raises(ValueError, match="exceeds the 10 data"):
        shard_indices(10, 6, 0, 0, 2)
    with pytest.raises(ValueError, match="rank must lie in"):
        shard_indices(10, 2, 0, 2, 2)


def test_a_process_group_needs_torch_distributed_running():
    with pytest.raises(RuntimeError, match="init_process_group"):
        pb.BLR(model, AutoNormal(model), process_group=object())
    mixture = pb.AutoMixture(model, num_components=2, component="diagonal")
    with pytest.raises(RuntimeError, match="init_process_group"):  # mixtures run distributed too
        pb.BLR(model, mixture, pb.MixtureRule(), process_group=object())
