"""pyro_blr.blr.guide_io: the Gaussian stepper reads the guide only when something outside wrote
to it since its own last write (a version stamp), never to check its own write; and every
outside write (SVI, the param store, a replaced tensor, another driver) is still picked up."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.guide_io import ParamStamp
from pyro_blr.core import GaussianGuide


def model(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    return X, X @ torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)


@pytest.fixture
def reads(monkeypatch):
    calls = []
    read = GaussianGuide.read

    def counting(self, *args, **kwargs):
        calls.append(1)
        return read(self, *args, **kwargs)

    monkeypatch.setattr(GaussianGuide, "read", counting)
    return calls


@pytest.mark.parametrize("make_guide", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal])
def test_steps_do_not_read_back_the_guide_they_wrote(make_guide, reads):
    pyro.clear_param_store()
    X, y = _data()
    blr = pb.BLR(model, make_guide(model), pb.VON(lr=0.3))
    blr.step(X, y)
    reads.clear()
    for _ in range(5):
        blr.step(X, y)
    assert reads == []  # the old stepper read the guide twice per step (check, and read-back)


def _lr(first):
    return lambda step: first if step == 0 else 1e-12  # later steps of ~0 keep the mean


@pytest.mark.parametrize(
    "outside",
    ["svi", "param_store", "replaced_data", "another_driver"],
)
def test_an_outside_write_between_steps_is_read_from_the_guide(outside, reads):
    pyro.clear_param_store()
    X, y = _data()
    guide = AutoMultivariateNormal(model)
    blr = pb.BLR(model, guide, pb.Newton(lr=_lr(1.0)))
    blr.step(X, y)
    if outside == "svi":
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        for _ in range(20):
            svi.step(X, y)
    elif outside == "param_store":
        with torch.no_grad():
            pyro.get_param_store()["AutoMultivariateNormal.loc"].add_(0.25)
    elif outside == "replaced_data":
        guide.loc.data = guide.loc.detach() - 0.25  # new storage, same version counter
    else:
        pb.BLR(model, guide, pb.VON(lr=0.5)).step(X, y)
    moved = guide.loc.detach().clone()
    reads.clear()
    blr.step(X, y)
    assert len(reads) == 1
    torch.testing.assert_close(guide.loc.detach(), moved, rtol=1e-8, atol=1e-8)


def test_the_stamp_sees_in_place_writes_replaced_storage_and_replaced_parameters():
    module = torch.nn.Linear(3, 2)
    stamp = ParamStamp(module)
    assert stamp.holds(module)
    with torch.no_grad():
        module.weight.mul_(1.0)  # a write, even of the same values
    assert not stamp.holds(module)
    stamp = ParamStamp(module)
    module.bias = torch.nn.Parameter(module.bias.detach().clone())
    assert not stamp.holds(module)
    stamp = ParamStamp(module)
    module.weight.data = module.weight.detach().clone()
    assert not stamp.holds(module)


# ------------------------------------------------------------------ under torch.distributed
def _logistic(X, y, idx=None):
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 2.0).to_event(1))
    with pyro.plate("data", X.shape[0], subsample=idx) as i:
        pyro.sample("y", dist.Bernoulli(logits=X[i] @ w), obs=y[i])


def _differing_checkpoints(rank):
    """Each rank loads its own checkpoint (another fit's), then steps once: rank 0's guide is
    broadcast at the first step, through .data, which no version counter sees."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(X @ torch.tensor([1.0, -1.0, 0.5], dtype=X.dtype)),
                        generator=g)  # fmt: skip
    idx = torch.arange(rank * 20, (rank + 1) * 20)
    pyro.clear_param_store()
    pyro.set_rng_seed(rank)
    guide = AutoMultivariateNormal(_logistic)
    first = pb.BLR(_logistic, guide, pb.VON(lr=0.5), process_group=None)
    for _ in range(rank + 1):  # a different state on each rank
        first.step(X, y, idx)
    state = first.state_dict()
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(_logistic)
    blr = pb.BLR(_logistic, guide, pb.VON(lr=0.5), rank_noise=False)
    blr.load_state_dict(state, X, y, idx)
    blr.step(X, y, idx)
    return {name: p.detach().clone() for name, p in guide.named_parameters()}


def _worker(rank, world, init_file, out_dir):
    import os

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        torch.save(_differing_checkpoints(rank), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_that_loaded_different_checkpoints_step_from_rank_0s_guide():
    # Every rank ends each step identical: the stepper must not take its own loaded state for
    # the guide's once rank 0's guide was broadcast into it.
    import os
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_worker, args=(2, init_file, tmp), nprocs=2, join=True)
        first, second = (torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(2))
    # Round-off apart (the ranks' loaded states differ by ~0.1, their guides here by < 1e-15).
    for name, value in first.items():
        torch.testing.assert_close(value, second[name], rtol=1e-10, atol=1e-10, msg=name)
