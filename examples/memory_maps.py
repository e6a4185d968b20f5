"""Memory maps: which training examples does a BLR posterior depend on, without refitting?

Bayesian logistic regression on the breast-cancer data (569 examples, 30 standardized features
and an intercept), fitted with the Bayesian learning rule (``pb.VON()``, full covariance).
``pb.loo_sensitivity`` applies the memory-perturbation equation (Nickl et al. 2023) to the fit:
from the per-example gradients and Hessians at the mean it estimates, for every example, how far
the posterior mean would move if the example were left out, and its leave-one-out predictive
density. The memory map plots each example's prediction error against its prediction variance;
the examples the model "remembers" (large error and large variance) are the influential ones.
A handful of them are refitted without the example, and the estimated shifts are compared with
the refits; the leave-one-out estimate is compared with PSIS-LOO, with timings for each.

Run: ``python examples/memory_maps.py`` (writes examples/results/memory_maps.md and
docs/assets/memory_maps.png; ``--smoke`` is quick). The full run takes about 4 minutes on 2 CPU
cores (600 fit steps and 6 refits of 200 steps, measured on a shared machine), with a progress
bar per fit.
"""

from __future__ import annotations

import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal
from tqdm.auto import tqdm

import pyro_blr as pb
from pyro_blr.core import GaussianGuide, latent_layout
from pyro_blr.diagnostics import elpd_summary, import_arviz

try:  # imported as examples.memory_maps (by the tests)
    from examples._report import markdown_table, pyplot, report, save_figure, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/memory_maps.py
    from _report import markdown_table, pyplot, report, save_figure, smoke_flag

PRIOR = 1.0


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Standardized features with an intercept column, and 0/1 labels, in float64."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    X = torch.tensor(data.data, dtype=torch.float64)
    X = (X - X.mean(0)) / X.std(0)
    X = torch.cat([torch.ones(len(X), 1, dtype=X.dtype), X], -1)
    return X, torch.tensor(data.target, dtype=torch.float64)


def model(X: torch.Tensor, y: torch.Tensor) -> None:
    """Logistic regression, w ~ N(0, I)."""
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), PRIOR).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=(X * w).sum(-1)), obs=y)


