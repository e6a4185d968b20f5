"""A bimodal posterior: AutoNormal picks one mode, AutoMixture finds both.

Measurements of a squared quantity, y ~ N(theta^2, 0.5^2), cannot tell theta from -theta: the
posterior has two equal modes. AutoNormal trained by SVI + Adam settles on one of them;
``pb.AutoMixture`` with two components, fitted by the BLR's mixture rule, puts one component on
each with the right weights. The exact posterior (quadrature on a grid) and its log evidence are
the reference.

Run: ``python examples/multimodal_posterior.py`` (writes examples/results/multimodal_posterior.md
and docs/assets/multimodal_posterior.png; ``--smoke`` is quick).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from tqdm.auto import tqdm

import pyro_blr as pb

try:  # imported as examples.multimodal_posterior (by the tests and benchmarks)
    from examples._report import markdown_table, pyplot, report, save_figure, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/multimodal_posterior.py
    from _report import markdown_table, pyplot, report, save_figure, smoke_flag


def model(y: torch.Tensor) -> None:
    """theta ~ N(0, 2^2), y ~ N(theta^2, 0.5^2)."""
    theta = pyro.sample("theta", dist.Normal(y.new_tensor(0.0), 2.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(theta**2, 0.5), obs=y)


def exact(y: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Posterior density on the grid and the log evidence, by quadrature."""
    log_joint = dist.Normal(0.0, 2.0).log_prob(grid)
    log_joint = log_joint + dist.Normal(grid[:, None] ** 2, 0.5).log_prob(y).sum(-1)
    shift = log_joint.max()
    evidence = torch.trapezoid((log_joint - shift).exp(), grid)
    return (log_joint - shift).exp() / evidence, float(evidence.log() + shift)


def main(smoke: bool = False) -> dict:
    pyro.set_rng_seed(0)
    y = 4.0 + 0.5 * torch.randn(8, dtype=torch.float64)
    grid = torch.linspace(-5, 5, 4001, dtype=torch.float64)
    density, log_z = exact(y, grid)
    elbo = Trace_ELBO(num_particles=5000, vectorize_particles=True)

    pyro.clear_param_store()
    normal = AutoNormal(model, init_loc_fn=pyro.infer.autoguide.init_to_sample)
    svi = SVI(model, normal, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in tqdm(range(50 if smoke else 2000), "SVI + Adam", disable=smoke):
        svi.step(y)
    normal_draws = Predictive(model, guide=normal, num_samples=4000)(y)["theta"].flatten()
    rows = {"AutoNormal + Adam": (-elbo.loss(model, normal, y), normal_draws)}

    pyro.clear_param_store()
    mixture = pb.AutoMixture(model, num_components=2)
    blr = pb.BLR(model, mixture, pb.MixtureRule(lr=lambda t: 0.3 / (1 + t / 50), mc_samples=16))
    blr.fit(y, num_steps=30 if smoke else 300, progress=not smoke)
    mixture_draws = Predictive(model, guide=mixture, num_samples=4000)(y)["theta"].flatten()
    rows["AutoMixture (K=2) + BLR"] = (-elbo.loss(model, mixture, y), mixture_draws)

    exact_right = float(torch.trapezoid(density * (grid > 0), grid))
    lines = [
        f"Exact posterior: log evidence {log_z:.3f}, mass on the positive mode {exact_right:.3f}.",
        "",
        *markdown_table(
            ["guide", "ELBO", "mass on the positive mode"],
            [
                (name, f"{value:.3f}", f"{float((draws > 0).double().mean()):.3f}")
                for name, (value, draws) in rows.items()
            ],
        ),
    ]
    report(lines, "multimodal_posterior", smoke)
    if not smoke:
        _plot(grid, density, rows)
    return {name: value for name, (value, _) in rows.items()} | {"log_z": log_z}


def _plot(grid, density, rows) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(grid, density, color="black", label="exact posterior")
    for name, (_, draws) in rows.items():
        ax.hist(draws.numpy(), bins=120, range=(-5, 5), density=True, alpha=0.5, label=name)
    ax.set_xlabel("theta")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, "multimodal_posterior", dpi=110)


if __name__ == "__main__":
    main(smoke_flag(__doc__, "a few steps"))
