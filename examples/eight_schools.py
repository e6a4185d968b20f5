"""Eight schools (non-centered): variational fits judged against the posteriordb reference.

The classic hierarchical model, written as in posteriordb. Four fits: Pyro's NUTS, AutoNormal
trained by SVI + Adam, a full-covariance Gaussian fitted by the BLR, and that BLR fit corrected by
Pareto-smoothed importance resampling (``to_inference_data(psis=True)``). For each: the worst
error of a posterior mean in reference standard deviations, the range of sd ratios, Pareto k̂
and the wall time. The funnel between ``tau`` and the school effects is what a Gaussian misses;
k̂ says by how much, and PSIS corrects part of it.

Run: ``python examples/eight_schools.py`` (writes examples/results/eight_schools.md and
docs/assets/eight_schools.png; ``--smoke`` is quick). Each method, and each scoring, starts from
its own seed, so a rerun gives the committed table but for the seconds. NUTS and 5000 Adam steps
take most of the time: about 3.5 minutes measured on a shared 2-core machine (the table's
seconds), under a minute on an idle one; a progress bar runs for each method.
"""

from __future__ import annotations

import inspect
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from tqdm.auto import tqdm

import pyro_blr as pb
from pyro_blr.diagnostics.arviz_compat import from_dict, import_arviz

try:  # imported as examples.eight_schools (by the tests and benchmarks)
    from examples._report import ASSETS, markdown_table, pyplot, report, save_figure, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/eight_schools.py
    from _report import ASSETS, markdown_table, pyplot, report, save_figure, smoke_flag

az = import_arviz()  # 0.x or 1.x

DATA = Path(__file__).resolve().parent / "data" / "eight_schools"
PARAMETERS = ["mu", "tau"] + [f"theta[{j}]" for j in range(1, 9)]


def load() -> tuple[torch.Tensor, torch.Tensor, dict]:
    data = json.loads((DATA / "data.json").read_text())
    reference = json.loads((DATA / "reference_summary.json").read_text())
    y = torch.tensor(data["y"], dtype=torch.float64)
    return torch.tensor(data["sigma"], dtype=torch.float64), y, reference


def model(sigma: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """mu ~ N(0, 5), tau ~ HalfCauchy(5), theta = mu + tau * theta_trans, y ~ N(theta, sigma)."""
    mu = pyro.sample("mu", dist.Normal(sigma.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(sigma.new_tensor(5.0)))
    with pyro.plate("school", len(sigma)):
        theta_trans = pyro.sample("theta_trans", dist.Normal(sigma.new_zeros(()), 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_trans)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def flat(samples: dict) -> np.ndarray:
    """(draws, 10) array in PARAMETERS order from mu, tau, theta draws."""
    theta = np.asarray(samples["theta"]).reshape(-1, 8)
    mu, tau = (np.asarray(samples[k]).reshape(-1, 1) for k in ("mu", "tau"))
    return np.concatenate([mu, tau, theta], 1)


def score(draws: np.ndarray, reference: dict) -> tuple[float, float, float]:
    mean = np.array([reference[p]["mean"] for p in PARAMETERS])
    sd = np.array([reference[p]["sd"] for p in PARAMETERS])
    ratio = draws.std(0) / sd
    return float((abs(draws.mean(0) - mean) / sd).max()), float(ratio.min()), float(ratio.max())


def main(smoke: bool = False) -> dict[str, tuple]:
    pyro.set_rng_seed(0)
    sigma, y, reference = load()
    num_draws = 200 if smoke else 4000
    rows, idatas = {}, {}

    start = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_samples=50 if smoke else 1000, warmup_steps=50 if smoke else 1000,
                disable_progbar=smoke)  # fmt: skip
    mcmc.run(sigma, y)
    seconds = time.perf_counter() - start
    samples = mcmc.get_samples()
    samples["theta"] = samples["mu"][:, None] + samples["tau"][:, None] * samples["theta_trans"]
    rows["NUTS (Pyro)"] = (*score(flat(samples), reference), float("nan"), seconds)
    posterior = {k: v[None].numpy() for k, v in samples.items()}
    nuts = from_dict({"posterior": posterior}, {}, {}, {"inference_library": "pyro"})
    idatas["NUTS (Pyro)"] = nuts

    pyro.clear_param_store()
    pyro.set_rng_seed(1)  # each method from its own seed: a row keeps its draws
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    start = time.perf_counter()
    for _ in tqdm(range(100 if smoke else 5000), "SVI + Adam", disable=smoke):
        svi.step(sigma, y)
    seconds = time.perf_counter() - start
    fits = {"AutoNormal + Adam": (guide, seconds, False)}

    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    guide = AutoMultivariateNormal(model)
    blr = pb.BLR(model, guide, pb.VON(lr=lambda t: 0.5 / (1 + t / 20), mc_samples=8))
    seconds = blr.fit(sigma, y, num_steps=20 if smoke else 300, progress=not smoke).seconds
    fits["BLR (von, full)"] = (guide, seconds, False)
    fits["BLR + PSIS"] = (guide, seconds, True)

    khats = {}  # one k-hat per guide, from 10000 draws (k-hat of a heavy tail is noisy)
    for row, (name, (guide, seconds, psis)) in enumerate(fits.items()):
        pyro.set_rng_seed(100 + row)
        start = time.perf_counter()
        idata = pb.to_inference_data(model, guide, sigma, y, num_samples=num_draws, psis=psis)
        extra = time.perf_counter() - start if psis else 0.0
        if id(guide) not in khats:
            khats[id(guide)] = pb.psis_diagnostic(
                model, guide, sigma, y, num_samples=1000 if smoke else 10000
            ).khat
        khat = khats[id(guide)]
        draws = flat({k: idata.posterior[k].values for k in ("mu", "tau", "theta")})
        rows[name] = (*score(draws, reference), khat, seconds + extra)
        idatas[name] = idata

    table = []
    for name, (error, low, high, khat, seconds) in rows.items():
        shown = "-" if np.isnan(khat) else f"{khat:.2f}"
        table.append((name, f"{error:.2f}", f"{low:.2f} - {high:.2f}", shown, f"{seconds:.1f}"))
    lines = [
        f"Eight schools (non-centered) against the posteriordb reference; {num_draws} draws per "
        "variational fit.",
        "",
        *markdown_table(
            ["method", "worst mean error (ref. sd)", "sd ratio", "Pareto k̂", "seconds"], table
        ),
    ]
    report(lines, "eight_schools", smoke)
    if not smoke:
        _plot(idatas)
    return rows


def _plot(idatas: dict) -> None:
    pyplot()  # the Agg backend, before ArviZ draws
    names = ["mu", "tau", "theta"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "model_names" in inspect.signature(az.plot_forest).parameters:  # ArviZ 0.x
            axes = az.plot_forest(
                list(idatas.values()), model_names=list(idatas), var_names=names,
                combined=True, figsize=(7, 6),
            )  # fmt: skip
            save_figure(axes[0].figure, "eight_schools", dpi=110, bbox_inches="tight")
            return
        # ArviZ 1.x (arviz-plots): a dict of models, a PlotCollection that saves itself
        plots = az.plot_forest(idatas, var_names=names, combined=True, backend="matplotlib")
    plots.savefig(ASSETS / "eight_schools.png", dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main(smoke_flag(__doc__, "a few steps and draws"))
