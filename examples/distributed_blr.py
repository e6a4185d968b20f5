"""A Bayesian neural network fitted by IVON on several processes with torch.distributed.

Run on every GPU of a machine (NCCL) or on CPU processes (gloo) with torchrun::

    torchrun --nproc_per_node=4 examples/distributed_blr.py
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
        --nproc_per_node=8 examples/distributed_blr.py          # and node_rank=1 on the other

Each rank reads its own shard of every step's minibatch (``pb.blr.shard_indices``) and passes it
to the model's full-size plate with ``subsample=``, so the plate scales the shard by N/B; the
BLR broadcasts the guide from rank 0 and averages the ranks' gradients and curvature in one
all-reduce a step, so every rank holds the same posterior. ``--smoke`` spawns two CPU processes
through torchrun on the CPU for a few steps.
"""

from __future__ import annotations

import argparse
import json
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
            pyro.sample("y", dist.Normal(mean, 0.1), obs=y[idx])


def make_data(num_data: int, inputs: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)  # the same data on every rank
    X = torch.randn(num_data, inputs, generator=gen)
    y = (
        torch.sin(X[:, 0])
        + torch.cos(X[:, 1] * X[:, 2])
        + 0.1 * torch.randn(num_data, generator=gen)
    )
    return X.to(device), y.to(device)


def train(num_steps: int, num_data: int = 100_000, batch: int = 256, hidden: int = 64) -> dict:
    """Fit on this rank's shards; every rank returns the same posterior."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = (
        torch.device(f"cuda:{rank % torch.cuda.device_count()}")
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    X, y = make_data(num_data, 20, device)
    pyro.set_rng_seed(0)
    net = BNN(num_data, 20, hidden).to(device)
    guide = AutoNormal(net)
    blr = pb.BLR(net, guide, pb.IVON())  # runs over the default process group
    losses, warmup = [], min(5, num_steps - 1)
    for step in range(num_steps):
        if step == warmup:
            start = time.perf_counter()
        idx = shard_indices(num_data, batch, step, rank, world).to(device)
        losses.append(blr.step(X, y, idx))
    seconds = time.perf_counter() - start
    loc = torch.cat([p.detach().reshape(-1) for p in guide.locs.parameters()])
    return {
        "rank": rank,
        "world_size": world,
        "loss": losses[-1],
        "checksum": float(loc.double().sum()),
        "steps_per_second": (num_steps - warmup) / seconds,
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


def run(tiny: bool) -> dict:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)  # torchrun's environment
    try:
        if tiny:
            result = train(num_steps=6, num_data=2_000, batch=64, hidden=16)
        else:
            batch = int(os.environ.get("BATCH", 256))
            result = train(num_steps=int(os.environ.get("NUM_STEPS", 1000)), batch=batch)
        print(json.dumps(result), flush=True)
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
