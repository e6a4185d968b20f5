"""Neal's funnel and a banana: Gaussian guides against normalizing flows.

Two 2-D targets whose shape no Gaussian follows. Side by side: AutoNormal and
AutoMultivariateNormal trained by SVI + Adam, a full-covariance Gaussian fitted by the BLR, and
``pb.AutoFlow`` trained cold (its default, two neural autoregressive layers) and warm-started from
the BLR fit (two IAF layers, which start at the identity); Pyro's own ``AutoNormalizingFlow`` with
the cold flow's transforms gives the fit and time per step to compare against, and
a four-component ``pb.AutoMixture`` fitted by the BLR's mixture rule joins them. For each fit:
the ELBO (log Z = 0 for both targets, so -ELBO is the KL to the target), Pareto k̂ and the time
per step, and a plot of its draws over the target's density contours.

Run: ``python examples/funnel_and_banana.py`` (writes examples/results/funnel_and_banana.md and
docs/assets/funnel_and_banana.png; ``--smoke`` is quick). Fourteen fits of up to 2000 steps and
their 10000-draw ELBOs and k̂: a few minutes on 2 CPU cores, with a progress bar over the fits.
"""

from __future__ import annotations

import functools
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import iterated, neural_autoregressive
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)
from tqdm.auto import tqdm

import pyro_blr as pb

try:  # imported as examples.funnel_and_banana (by the tests and benchmarks)
    from examples._report import markdown_table, pyplot, report, save_figure, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/funnel_and_banana.py
    from _report import markdown_table, pyplot, report, save_figure, smoke_flag


def funnel() -> None:
    """Neal's funnel: v ~ N(0, 3), x ~ N(0, exp(v / 2))."""
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    pyro.sample("x", dist.Normal(0.0, (v / 2).exp()))


def banana() -> None:
    """x1 ~ N(0, 2), x2 ~ N(x1^2 / 4 - 1, 0.5)."""
    x1 = pyro.sample("x1", dist.Normal(0.0, 2.0))
    pyro.sample("x2", dist.Normal(0.25 * x1**2 - 1.0, 0.5))


def log_density(target, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if target is funnel:
        return dist.Normal(0.0, 3.0).log_prob(a) + dist.Normal(0.0, (a / 2).exp()).log_prob(b)
    return dist.Normal(0.0, 2.0).log_prob(a) + dist.Normal(0.25 * a**2 - 1.0, 0.5).log_prob(b)


def svi_fit(model, guide, num_steps: int) -> float:
    """Seconds per step of SVI + ClippedAdam (learning rate decayed tenfold)."""
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.1 ** (1 / num_steps)})
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=8, vectorize_particles=True))
    start = time.perf_counter()
    for _ in range(num_steps):
        svi.step()
    return (time.perf_counter() - start) / num_steps


def fits(model, num_steps: int):
    """Fit every guide for one target, yielding (name, guide, seconds per step) as each is done.

    Two guides of one class share Pyro parameter names, so each is scored before the next. Each
    fit starts from its own seed, so a row does not move with the draws taken before it.
    """
    pyro.clear_param_store()
    for seed, (name, make) in enumerate(
        [
            ("AutoNormal + Adam", AutoNormal),
            ("AutoMultivariateNormal + Adam", AutoMultivariateNormal),
            ("AutoFlow cold (default) + Adam", pb.AutoFlow),
            (
                "Pyro AutoNormalizingFlow (2 NAF) + Adam",
                lambda m: AutoNormalizingFlow(
                    m, functools.partial(iterated, 2, neural_autoregressive)
                ),
            ),
        ]
    ):
        pyro.set_rng_seed(seed)
        guide = make(model)
        yield name, guide, svi_fit(model, guide, num_steps)
    pyro.clear_param_store()
    pyro.set_rng_seed(4)
    gaussian = AutoMultivariateNormal(model)
    blr = pb.BLR(model, gaussian, pb.VON(lr=lambda t: 0.5 / (1 + t / 20), mc_samples=8))
    fit = blr.fit(num_steps=max(20, num_steps // 10), progress=False)
    yield "BLR (von, full)", gaussian, fit.seconds / len(fit.losses)
    pyro.set_rng_seed(5)
    warm = pb.AutoFlow(model, flow="iaf", num_flows=2, base=gaussian)
    yield "AutoFlow warm (2 IAF) from BLR + Adam", warm, svi_fit(model, warm, num_steps // 2)
    pyro.clear_param_store()
    pyro.set_rng_seed(6)
    mixture = pb.AutoMixture(model, num_components=4)
    blr = pb.BLR(model, mixture, pb.MixtureRule(lr=lambda t: 0.3 / (1 + t / 50), mc_samples=8))
    fit = blr.fit(num_steps=max(20, num_steps // 5), progress=False)
    yield "AutoMixture (K=4) + BLR", mixture, fit.seconds / len(fit.losses)


def main(smoke: bool = False) -> dict:
    pyro.set_rng_seed(0)
    num_steps, particles = (50, 500) if smoke else (2000, 10000)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True)
    table, draws = {}, {}
    bar = tqdm(total=14, desc="funnel and banana (fits)", disable=smoke)
    for target in (funnel, banana):
        for row, (name, guide, seconds) in enumerate(fits(target, num_steps)):
            bar.update()
            pyro.set_rng_seed(100 + row)  # the scores' draws, apart from the fits' own
            value = -elbo.loss(target, guide)
            khat = pb.psis_diagnostic(target, guide, num_samples=particles).khat
            table[target.__name__, name] = (value, khat, 1000 * seconds)
            with torch.no_grad():
                draws[target.__name__, name] = pyro.infer.Predictive(
                    target, guide=guide, num_samples=500
                )()
    bar.close()
    lines = markdown_table(
        ["target", "guide", "ELBO (log Z = 0)", "Pareto k̂", "ms per step"],
        [
            (target, name, f"{value:.3f}", f"{khat:.2f}", f"{ms:.2f}")
            for (target, name), (value, khat, ms) in table.items()
        ],
    )
    report(lines, "funnel_and_banana", smoke)
    if not smoke:
        _plot(draws)
    return table


def _plot(draws: dict) -> None:
    plt = pyplot()
    names = list(dict.fromkeys(name for _, name in draws))
    fig, axes = plt.subplots(2, len(names), figsize=(3 * len(names), 6), squeeze=False)
    for row, target in enumerate((funnel, banana)):
        a = torch.linspace(-7, 7, 200) if target is funnel else torch.linspace(-6, 6, 200)
        b = torch.linspace(-8, 8, 200) if target is funnel else torch.linspace(-3, 9, 200)
        grid_a, grid_b = torch.meshgrid(a, b, indexing="ij")
        density = log_density(target, grid_a, grid_b).exp()
        for col, name in enumerate(names):
            ax = axes[row, col]
            ax.contour(grid_a, grid_b, density, levels=8, colors="grey", linewidths=0.6)
            sample = draws[target.__name__, name]
            keys = ("v", "x") if target is funnel else ("x1", "x2")
            ax.scatter(sample[keys[0]].flatten(), sample[keys[1]].flatten(), s=2, alpha=0.4)
            ax.set_xlim(a[0], a[-1])
            ax.set_ylim(b[0], b[-1])
            if row == 0:
                ax.set_title(name, fontsize=8)
    fig.tight_layout()
    save_figure(fig, "funnel_and_banana", dpi=100)


if __name__ == "__main__":
    main(smoke_flag(__doc__, "a few steps and draws"))
