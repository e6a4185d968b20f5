"""Your optimizer is a Bayesian learning rule: SGD, RMSprop and Adam as limits of the BLR.

Part 1 runs ``torch.optim.SGD`` (with momentum), ``RMSprop`` and ``Adam`` on a small tanh network's
negative log joint, side by side with ``pb.BLR`` driven by ``pb``-style rule objects
(``SGD``, ``RMSprop``, ``Adam`` from ``pyro_blr.blr.rules``) on the unchanged Pyro model: the
Gaussian family with a fixed covariance and the gradient at the mean (the delta method). After
100 steps the parameters agree to float64 round-off.

Part 2 switches the perturbation on: ``Adam(perturb=True)`` is Vadam (Khan et al., ICML 2018),
which draws the weights from the Gaussian its squared gradients imply. The same network, the same
step size and the same number of steps now end with a posterior: its predictive intervals cover
the held-out points inside the two clusters of training inputs and widen in the gap between them,
and its log predictive density beats the optimizer's point estimate inside the clusters and
beyond them (in the gap the wider intervals cost a little density). Beyond the data
its intervals do not widen (nor IVON's, shown for reference): a diagonal Gaussian on a small tanh
network is overconfident there, and the table says so.

Run: ``python examples/optimizer_is_blr.py`` (writes examples/results/optimizer_is_blr.md and
docs/assets/optimizer_is_blr.png; ``--smoke`` is quick). The full run takes about 2 minutes on
2 CPU cores (three fits of 2000 steps, measured on a shared machine).
"""

from __future__ import annotations

import math
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal, init_to_value
from tqdm.auto import tqdm

import pyro_blr as pb
from pyro_blr.blr.rules.adam import Adam
from pyro_blr.blr.rules.rmsprop import RMSprop
from pyro_blr.blr.rules.sgd import SGD

try:  # imported as examples.optimizer_is_blr (by the tests)
    from examples._report import markdown_table, pyplot, report, save_figure, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/optimizer_is_blr.py
    from _report import markdown_table, pyplot, report, save_figure, smoke_flag

D = torch.float64
HIDDEN, PRIOR, NOISE = 16, 1.0, 0.1


def truth(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(3 * x)


def load_data(seed: int = 0):
    """60 training inputs in two clusters, [-1.5, -0.3] and [0.3, 1.5]; held-out inputs inside
    the clusters, in the gap between them and beyond them, on [-2.5, 2.5]."""
    gen = torch.Generator().manual_seed(seed)
    left = -1.5 + 1.2 * torch.rand(30, generator=gen, dtype=D)
    right = 0.3 + 1.2 * torch.rand(30, generator=gen, dtype=D)
    x = torch.cat([left, right])
    y = truth(x) + NOISE * torch.randn(60, generator=gen, dtype=D)
    x_test = torch.linspace(-2.5, 2.5, 201, dtype=D)
    y_test = truth(x_test) + NOISE * torch.randn(201, generator=gen, dtype=D)
    return x[:, None], y, x_test[:, None], y_test


def network(theta: dict, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x @ theta["w1"] + theta["b1"]) @ theta["w2"] + theta["b2"]


def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """A one-hidden-layer tanh network, Normal(0, 1) weights, Normal(f(x), 0.1) targets."""
    zero = x.new_zeros(())
    theta = {
        "w1": pyro.sample("w1", dist.Normal(zero, PRIOR).expand([1, HIDDEN]).to_event(2)),
        "b1": pyro.sample("b1", dist.Normal(zero, PRIOR).expand([HIDDEN]).to_event(1)),
        "w2": pyro.sample("w2", dist.Normal(zero, PRIOR).expand([HIDDEN]).to_event(1)),
        "b2": pyro.sample("b2", dist.Normal(zero, PRIOR)),
    }
    f = pyro.deterministic("f", network(theta, x))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(f, NOISE), obs=y)


