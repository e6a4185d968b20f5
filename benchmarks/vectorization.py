"""What each way of evaluating particles costs: plate, torch.func.vmap and a loop.

The BLR evaluates the negative log joint of S particles with its gradient (and, for von and
newton, its Hessian) at every step. ``vectorize_particles="auto"`` takes the plate where the
model broadcasts, ``torch.func.vmap`` where it does not (``X @ w``, ``nn.Linear``) and a loop
where neither runs. This times the three on the same broadcasting regression (so all three
apply and agree), per call of ``pyro_blr.core.derivatives``, and reports each as a ratio to
the plate.

Run: ``python -m benchmarks.vectorization`` (``--smoke`` for a toy size).
"""

from __future__ import annotations

import time
from functools import partial

import pyro
import pyro.distributions as dist
import torch

from benchmarks._report import machine, markdown_table, parser, report
from pyro_blr.core import derivatives, latent_layout, neg_log_joint


def regression(num_data: int, dim: int):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(num_data, dim, generator=gen)
    y = X @ torch.randn(dim, generator=gen) + torch.randn(num_data, generator=gen)

    def model():
        w = pyro.sample("w", dist.Normal(X.new_zeros(dim), 1.0).to_event(1))
        with pyro.plate("data", num_data):
            pyro.sample("y", dist.Normal((X * w).sum(-1), 1.0), obs=y)

    return model


def evaluate(model, layout, theta, mode: str, hessian: bool) -> None:
    derivatives(lambda t: neg_log_joint(model, layout, t, vectorize=mode), theta, hessian=hessian)


def per_call(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main(smoke: bool = False) -> dict[tuple[str, bool], float]:
    num_data, dim, particles, repeats = (100, 5, 4, 3) if smoke else (2000, 20, 8, 20)
    model = regression(num_data, dim)
    layout = latent_layout(pyro.poutine.trace(model).get_trace())
    theta = torch.randn(particles, layout.dim, generator=torch.Generator().manual_seed(1))
    times, rows = {}, []
    for hessian in (False, True):
        for mode in ("plate", "vmap", "loop"):
            times[mode, hessian] = per_call(
                partial(evaluate, model, layout, theta, mode, hessian), repeats
            )
        for mode in ("plate", "vmap", "loop"):
            ms = times[mode, hessian]
            rows.append(
                ["gradient + Hessian" if hessian else "gradient", mode, f"{ms:.2f}",
                 f"{ms / times['plate', hessian]:.1f}x"]
            )  # fmt: skip
    lines = [
        "# Evaluating particles: plate, vmap, loop",
        "",
        machine("vectorization", smoke)
        + f" Regression with N = {num_data}, D = {dim}, S = {particles} particles; ms per call of "
        "`derivatives` (mean of "
        f"{repeats}).",
        "",
        *markdown_table(["derivatives", "particles by", "ms", "vs plate"], rows),
    ]
    report(lines, "vectorization", smoke)
    return times


if __name__ == "__main__":
    main(smoke=parser(__doc__, "a toy size; writes nothing").parse_args().smoke)
