"""IVON's start above 2048 coordinates on a small ReLU MLP: the defaults against fixed starts.

A regression of a standardized target on 8 standard-normal inputs (a sine of a random
projection plus an interaction, noise sd 0.1), 2000 training and 1000 test rows; a Pyro BNN
8 -> 48 -> 48 -> 1 (2 833 weights and biases and a latent noise, above
:data:`pyro_blr.blr.ivon_start.EXACT_START_MAX_DIM`) with the diamonds MLP's priors (weights
``Normal(0, 1/sqrt(fan_in))``, biases ``Normal(0, 1)``, ``sigma ~ HalfNormal(1)``), minibatches
of 128 drawn by the plate, ``init_to_sample``; ``pb.IVON`` at its defaults but for
``hess_init``, 300 steps. Test RMSE of the mean of 16 guide draws (the constant predictor
scores about 1).

This is the fast stand-in of ``benchmarks/deep.py`` for the start: at ``hess_init="auto"`` the
start was :math:`N_i/s_i^2` there (fan-in times :math:`N_i`), and the fit barely left the
constant predictor in 300 steps; ``tests/blr/test_large_start.py`` keeps the start itself.

Run: ``python -m benchmarks.ivon_large_start`` (prints the table; a few minutes on one thread).
"""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal, init_to_sample
from pyro.nn import PyroModule, PyroSample
from torch import nn

import pyro_blr as pb

STARTS = ("auto", 1.0, 0.1)
SEEDS = 3
STEPS = 300


class MLP(PyroModule):
    """d -> h -> h -> 1 ReLU network with a latent noise, minibatches drawn by the plate."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.l1 = PyroModule[nn.Linear](d, h)
        self.l2 = PyroModule[nn.Linear](h, h)
        self.l3 = PyroModule[nn.Linear](h, 1)
        for layer, fan_in in ((self.l1, d), (self.l2, h), (self.l3, h)):
            layer.weight = PyroSample(
                dist.Normal(0.0, fan_in**-0.5).expand(layer.weight.shape).to_event(2)
            )
            layer.bias = PyroSample(dist.Normal(0.0, 1.0).expand(layer.bias.shape).to_event(1))

    def mean(self, X: torch.Tensor) -> torch.Tensor:
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(X))))).squeeze(-1)

    def forward(self, X: torch.Tensor, y: torch.Tensor) -> None:
        f = self.mean(X)
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("data", X.shape[0], subsample_size=128) as i:
            pyro.sample("y", dist.Normal(f[..., i], sigma), obs=y[i])


def data(n: int = 2000, d: int = 8):
    """((X, y) train, (X, y) test), the target standardized."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(n + 1000, d, generator=gen)
    w = torch.randn(d, 1, generator=gen)
    y = torch.sin(X @ w).squeeze(-1) + 0.3 * X[:, 0] * X[:, 1]
    y = y + 0.1 * torch.randn(n + 1000, generator=gen)
    y = (y - y.mean()) / y.std()
    return (X[:n], y[:n]), (X[n:], y[n:])


def fit_rmse(hess_init, seed: int, steps: int = STEPS, hidden: int = 48) -> float:
    """Test RMSE of IVON's fit (defaults but ``hess_init``) from one seed."""
    (X, y), (X_test, y_test) = data()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    net = MLP(X.shape[1], hidden)
    guide = AutoNormal(net, init_loc_fn=init_to_sample)
    blr = pb.BLR(net, guide, pb.IVON(hess_init=hess_init))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            blr.step(X, y)
    preds = []
    with torch.no_grad():
        for _ in range(16):
            trace = pyro.poutine.trace(guide).get_trace(X, y)
            values = {k: v["value"] for k, v in trace.nodes.items() if v["type"] == "sample"}
            preds.append(pyro.poutine.condition(net.mean, values)(X_test))
    return float((torch.stack(preds).mean(0) - y_test).square().mean().sqrt())


def main() -> None:
    print("| hess_init | " + " | ".join(f"seed {s}" for s in range(SEEDS)) + " |")
    print("|---|" + "---|" * SEEDS)
    for start in STARTS:
        cells = [f"{fit_rmse(start, seed):.3f}" for seed in range(SEEDS)]
        print(f"| {start!r} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
