"""Per-step cost of pb.RenyiELBO against Pyro's Trace_ELBO and RenyiELBO, same particles.

SVI + Adam on one model and guide, all objectives drawing the same number of vectorized
particles: the ratio of seconds per step says what the Rényi bound (and its handling of every α)
costs on top of the ELBO.

Run: ``python -m benchmarks.renyi_cost`` (writes benchmarks/results/renyi_cost.md);
``--smoke`` runs toy sizes.
"""

from __future__ import annotations

import argparse
import math
import platform

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from sklearn.datasets import load_diabetes

import pyro_blr as pb
from benchmarks import models
from benchmarks.blr_vs_adam import RESULTS, per_step_ms, standardize


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
    lines = [
        "# pb.RenyiELBO: cost per step",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, pyro {pyro.__version__}. Command: "
        f"`python -m benchmarks.renyi_cost{' --smoke' if smoke else ''}`. SVI + Adam, AutoNormal, "
        "full data, vectorized particles.",
        "",
        "| model | particles | Trace_ELBO (ms) | pyro RenyiELBO α=0.5 (ms) | pb.RenyiELBO α=0.5 "
        "(ms) | pb α=1 (ms) | pb α=−∞ (ms) | pb α=0.5 / Trace_ELBO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (model, args) in problems.items():
        for k in (1, 10) if smoke else (1, 10, 100):
            common = {"num_particles": k, "vectorize_particles": True, "max_plate_nesting": 1}
            base = step_ms(model, args, Trace_ELBO(**common), num_steps)
            theirs = step_ms(model, args, pyro.infer.RenyiELBO(0.5, **common), num_steps)
            ours = step_ms(model, args, pb.RenyiELBO(0.5, **common), num_steps)
            elbo = step_ms(model, args, pb.RenyiELBO(1.0, **common), num_steps)
            vr_max = step_ms(model, args, pb.RenyiELBO(-math.inf, **common), num_steps)
            lines.append(
                f"| {name} | {k} | {base:.2f} | {theirs:.2f} | {ours:.2f} | {elbo:.2f} | "
                f"{vr_max:.2f} | {ours / base:.2f} |"
            )
    report = "\n".join(lines)
    print(report)
    if not smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "renyi_cost.md").write_text(report + "\n")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, nothing written")
    main(parser.parse_args().smoke)
