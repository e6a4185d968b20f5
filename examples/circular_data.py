"""Angles with a von Mises guide: wind directions around the compass.

Ten directions cluster around a mean next to the ±π seam. ``pb.AutoExpFamily`` gives the mean
direction a von Mises posterior (with reparameterized samples), fitted by the BLR's
exponential-family rule; the exact posterior, by quadrature on a grid, is the reference.
AutoNormal is shown beside: its Gaussian lives on the real line, which works here only because
the von Mises likelihood is periodic (its draws must be wrapped to read them as angles); the von
Mises guide is the family of the circle and needs no wrapping.

Run: ``python examples/circular_data.py`` (writes examples/results/circular_data.md and
docs/assets/circular_data.png; ``--smoke`` is quick).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from tqdm.auto import tqdm

import pyro_blr as pb

try:  # imported as examples.circular_data (by the tests and benchmarks)
    from examples._report import markdown_table, pyplot, report, save_figure, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/circular_data.py
    from _report import markdown_table, pyplot, report, save_figure, smoke_flag

KAPPA = 4.0  # the observation concentration, known


def make_data(num: int = 10) -> torch.Tensor:
    """Directions around 3.1 rad (next to the seam at pi), wrapped to [-pi, pi)."""
    raw = torch.distributions.VonMises(torch.tensor(3.1), torch.tensor(KAPPA)).sample((num,))
    return torch.remainder(raw.double() + math.pi, 2 * math.pi) - math.pi


def model(angles: torch.Tensor) -> None:
    """mean direction ~ VonMises(0, 0.1) (nearly uniform), angles ~ VonMises(mean, 4)."""
    mean = pyro.sample("mean", dist.VonMises(angles.new_tensor(0.0), angles.new_tensor(0.1)))
    with pyro.plate("data", len(angles)):
        pyro.sample("angle", dist.VonMises(mean, angles.new_tensor(KAPPA)), obs=angles)


def exact_posterior(angles: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Posterior density of the mean direction on a grid over [-pi, pi) (conjugate: von Mises)."""
    log_post = 0.1 * torch.cos(grid) + KAPPA * torch.cos(grid[:, None] - angles).sum(-1)
    density = torch.exp(log_post - log_post.max())
    return density / torch.trapezoid(density, grid)


def circular_mean_error(draws: torch.Tensor, target: float) -> float:
    """Angular distance between the circular mean of draws and target."""
    mean = torch.atan2(torch.sin(draws).mean(), torch.cos(draws).mean())
    return float(torch.remainder(mean - target + math.pi, 2 * math.pi) - math.pi)


def main(smoke: bool = False) -> dict:
    pyro.set_rng_seed(0)
    angles = make_data()
    grid = torch.linspace(-math.pi, math.pi, 4001, dtype=torch.float64)
    density = exact_posterior(angles, grid)
    sin, cos = (density * torch.sin(grid)).sum(), (density * torch.cos(grid)).sum()
    exact_mean = float(torch.atan2(sin, cos))

    pyro.clear_param_store()
    guide = pb.AutoExpFamily(model)
    blr = pb.BLR(model, guide, pb.ExpFamilyRule(lr=lambda t: 1 / (t + 1), mc_samples=64))
    blr.fit(angles, num_steps=10 if smoke else 200, progress=not smoke)
    von_mises = guide.distributions(angles)["mean"]
    vm_draws = von_mises.sample((4000,))

    pyro.clear_param_store()
    pyro.set_rng_seed(1)  # each fit from its own seed: a row does not move with the other's draws
    normal = AutoNormal(model)
    svi = SVI(model, normal, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in tqdm(range(50 if smoke else 2000), "SVI + Adam", disable=smoke):
        svi.step(angles)
    normal_draws = pyro.infer.Predictive(model, guide=normal, num_samples=4000)(angles)["mean"]
    normal_draws = normal_draws.flatten().double()

    rows = {
        "AutoExpFamily (von Mises) + BLR": circular_mean_error(vm_draws, exact_mean),
        "AutoNormal + Adam": circular_mean_error(normal_draws, exact_mean),
    }
    lines = [
        f"Posterior mean direction: exact {exact_mean:.3f} rad (quadrature on a grid).",
        "",
        *markdown_table(
            ["guide", "error of the circular mean (rad)"],
            [(name, f"{error:+.3f}") for name, error in rows.items()],
        ),
    ]
    report(lines, "circular_data", smoke)
    if not smoke:
        _plot(grid, density, vm_draws, normal_draws)
    return rows


def _plot(grid, density, vm_draws, normal_draws) -> None:
    plt = pyplot()
    wrapped = torch.remainder(normal_draws + math.pi, 2 * math.pi) - math.pi
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(grid, density, color="black", label="exact posterior")
    ax.hist(vm_draws.numpy(), bins=120, range=(-math.pi, math.pi), density=True, alpha=0.5,
            label="von Mises guide (BLR)")  # fmt: skip
    ax.hist(wrapped.numpy(), bins=120, range=(-math.pi, math.pi), density=True, alpha=0.5,
            label="AutoNormal, wrapped")  # fmt: skip
    ax.set_xlabel("mean direction (rad)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, "circular_data", dpi=110)


if __name__ == "__main__":
    main(smoke_flag(__doc__, "a few steps"))
