"""Per-step cost of pb.RenyiELBO against Pyro's Trace_ELBO and RenyiELBO, same particles.

SVI + Adam on one model and guide, all objectives drawing the same number of vectorized
particles: the ratio of seconds per step says what the Rényi bound (and its handling of every α)
costs on top of the ELBO.

Run: ``python -m benchmarks.renyi_cost`` (writes benchmarks/results/renyi_cost.md);
``--smoke`` runs toy sizes.
"""

from __future__ import annotations

import math

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from sklearn.datasets import load_diabetes

import pyro_blr as pb
from benchmarks import models
from benchmarks._report import machine, markdown_table, parser, report
from benchmarks.blr_vs_adam import per_step_ms, standardize


def step_ms(model, args, objective, num_steps):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}), objective)
    return per_step_ms(lambda: svi.step(*args), num_steps)


def main(smoke: bool = False) -> str:
    data = load_diabetes()
    X = standardize(torch.tensor(data.data, dtype=torch.float32))
    y = standardize(torch.tensor(data.target, dtype=torch.float32))
    problems = {
        "logistic regression (442 x 10)": (models.logistic_regression, (X, (y > 0).float())),
        "BNN, 50 tanh units (442 x 10)": (models.bnn, (X, y)),
    }
    num_steps = 10 if smoke else 200
    table = []
    for name, (model, args) in problems.items():
        for k in (1, 10) if smoke else (1, 10, 100):
            common = {"num_particles": k, "vectorize_particles": True, "max_plate_nesting": 1}
            base = step_ms(model, args, Trace_ELBO(**common), num_steps)
            theirs = step_ms(model, args, pyro.infer.RenyiELBO(0.5, **common), num_steps)
            ours = step_ms(model, args, pb.RenyiELBO(0.5, **common), num_steps)
            elbo = step_ms(model, args, pb.RenyiELBO(1.0, **common), num_steps)
            vr_max = step_ms(model, args, pb.RenyiELBO(-math.inf, **common), num_steps)
            times = (base, theirs, ours, elbo, vr_max, ours / base)
            table.append((name, k, *(f"{t:.2f}" for t in times)))
    header = [
        "model", "particles", "Trace_ELBO (ms)", "pyro RenyiELBO α=0.5 (ms)",
        "pb.RenyiELBO α=0.5 (ms)", "pb α=1 (ms)", "pb α=−∞ (ms)", "pb α=0.5 / Trace_ELBO",
    ]  # fmt: skip
    lines = [
        "# pb.RenyiELBO: cost per step",
        "",
        f"{machine('renyi_cost', smoke)} SVI + Adam, AutoNormal, full data, vectorized particles.",
        "",
        *markdown_table(header, table),
    ]
    return report(lines, "renyi_cost", smoke)


if __name__ == "__main__":
    main(parser(__doc__, "toy sizes, nothing written").parse_args().smoke)