def blr_fit(guide, X, y, num_steps: int, lr: float = 0.1):
    """BLR (von), and the average of the mean over the second half (Monte Carlo noise down)."""
    blr = pb.BLR(model, guide, pb.VON(lr=lr, mc_samples=8))
    locs = []
    for _ in tqdm(range(num_steps), f"BLR (von), lr {lr}", disable=num_steps < 100):
        blr.step(X, y)
        locs.append(guide.loc.detach().clone())
    return torch.stack(locs[num_steps // 2 :]).mean(0)


def main(smoke: bool = False, plot: bool | None = None) -> dict:
    pyro.set_rng_seed(0)
    X, y = load_data()
    num_steps, refit_steps, num_refits = (40, 10, 1) if smoke else (300, 200, 6)
    draws = 4 if smoke else 128
    guide = AutoMultivariateNormal(model)
    started = time.perf_counter()
    blr_fit(guide, X, y, num_steps, lr=0.2)
    blr_fit(guide, X, y, num_steps, lr=0.05)  # a smaller step for the noise near the optimum
    fit_seconds = time.perf_counter() - started
    loc, precision = GaussianGuide(guide, latent_layout(guide.prototype_trace)).read()

    started = time.perf_counter()
    loo = pb.loo_sensitivity(model, guide, X, y, predictive="quadratic")
    mpe_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sampled = pb.loo_sensitivity(model, guide, X, y, predictive="sample", num_samples=draws)
    sampled_seconds = time.perf_counter() - started
    az = import_arviz()
    started = time.perf_counter()
    idata = pb.to_inference_data(model, guide, X, y, num_samples=400 if smoke else 4000)
    psis = elpd_summary(az.loo(idata, pointwise=True))  # ArviZ 0.x or 1.x
    psis_seconds = time.perf_counter() - started

    # Refit without the most influential examples, from the full fit, by the same rule.
    top = loo.influence.argsort(descending=True)[:num_refits]
    refits, refit_seconds = {}, 0.0
    for i in top.tolist():
        keep = torch.arange(len(y)) != i
        pyro.clear_param_store()
        refit = AutoMultivariateNormal(model)
        refit(X[keep], y[keep])
        GaussianGuide(refit, latent_layout(refit.prototype_trace)).write(loc, precision)
        started = time.perf_counter()
        refits[i] = blr_fit(refit, X[keep], y[keep], refit_steps, lr=0.05) - loc
        refit_seconds += time.perf_counter() - started
    per_refit = refit_seconds / num_refits

    def metric(v: torch.Tensor) -> float:  # a shift in posterior standard deviations
        return float(v @ precision @ v) ** 0.5

    rows = []
    for i, shift in refits.items():
        estimate = loo.mean_shift[i]
        cosine = float(estimate @ precision @ shift) / (metric(estimate) * metric(shift))
        rows.append(
            (i, int(y[i]), f"{float(loo.prediction_error[i]):+.2f}",
             f"{float(loo.prediction_variance[i]):.3f}", f"{metric(estimate):.3f}",
             f"{metric(shift):.3f}", f"{metric(estimate - shift):.3f}", f"{cosine:.3f}")
        )  # fmt: skip
    header = ["example", "label", "error", "variance", "estimated shift", "refit shift",
              "difference", "cosine"]  # fmt: skip
    lines = ["Most influential examples: estimated vs refitted shift of the posterior mean",
             "(in posterior standard deviations, ||v||_S)", "",
             *markdown_table(header, rows), ""]  # fmt: skip
    num_data = len(y)
    costs = [
        ("memory perturbation (closed form)", f"{float(loo.elpd_loo):.2f}", f"{float(loo.se):.2f}",
         f"{mpe_seconds:.2f}"),
        (f"memory perturbation ({draws} draws per example)", f"{float(sampled.elpd_loo):.2f}",
         f"{float(sampled.se):.2f}", f"{sampled_seconds:.2f}"),
        (f"PSIS-LOO ({idata.posterior.sizes['draw']} draws, max k̂ "
         f"{float(psis.pareto_k.max()):.2f})", f"{psis.elpd:.2f}", f"{psis.se:.2f}",
         f"{psis_seconds:.2f}"),
        (f"exact LOO: {num_data} refits (estimated from {num_refits})", "-", "-",
         f"{per_refit * num_data:.0f}"),
    ]  # fmt: skip
    lines += [f"LOO estimates and their cost (fit: {fit_seconds:.1f} s)", "",
              *markdown_table(["method", "elpd_loo", "se", "seconds"], costs)]  # fmt: skip
    report(lines, "memory_maps", smoke)

    if plot if plot is not None else not smoke:
        plt = pyplot()
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
        order = loo.influence.argsort()
        variance = loo.prediction_variance.clamp(min=1e-4)  # confident examples at the edge
        points = left.scatter(
            variance[order], loo.prediction_error[order].abs(),
            c=loo.influence[order], cmap="viridis", s=12,
        )  # fmt: skip
        highlight = loo.influence.argsort(descending=True)[:10]
        left.scatter(
            variance[highlight], loo.prediction_error[highlight].abs(),
            facecolors="none", edgecolors="red", s=70, label="10 most influential",
        )  # fmt: skip
        left.set_xscale("log")
        left.set_xlabel("prediction variance tr(S⁻¹ H_i) (clipped at 1e-4)")
        left.set_ylabel("|prediction error| |σ(x_i·m) − y_i|")
        left.set_title("memory map")
        left.legend(loc="upper left")
        fig.colorbar(points, ax=left, label="influence ||m₋ᵢ − m||_S")
        estimated = torch.stack([loo.mean_shift[i] for i in refits]).flatten()
        refitted = torch.stack(list(refits.values())).flatten()
        right.scatter(refitted, estimated, s=12)
        bound = float(torch.cat([estimated, refitted]).abs().max()) * 1.1
        right.plot([-bound, bound], [-bound, bound], color="gray", lw=1)
        right.set_xlabel("refit shift of each coordinate")
        right.set_ylabel("estimated shift")
        right.set_title(f"{num_refits} most influential examples, {X.shape[1]} coordinates each")
        fig.tight_layout()
        print(f"wrote {save_figure(fig, 'memory_maps', dpi=110)}")
    return {
        "loo": loo,
        "sampled": sampled,
        "psis": psis,
        "refits": refits,
        "precision": precision,
        "seconds": {
            "mpe": mpe_seconds,
            "sampled": sampled_seconds,
            "psis": psis_seconds,
            "refit": per_refit,
        },
    }


if __name__ == "__main__":
    main(smoke_flag(__doc__, "fewer steps, draws and refits"))
