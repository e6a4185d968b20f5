"""Reference posteriors from posteriordb: every guide, objective and driver beside NUTS.

Posteriors: eight schools (non-centered), sblrc-blr (badly scaled linear regression) and wells
(logistic regression on an unscaled distance; posteriordb has no reference draws for it, so the
reference is Pyro NUTS, computed once and cached in ``benchmarks/results/wells_nuts.json``).
For each fit: the worst |mean error| in reference sds, the range of sd ratios, Pareto k̂ and the
wall time, from 10000 guide draws. Every SVI fit runs 5000 steps of ClippedAdam, learning rate
0.01 decayed by 0.9995 per step; the BLR runs 200 steps.

Run: ``python -m benchmarks.posteriordb`` (writes benchmarks/results/posteriordb.md and
docs/assets/posteriordb.png; needs ``../shared/posteriordb`` beside the checkout); ``--smoke``
runs toy sizes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_feasible

import pyro_blr as pb
from benchmarks import models
from benchmarks._report import (
    ASSETS,
    RESULTS,
    machine,
    markdown_table,
    parser,
    pyplot,
    report,
    save_figure,
)
from examples import eight_schools

ADAM = {"lr": 0.01, "lrd": 0.9995}  # ClippedAdam: learning rate 0.01, decayed by 0.9995 a step


def load_eight_schools():
    sigma, y, reference = eight_schools.load()
    names = eight_schools.PARAMETERS
    mean = torch.tensor([reference[n]["mean"] for n in names], dtype=torch.float64)
    sd = torch.tensor([reference[n]["sd"] for n in names], dtype=torch.float64)
    return (sigma, y), mean, sd


def nuts_reference(model, args, num_samples, cache):
    """Means and sds of Pyro NUTS draws, cached in a JSON file the benchmark writes."""
    if cache.exists():
        stored = json.loads(cache.read_text())
        return torch.tensor(stored["mean"]), torch.tensor(stored["sd"])
    mcmc = MCMC(
        NUTS(model), num_samples=num_samples, warmup_steps=num_samples, disable_progbar=True
    )
    mcmc.run(*args)
    draws = torch.cat(
        [v.reshape(num_samples, -1) for _, v in sorted(mcmc.get_samples().items())], -1
    )
    mean, sd = draws.mean(0).double(), draws.std(0).double()
    cache.write_text(
        json.dumps({"mean": mean.tolist(), "sd": sd.tolist(), "num_samples": num_samples})
    )
    return mean, sd


def nuts_draws(model, args, names, num_samples):
    """NUTS draws of the named sites (deterministic ones through Predictive), flattened."""
    mcmc = MCMC(
        NUTS(model), num_samples=num_samples, warmup_steps=num_samples, disable_progbar=True
    )
    mcmc.run(*args)
    predictive = pyro.infer.Predictive(
        model, posterior_samples=mcmc.get_samples(), return_sites=names
    )
    samples = predictive(*args)
    return torch.cat([samples[n].reshape(num_samples, -1) for n in names], -1).double()


def flat_draws(model, guide, args, names, num_samples):
    idata = pb.to_inference_data(model, guide, *args, num_samples=num_samples)
    columns = [torch.as_tensor(idata.posterior[n].values).reshape(num_samples, -1) for n in names]
    return torch.cat(columns, -1).double()


def fits(model, num_steps):
    """name -> a function fitting a fresh guide and returning it."""

    def svi(guide_class, objective):
        def run(args):
            guide = guide_class(model, init_loc_fn=init_to_feasible)
            engine = SVI(model, guide, pyro.optim.ClippedAdam(dict(ADAM)), objective)
            for _ in range(num_steps):
                engine.step(*args)
            return guide

        return run

    def blr(guide_class, rule, lr, **options):
        def run(args):
            guide = guide_class(model, init_loc_fn=init_to_feasible)
            driver = pb.BLR(model, guide, lr=lr, rule=rule, **options)
            driver.fit(*args, num_steps=200, progress=False)
            return guide

        return run

    return {
        "SVI + Adam, AutoNormal, Trace_ELBO": svi(AutoNormal, Trace_ELBO()),
        "SVI + Adam, AutoMultivariateNormal, Trace_ELBO": svi(AutoMultivariateNormal, Trace_ELBO()),
        "SVI + Adam, AutoMultivariateNormal, RenyiELBO(0.5, 8)": svi(
            AutoMultivariateNormal, pb.RenyiELBO(0.5, num_particles=8)
        ),
        "BLR ivon, AutoNormal": blr(AutoNormal, "ivon", 0.1, mc_samples=8),
        "BLR von, AutoMultivariateNormal": blr(
            AutoMultivariateNormal, "von", lambda t: min(1.0, 10 / (t + 1)), mc_samples=4
        ),
    }


def figure(errors: dict[str, dict[str, float]], folder: Path = ASSETS) -> Path:
    """Worst mean error (in reference sds) of every method on every posterior, log scale."""
    methods = list(dict.fromkeys(m for row in errors.values() for m in row))
    fig, ax = pyplot().subplots(figsize=(10, 0.45 * len(methods) + 1.4))
    height = 0.8 / len(errors)
    for i, (problem, row) in enumerate(errors.items()):
        rows = [j for j, m in enumerate(methods) if m in row]
        values = [row[methods[j]] for j in rows]
        ax.barh([j + i * height for j in rows], values, height, label=problem)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(methods))], methods)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("worst |mean error| in reference sds (lower is better)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, "posteriordb", dpi=110, folder=folder)


def main(smoke: bool = False, nuts_draws_wells: int | None = None) -> str:
    pyro.set_rng_seed(0)
    if not models.POSTERIORDB.exists():
        return f"skipped: {models.POSTERIORDB} not found"
    num_steps, num_draws, nuts_samples = (20, 200, 30) if smoke else (5000, 10000, 1000)
    wells_samples = nuts_draws_wells or nuts_samples
    problems = [
        ("eight schools", eight_schools.model, load_eight_schools(), ["mu", "tau", "theta"]),
        ("sblrc-blr", models.sblrc_blr, models.load_sblrc(), ["beta", "sigma"]),
    ]
    wells_args = models.load_wells()
    RESULTS.mkdir(exist_ok=True)
    cache = RESULTS / ("wells_nuts_smoke.json" if smoke else "wells_nuts.json")
    cached = cache.exists()
    start = time.perf_counter()
    wells_mean, wells_sd = nuts_reference(models.wells_dist, wells_args, wells_samples, cache)
    origin = (
        f"read from {cache.name}" if cached else f"{time.perf_counter() - start:.0f} s to compute"
    )
    problems.append(("wells", models.wells_dist, (wells_args, wells_mean, wells_sd), ["beta"]))
    table = []
    errors: dict[str, dict[str, float]] = {}
    for problem, model, (args, ref_mean, ref_sd), names in problems:
        errors[problem] = {}
        if problem != "wells":  # wells' reference is NUTS itself
            start = time.perf_counter()
            draws = nuts_draws(model, args, names, nuts_samples)
            seconds = time.perf_counter() - start
            error = float(((draws.mean(0) - ref_mean) / ref_sd).abs().max())
            ratio = draws.std(0) / ref_sd
            errors[problem]["NUTS (Pyro)"] = error
            spread = f"{float(ratio.min()):.3g} - {float(ratio.max()):.3g}"
            method = f"NUTS (Pyro), {nuts_samples} draws"
            table.append((problem, method, f"{error:.3g}", spread, "-", f"{seconds:.1f}"))
        for name, fit in fits(model, num_steps).items():
            pyro.clear_param_store()
            start = time.perf_counter()
            try:
                guide = fit(args)
                seconds = time.perf_counter() - start
                draws = flat_draws(model, guide, args, names, num_draws)
                error = float(((draws.mean(0) - ref_mean) / ref_sd).abs().max())
                ratio = draws.std(0) / ref_sd
                khat = pb.psis_diagnostic(model, guide, *args, num_samples=num_draws).khat
                if not math.isfinite(error):
                    raise FloatingPointError("non-finite posterior")
                errors[problem][name] = error
                spread = f"{float(ratio.min()):.3g} - {float(ratio.max()):.3g}"
                table.append(
                    (problem, name, f"{error:.3g}", spread, f"{khat:.2f}", f"{seconds:.1f}")
                )
            except (ValueError, FloatingPointError, RuntimeError) as e:
                reason = str(e).splitlines()[0][:60]
                table.append((problem, name, f"diverged ({reason})", "-", "-", "-"))
    header = ["posterior", "method", "worst mean error", "sd ratio", "Pareto k̂", "seconds"]
    lines = [
        "# Reference posteriors (posteriordb)",
        "",
        f"{machine('posteriordb', smoke)} Errors in reference sds; SVI runs {num_steps} steps "
        f"of ClippedAdam (learning rate {ADAM['lr']}, decayed by {ADAM['lrd']} a step), the BLR "
        f"200; statistics from {num_draws} draws. The wells reference is Pyro NUTS "
        f"({json.loads(cache.read_text())['num_samples']} draws; {origin}).",
        "",
        *markdown_table(header, table),
    ]
    text = report(lines, "posteriordb", smoke)
    if not smoke:
        figure(errors)
    return text


if __name__ == "__main__":
    command_line = parser(__doc__, "toy sizes")
    command_line.add_argument(
        "--nuts-draws-wells", type=int, default=None,
        help="NUTS draws (and warm-up steps) for the cached wells reference",
    )  # fmt: skip
    options = command_line.parse_args()
    main(options.smoke, options.nuts_draws_wells)
