"""Natural-gradient stochastic VI for local latents against SVI + Adam on a mixed model.

A random-intercept model with G groups, ``y[g, j] ~ N(mu + b_g, 0.5^2)``, ``b_g ~ N(0, 1)``,
``mu ~ N(0, 25)``, fitted on minibatches of groups by AutoNormal two ways, in the same process:
``pb.BLR(rule="newton")`` (per-datum natural-gradient steps on the drawn rows, the global ones
on the N/B-scaled estimate) and ``SVI(Trace_ELBO, Adam)``. The model is Gaussian, so the
full-data ELBO of a mean-field Gaussian is closed-form (log p at the means minus half the trace
of the Hessian times the variances, plus the entropy), and so is its optimum (the exact
posterior means, variances one over the Hessian's diagonal). Each fit is scored every few steps
(outside the timing); the table gives the wall-clock seconds each needs to come within 1 nat of
the mean-field optimum, and the ELBO it ends at.

Run: ``python -m benchmarks.local_latents`` (``--smoke`` for a toy size).
"""

from __future__ import annotations

import math
import time

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import Tensor

import pyro_blr as pb
from benchmarks._report import machine, markdown_table, parser, report

PER_GROUP, NOISE = 4, 0.5


def data(groups: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    effects = torch.randn(groups, generator=gen, dtype=torch.float64)
    noise = NOISE * torch.randn(groups, PER_GROUP, generator=gen, dtype=torch.float64)
    return 1.0 + effects[:, None] + noise


def model(y: torch.Tensor, subsample_size: int | None = None) -> None:
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 5.0))
    with pyro.plate("groups", y.shape[0], subsample_size=subsample_size) as idx:
        b = pyro.sample("b", dist.Normal(y.new_zeros(()), 1.0))
        with pyro.plate("obs", PER_GROUP):
            pyro.sample("y", dist.Normal(mu + b, NOISE), obs=y[idx].T)


def curvature(y: torch.Tensor) -> tuple[float, float]:
    """The Hessian's diagonal of -log p: for mu, and for each b_g."""
    return 1 / 25 + y.numel() / NOISE**2, 1.0 + PER_GROUP / NOISE**2


def elbo(y: torch.Tensor, mu: Tensor, b: Tensor, var_mu: Tensor, var_b: Tensor) -> float:
    """The exact ELBO of the mean-field Gaussian with these means and variances."""
    data = {"mu": mu, "b": b}
    trace = poutine.trace(poutine.condition(model, data=data)).get_trace(y)
    h_mu, h_b = curvature(y)
    expected = float(trace.log_prob_sum()) - 0.5 * (h_mu * var_mu + h_b * var_b.sum())
    entropy = 0.5 * (
        torch.log(2 * math.pi * math.e * var_mu) + torch.log(2 * math.pi * math.e * var_b).sum()
    )
    return float(expected + entropy)


def optimum(y: torch.Tensor) -> float:
    """The mean-field optimum's ELBO: exact posterior means, variances 1 / Hessian diagonal."""
    groups = y.shape[0]
    ones = torch.ones(PER_GROUP, dtype=y.dtype)
    cov_g = NOISE**2 * torch.eye(PER_GROUP, dtype=y.dtype) + torch.outer(ones, ones)
    prec_g = torch.linalg.inv(cov_g)  # each group given mu, with b_g integrated out
    a = groups * float(ones @ prec_g @ ones)
    mu = float((y @ prec_g @ ones).sum()) / (a + 1 / 25)
    shrink = (PER_GROUP / NOISE**2) / (1 + PER_GROUP / NOISE**2)
    b = shrink * (y.mean(1) - mu)
    h_mu, h_b = curvature(y)
    return elbo(y, y.new_tensor(mu), b, y.new_tensor(1 / h_mu), torch.full_like(b, 1 / h_b))


def guide_elbo(guide: AutoNormal, y: torch.Tensor) -> float:
    with torch.no_grad():
        return elbo(
            y,
            guide.locs.mu,
            guide.locs.b,
            guide.scales.mu.square(),
            guide.scales.b.square(),
        )


def run(method: str, y, batch: int, steps: int, every: int, target: float):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    if method == "BLR newton":
        blr = pb.BLR(model, guide, pb.Newton(lr=0.5))
        step = lambda: blr.step(y, subsample_size=batch)  # noqa: E731
    else:
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
        step = lambda: svi.step(y, subsample_size=batch)  # noqa: E731
    seconds, reached, value = 0.0, None, float("-inf")
    for t in range(1, steps + 1):
        start = time.perf_counter()
        step()
        seconds += time.perf_counter() - start
        if t % every == 0:
            value = guide_elbo(guide, y)
            if reached is None and value > target - 1.0:
                reached = seconds
    return {"method": method, "steps": steps, "seconds": seconds, "final ELBO": value,
            "s to within 1 nat": reached}  # fmt: skip


def main(smoke: bool = False) -> list[dict]:
    groups, batch, steps, every = (200, 50, 60, 20) if smoke else (10_000, 500, 2000, 50)
    y = data(groups)
    target = optimum(y)
    rows = [run(m, y, batch, steps, every, target) for m in ("BLR newton", "SVI + Adam")]
    lines = [
        "# Local latents under subsampling",
        "",
        machine("local_latents", smoke)
        + f" {groups} groups x {PER_GROUP}, minibatches of {batch} groups; the mean-field "
        f"optimum's ELBO is {target:.1f}; the exact ELBO is scored every {every} steps (not "
        "timed). SVI + Adam: lr 0.05, one particle.",
        "",
        *markdown_table(
            ["method", "steps", "seconds", "final ELBO", "s to within 1 nat"],
            [
                [
                    r["method"],
                    r["steps"],
                    f"{r['seconds']:.1f}",
                    f"{r['final ELBO']:.1f}",
                    "-" if r["s to within 1 nat"] is None else f"{r['s to within 1 nat']:.1f}",
                ]
                for r in rows
            ],
        ),
    ]
    report(lines, "local_latents", smoke)
    return rows


if __name__ == "__main__":
    main(smoke=parser(__doc__, "200 groups, 60 steps; writes nothing").parse_args().smoke)