def start(seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "w1": torch.randn(1, HIDDEN, generator=gen, dtype=D),
        "b1": torch.randn(HIDDEN, generator=gen, dtype=D),
        "w2": torch.randn(HIDDEN, generator=gen, dtype=D) / 4,
        "b2": torch.zeros((), dtype=D),
    }


def fit_blr(rule, x, y, steps: int, progress: str | None = None):
    """``steps`` BLR steps from `start`; the guide and the seconds they took. A
    ``progress`` label shows a progress bar under that name."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=start()))
    blr = pb.BLR(model, guide, rule)
    began = time.perf_counter()
    for _ in tqdm(range(steps), progress, disable=progress is None):
        blr.step(x, y)
    return guide, time.perf_counter() - began


def fit_torch(make_optimizer, x, y, steps: int) -> dict:
    """``steps`` torch.optim steps on the same loss: the likelihood's negative log, the
    Normal(0, PRIOR) prior as the coupled weight_decay 1 / PRIOR**2."""
    theta = {k: v.clone().requires_grad_() for k, v in start().items()}
    optimizer = make_optimizer(list(theta.values()))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -dist.Normal(network(theta, x), NOISE).log_prob(y).sum()
        loss.backward()
        optimizer.step()
    return {k: v.detach() for k, v in theta.items()}


DECAY = 1 / PRIOR**2
PAIRS = {
    "SGD, momentum 0.9": (
        SGD(lr=2e-5, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=2e-5, momentum=0.9, weight_decay=DECAY),
    ),
    "RMSprop": (
        RMSprop(lr=1e-3),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, weight_decay=DECAY),
    ),
    "Adam": (
        Adam(lr=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=DECAY),
    ),
}


def side_by_side(x, y, steps: int = 100) -> dict:
    """For each optimizer: the largest difference between the BLR's and torch's parameters after
    ``steps`` steps, and how far they moved from the start."""
    out = {}
    for name, (rule, make_optimizer) in PAIRS.items():
        guide, _ = fit_blr(rule, x, y, steps)
        ours, theirs = guide.median(), fit_torch(make_optimizer, x, y, steps)
        out[name] = {
            "difference": max(float((ours[k] - v).abs().max()) for k, v in theirs.items()),
            "moved": max(float((v - start()[k]).abs().max()) for k, v in theirs.items()),
        }
    return out


def predictive(guide, x_test, num_samples: int) -> torch.Tensor:
    """Draws of the network at ``x_test`` under the guide, ``(num_samples, len(x_test))``."""
    draws = pyro.infer.Predictive(model, guide=guide, num_samples=num_samples, return_sites=["f"])
    return draws(x_test)["f"].reshape(num_samples, -1).detach()


def scores(draws: torch.Tensor, y_test: torch.Tensor) -> dict:
    """RMSE of the predictive mean, mean log predictive density (the Normal noise mixed over the
    draws), coverage of the central 90% predictive interval, and the predictive sd."""
    noise = dist.Normal(draws, NOISE)
    log_density = torch.logsumexp(noise.log_prob(y_test), 0) - math.log(len(draws))
    sd = (draws.var(0, unbiased=False) + NOISE**2).sqrt()
    lo, hi = draws.mean(0) - 1.645 * sd, draws.mean(0) + 1.645 * sd
    return {
        "rmse": float((draws.mean(0) - y_test).square().mean().sqrt()),
        "log_density": float(log_density.mean()),
        "coverage": float(((y_test > lo) & (y_test < hi)).to(D).mean()),
        "sd": float(sd.mean()),
    }


REGIONS = {
    "inside the clusters": lambda x: (x.abs() >= 0.3) & (x.abs() <= 1.5),
    "in the gap": lambda x: x.abs() < 0.3,
    "beyond the data": lambda x: x.abs() > 1.5,
}


def bayesian(
    x,
    y,
    x_test,
    y_test,
    steps: int,
    num_samples: int,
    reference: bool = True,
    progress: bool = False,
) -> dict:
    """Adam at the mean (the optimizer) and perturbed (Vadam), same lr and steps, scored on each
    held-out region; and the predictive draws for the figure."""
    fits = {}
    rules = {
        "Adam (optimizer)": Adam(lr=1e-2),
        "Vadam: Adam(perturb=True)": Adam(lr=1e-2, perturb=True),
        "IVON (for reference)": pb.IVON(lr=1e-2),
    }
    if not reference:
        del rules["IVON (for reference)"]
    for name, rule in rules.items():
        guide, seconds = fit_blr(rule, x, y, steps, progress=name if progress else None)
        if rule.option("perturb") is not False:
            draws = predictive(guide, x_test, num_samples)
        else:  # a point estimate: the network at the mean, no spread
            draws = network(guide.median(), x_test).detach()[None]
        fits[name] = {
            "draws": draws,
            "seconds": seconds,
            "regions": {
                r: scores(draws[:, m(x_test[:, 0])], y_test[m(x_test[:, 0])])
                for r, m in REGIONS.items()
            },
        }
    return fits


def main(smoke: bool = False, plot: bool | None = None) -> dict:
    x, y, x_test, y_test = load_data()
    equal = side_by_side(x, y, steps=100)
    steps, num_samples = (200, 100) if smoke else (2000, 1000)
    fits = bayesian(x, y, x_test, y_test, steps, num_samples, reference=not smoke,
                    progress=not smoke)  # fmt: skip

    lines = [
        "**Part 1: the same 100 steps.** Largest difference between the parameters of "
        "`pb.BLR(model, guide, rule)` and of `torch.optim` on the same loss (float64), and how "
        "far the parameters moved from the start:",
        "",
        *markdown_table(
            ["optimizer", "largest difference, BLR vs torch.optim", "largest move from the start"],
            [(k, f"{v['difference']:.1e}", f"{v['moved']:.2f}") for k, v in equal.items()],
        ),
        "",
        f"**Part 2: what the posterior adds.** Adam, Vadam and IVON, lr 0.01, {steps} steps "
        f"each; 201 held-out points on [-2.5, 2.5] (Vadam and IVON: {num_samples} draws from "
        "the posterior; Adam: its point estimate with the known noise sd 0.1):",
        "",
        *markdown_table(
            ["fit", "region", "RMSE", "mean log density", "90% coverage", "predictive sd"],
            [
                (
                    name,
                    region,
                    f"{s['rmse']:.3f}",
                    f"{s['log_density']:.2f}",
                    f"{s['coverage']:.2f}",
                    f"{s['sd']:.3f}",
                )
                for name, fit in fits.items()
                for region, s in fit["regions"].items()
            ],
        ),
        "",
        f"Seconds per fit ({steps} steps): "
        + ", ".join(f"{name} {fit['seconds']:.0f} s" for name, fit in fits.items())
        + " (2 shared CPU cores).",
    ]
    report(lines, "optimizer_is_blr", smoke)

    if plot if plot is not None else not smoke:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 3.6))
        grid = x_test[:, 0]
        ax.plot(grid, truth(grid), "k--", lw=1, label="sin(3x)")
        colors = ("tab:red", "tab:blue", "tab:green")
        for (name, fit), color in zip(fits.items(), colors, strict=True):
            draws = fit["draws"]
            mean, sd = draws.mean(0), (draws.var(0, unbiased=False) + NOISE**2).sqrt()
            ax.plot(grid, mean, color=color, label=name)
            ax.fill_between(grid, mean - 1.645 * sd, mean + 1.645 * sd, color=color, alpha=0.2)
        ax.plot(x[:, 0], y, "k.", ms=4, label="training data")
        ax.set_ylim(-3, 3)
        ax.legend(loc="lower left", fontsize=8)
        ax.set_title("90% predictive intervals: the optimizer and its Bayesian version")
        fig.tight_layout()
        print(f"wrote {save_figure(fig, 'optimizer_is_blr', dpi=110)}")
    return {"equal": equal, "fits": {k: v["regions"] for k, v in fits.items()}}


if __name__ == "__main__":
    main(smoke_flag(__doc__, "fewer steps and draws"))
