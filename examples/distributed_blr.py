"""A Bayesian neural network fitted by IVON on several processes with torch.distributed.

Run on every GPU of a machine (NCCL) or on CPU processes (gloo) with torchrun::

    torchrun --nproc_per_node=4 examples/distributed_blr.py
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
        --nproc_per_node=8 examples/distributed_blr.py          # and node_rank=1 on the other

Each rank reads its own shard of every step's minibatch (``pb.blr.shard_indices``) and passes it
to the model's full-size plate with ``subsample=``, so the plate scales the shard by N/B; the
BLR broadcasts the guide from rank 0 and averages the ranks' gradients and curvature in one
all-reduce a step, so every rank holds the same posterior. The run ends with the posterior
predictive on 2000 held-out data, beside two yardsticks: predicting the training mean, and the
noise floor (the data's noise sd is 0.1). With ``torchrun --nproc_per_node=2`` on the CPU, 1000
steps (the default) take about 45 seconds and end at a held-out RMSE of 0.20 (the training
mean: 0.82; the noise floor: 0.10). ``NUM_STEPS=...`` and ``BATCH=...`` in the environment
change the fit. ``python examples/distributed_blr.py --smoke`` spawns two CPU processes through
torchrun for a few steps; without torchrun and without ``--smoke`` the script says how to run it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.distributed
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

import pyro_blr as pb
from pyro_blr.blr.distributed import shard_indices


class BNN(PyroModule):
    """One hidden layer of ReLU units, Gaussian noise of sd 0.1 (an ordinary Pyro model)."""

    def __init__(self, num_data: int, inputs: int, hidden: int):
        super().__init__()
        self.num_data = num_data
        self.hidden = PyroModule[nn.Linear](inputs, hidden)
        self.hidden.weight = PyroSample(dist.Normal(0.0, 1.0).expand([hidden, inputs]).to_event(2))
        self.hidden.bias = PyroSample(dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
        self.out = PyroModule[nn.Linear](hidden, 1)
        self.out.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, hidden]).to_event(2))
        self.out.bias = PyroSample(dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    def forward(self, X, y, idx):
        mean = self.out(torch.relu(self.hidden(X[idx]))).squeeze(-1)  # weights outside the plate
        with pyro.plate("data", self.num_data, subsample=idx):
            pyro.sample("y", dist.Normal(mean, NOISE), obs=y[idx])
        return mean


NOISE = 0.1


def make_data(num_data: int, inputs: int, device: torch.device, seed: int = 0):
    """y = sin(x0) + cos(x1 x2) + N(0, 0.1^2) noise; the same data on every rank."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, inputs, generator=gen)
    y = (
        torch.sin(X[:, 0])
        + torch.cos(X[:, 1] * X[:, 2])
        + NOISE * torch.randn(num_data, generator=gen)
    )
    return X.to(device), y.to(device)


@torch.no_grad()
def held_out(net, guide, X_test, y_test, y_train, num_draws: int = 32) -> dict:
    """Posterior predictive RMSE and log-likelihood per datum on held-out data, beside the
    yardsticks: predicting the training mean, and the noise floor (RMSE 0.1)."""
    idx = torch.arange(len(y_test), device=y_test.device)
    means = []
    for _ in range(num_draws):
        draw = pyro.poutine.trace(guide).get_trace(X_test, y_test, idx)
        means.append(pyro.poutine.replay(net, trace=draw)(X_test, y_test, idx))
    means = torch.stack(means)
    rmse = float((means.mean(0) - y_test).square().mean().sqrt())
    log_lik = dist.Normal(means, NOISE).log_prob(y_test).logsumexp(0) - math.log(num_draws)
    constant = float((y_train.mean() - y_test).square().mean().sqrt())
    return {"test_rmse": rmse, "test_log_lik": float(log_lik.mean()), "mean_rmse": constant}


def train(num_steps: int, num_data: int = 100_000, batch: int = 256, hidden: int = 64) -> dict:
    """Fit on this rank's shards; every rank returns the same posterior and held-out metrics
    (on 2000 data drawn apart from the training data)."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = (
        torch.device(f"cuda:{rank % torch.cuda.device_count()}")
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    X, y = make_data(num_data, 20, device)
    X_test, y_test = make_data(2_000, 20, device, seed=1)
    pyro.set_rng_seed(0)
    net = BNN(num_data, 20, hidden).to(device)
    guide = AutoNormal(net)
    # Four draws a step and rank: with noise sd 0.1 the loss of one draw from the early, wide
    # posterior swings by tens of nats a datum, which the driver reads as a divergence.
    blr = pb.BLR(net, guide, pb.IVON(mc_samples=4))  # runs over the default process group
    losses, warmup = [], min(5, num_steps - 1)
    for step in range(num_steps):
        if step == warmup:
            start = time.perf_counter()
        idx = shard_indices(num_data, batch, step, rank, world).to(device)
        losses.append(blr.step(X, y, idx))
    seconds = time.perf_counter() - start
    loc = torch.cat([p.detach().reshape(-1) for p in guide.locs.parameters()])
    pyro.set_rng_seed(1)  # the same predictive draws on every rank
    return {
        "rank": rank,
        "world_size": world,
        "loss": losses[-1],
        "checksum": float(loc.double().sum()),
        "steps_per_second": (num_steps - warmup) / seconds,
        **held_out(net, guide, X_test, y_test, y),
    }


def main(smoke: bool = False) -> list[dict]:
    """Under torchrun: fit and print this rank's result. With ``smoke`` (no torchrun): launch
    ``torchrun --standalone --nproc_per_node=2`` on this file for a tiny fit on the CPU and
    return both ranks' results."""
    if smoke:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node=2", __file__, "--tiny"]  # fmt: skip
        with tempfile.TemporaryDirectory() as out:
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
                   "RESULT_DIR": out}  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
            if done.returncode:
                raise RuntimeError(f"torchrun failed:\n{done.stderr[-3000:]}")
            results = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]
        for result in results:
            print(result)
        return sorted(results, key=lambda r: r["rank"])
    return [run(tiny=False)]


HOW_TO_RUN = """\
distributed_blr.py runs one process per rank, started by torchrun, which sets RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT (not set here). Run it as

    torchrun --nproc_per_node=2 examples/distributed_blr.py     # 2 processes on this machine

(gloo on the CPU, NCCL on GPUs; NUM_STEPS=... and BATCH=... in the environment change the
fit), or spawn two CPU processes for a few steps with

    python examples/distributed_blr.py --smoke"""


def run(tiny: bool) -> dict:
    if not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= os.environ.keys():
        raise SystemExit(HOW_TO_RUN)  # not under torchrun: say how, not torch's KeyError
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)  # torchrun's environment
    try:
        if tiny:
            result = train(num_steps=6, num_data=2_000, batch=64, hidden=16)
        else:
            batch = int(os.environ.get("BATCH", 256))
            result = train(num_steps=int(os.environ.get("NUM_STEPS", 1000)), batch=batch)
        print(json.dumps(result), flush=True)
        if result["rank"] == 0:
            print(
                f"held-out RMSE {result['test_rmse']:.3f} (predicting the training mean: "
                f"{result['mean_rmse']:.3f}; the noise floor: {NOISE}), log-likelihood per "
                f"datum {result['test_log_lik']:.3f} (the noise floor: "
                f"{-0.5 - math.log(NOISE * math.sqrt(2 * math.pi)):.3f})",
                flush=True,
            )
        if "RESULT_DIR" in os.environ:  # one file per rank: their prints may interleave
            Path(os.environ["RESULT_DIR"], f"{result['rank']}.json").write_text(json.dumps(result))
        return result
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--smoke", action="store_true", help="two CPU processes, a few steps")
    cli.add_argument("--tiny", action="store_true", help="(under torchrun) a few steps")
    options = cli.parse_args()
    if options.tiny:
        run(tiny=True)
    else:
        main(options.smoke)
