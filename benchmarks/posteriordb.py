"""Fourteen posteriordb posteriors: NUTS, SVI + Adam and the BLR with its defaults, judged against
the reference posteriors.

The posteriors are Pyro ports of posteriordb's Stan programs (:mod:`benchmarks.posteriordb_models`,
which reads the project's copy of the data and reference summaries; wells' reference is a
quadrature, posteriordb having none). Every method starts from the same point (the
posterior's explicit initial values, the unconstrained origin elsewhere). Per posterior:

* Pyro NUTS (dense mass matrix, as many warm-up steps as draws), timed;
* SVI + ClippedAdam (learning rate 0.01 decayed by 0.9995 a step), AutoNormal and
  AutoMultivariateNormal, 5000 steps;
* the BLR with its defaults: ``pb.BLR(model, AutoMultivariateNormal(model), lr=0.5,
  rule="von").fit(*data, num_steps=300)`` (``fit`` averages the second half of the iterates), and
  the same fit's draws resampled by PSIS (``pb.to_inference_data(..., psis=True)``);
* where the defaults miss the target, other pyro_blr methods: ``rule="von"`` with 16 particles,
  a smaller step (lr 0.1, 1000 steps), ``pb.AutoMixture`` (3 full-covariance components,
  ``rule="mixture"``) and ``pb.AutoFlow`` (IAF) warm-started from the BLR Gaussian and refined by
  SVI + Adam.

Each fit reports the worst |mean error| in reference sds, the range of sd ratios, Pareto k̂
(``pb.psis_diagnostic``) and wall-clock seconds; the target ("NUTS quality") is a worst mean
error of at most 0.1 reference sd and every sd ratio within 0.9-1.1. ``--sweep`` measures
alternatives to the BLR's default step size and particle count instead.

Run: ``python -m benchmarks.posteriordb`` (writes benchmarks/results/posteriordb.md and
docs/assets/posteriordb.png); ``python -m benchmarks.posteriordb --sweep`` (writes
benchmarks/results/posteriordb_defaults.md); ``python -m benchmarks.posteriordb
--defaults-only`` (the BLR's defaults alone, minutes where the full table takes much longer:
writes benchmarks/results/posteriordb_blr_defaults.md); ``--smoke`` runs three posteriors at toy
sizes.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from benchmarks._report import (
    ASSETS,
    machine,
    markdown_table,
    parser,
    pyplot,
    report,
    save_figure,
)
from benchmarks.posteriordb_models import POSTERIORS, Posterior, flatten, init_loc_fn, reference

ADAM = {"lr": 0.01, "lrd": 0.9995}  # ClippedAdam: learning rate 0.01, decayed by 0.9995 a step
MAX_ERROR, MIN_RATIO, MAX_RATIO = 0.1, 0.9, 1.1  # the target: NUTS quality
MAX_SECONDS = 5.0  # ... reached by the BLR's defaults in at most this long
BLR_DEFAULTS = "BLR defaults (von, lr 0.5, 300 steps)"
SMOKE_POSTERIORS = [
    "eight_schools-eight_schools_noncentered",
    "sblri-blr",
    "kilpisjarvi_mod-kilpisjarvi",
]
SWEEP_POSTERIORS = [
    "eight_schools-eight_schools_noncentered",
    "sblrc-blr",
    "kidiq-kidscore_momiq",
    "mesquite-logmesquite",
    "wells_data-wells_dist",
    "gp_pois_regr-gp_pois_regr",
]


@dataclass
class Sizes:
    svi_steps: int = 5000
    blr_steps: int = 300
    num_draws: int = 10000
    nuts_draws: int = 500
    flow_steps: int = 2000


SMOKE = Sizes(svi_steps=20, blr_steps=30, num_draws=200, nuts_draws=30, flow_steps=20)


@dataclass
class Score:
    error: float  # worst |mean error| in reference sds
    low: float  # smallest sd ratio
    high: float  # largest sd ratio
    khat: float  # Pareto k̂ (nan for NUTS)
    seconds: float

    @property
    def on_target(self) -> bool:
        return self.error <= MAX_ERROR and MIN_RATIO <= self.low and self.high <= MAX_RATIO

    def cells(self) -> tuple[str, str, str, str]:
        khat = "-" if math.isnan(self.khat) else f"{self.khat:.2f}"
        spread = f"{self.low:.3g} - {self.high:.3g}"
        return f"{self.error:.3g}", spread, khat, f"{self.seconds:.1f}"


def score(draws: torch.Tensor, ref_mean, ref_sd, khat: float, seconds: float) -> Score:
    error = float(((draws.mean(0) - ref_mean) / ref_sd).abs().max())
    ratio = draws.std(0) / ref_sd
    if not (math.isfinite(error) and torch.isfinite(ratio).all()):
        raise FloatingPointError("non-finite posterior draws")
    return Score(error, float(ratio.min()), float(ratio.max()), khat, seconds)


# ------------------------------------------------------------------------------ methods
def guide_draws(posterior: Posterior, guide, args, names, num_draws, psis=False):
    idata = pb.to_inference_data(posterior.model, guide, *args, num_samples=num_draws, psis=psis)
    samples = {k: torch.as_tensor(idata.posterior[k].values) for k in idata.posterior.data_vars}
    return flatten(samples, names, num_draws)


def run_nuts(posterior: Posterior, args, names, num_draws) -> tuple[torch.Tensor, float]:
    kernel = NUTS(posterior.model, init_strategy=init_loc_fn(posterior, args), full_mass=True)
    mcmc = MCMC(kernel, num_samples=num_draws, warmup_steps=num_draws, disable_progbar=True)
    start = time.perf_counter()
    mcmc.run(*args)
    seconds = time.perf_counter() - start
    samples = Predictive(posterior.model, posterior_samples=mcmc.get_samples())(*args)
    samples.update(mcmc.get_samples())
    return flatten(samples, names, num_draws), seconds


def svi_fit(guide_class, num_steps: int) -> Callable:
    def fit(posterior: Posterior, args):
        guide = guide_class(posterior.model, init_loc_fn=init_loc_fn(posterior, args))
        engine = SVI(posterior.model, guide, pyro.optim.ClippedAdam(dict(ADAM)), Trace_ELBO())
        for _ in range(num_steps):
            engine.step(*args)
        return guide

    return fit


def blr_fit(num_steps: int, lr: float = 0.5, mc_samples: int = 2) -> Callable:
    """The BLR's defaults (von, AutoMultivariateNormal, lr 0.5, 2 particles, averaged fit),
    or with another step size, particle count or step budget."""

    def fit(posterior: Posterior, args):
        model = posterior.model
        guide = AutoMultivariateNormal(model, init_loc_fn=init_loc_fn(posterior, args))
        driver = pb.BLR(model, guide, pb.VON(lr=lr, mc_samples=mc_samples))
        driver.fit(*args, num_steps=num_steps, progress=False)
        return guide

    return fit


def mixture_fit(num_steps: int) -> Callable:
    def fit(posterior: Posterior, args):
        model = posterior.model
        guide = pb.AutoMixture(
            model, num_components=3, component="full", init_loc_fn=init_loc_fn(posterior, args)
        )
        pb.BLR(model, guide, pb.MixtureRule(lr=0.5, mc_samples=4)).fit(
            *args, num_steps=num_steps, progress=False
        )
        return guide

    return fit


def flow_fit(blr_steps: int, svi_steps: int) -> Callable:
    """An IAF flow on top of the BLR's Gaussian (its warm start), refined by SVI + Adam."""

    def fit(posterior: Posterior, args):
        base = blr_fit(blr_steps)(posterior, args)
        guide = pb.AutoFlow(posterior.model, flow="iaf", num_flows=2, base=base)
        adam = pyro.optim.ClippedAdam({"lr": 0.005, "lrd": 0.999})
        engine = SVI(posterior.model, guide, adam, Trace_ELBO(num_particles=4))
        for _ in range(svi_steps):
            engine.step(*args)
        return guide

    return fit


def candidates(sizes: Sizes) -> dict[str, Callable]:
    """The pyro_blr methods tried where the BLR's defaults miss the target."""
    return {
        "BLR von, 16 particles, 300 steps": blr_fit(sizes.blr_steps, mc_samples=16),
        "BLR von, lr 0.1, 1000 steps": blr_fit(sizes.blr_steps * 10 // 3, lr=0.1, mc_samples=2),
        "AutoMixture (3 full) + BLR mixture, 300 steps": mixture_fit(sizes.blr_steps),
        f"AutoFlow (IAF) from the BLR + SVI, {sizes.flow_steps} steps": flow_fit(
            sizes.blr_steps, sizes.flow_steps
        ),
    }


def evaluate(posterior: Posterior, fit: Callable, args, names, ref, num_draws, psis=False):
    """Fit, time and score; with ``psis`` also score the PSIS-resampled draws of the same fit
    (the resampling's seconds added). Returns a list of (suffix, Score)."""
    ref_mean, ref_sd = ref
    pyro.clear_param_store()
    start = time.perf_counter()
    guide = fit(posterior, args)
    seconds = time.perf_counter() - start
    khat = pb.psis_diagnostic(posterior.model, guide, *args, num_samples=num_draws).khat
    draws = guide_draws(posterior, guide, args, names, num_draws)
    out = [("", score(draws, ref_mean, ref_sd, khat, seconds))]
    if psis:
        start = time.perf_counter()
        draws = guide_draws(posterior, guide, args, names, num_draws, psis=True)
        extra = time.perf_counter() - start
        out.append((" + PSIS", score(draws, ref_mean, ref_sd, khat, seconds + extra)))
    return out


def failure(e: Exception) -> str:
    return f"diverged ({type(e).__name__}: {str(e).splitlines()[0][:50]})"


# ------------------------------------------------------------------------------ the table
def benchmark(sizes: Sizes, names: list[str], defaults_only: bool = False):
    """Every method on every posterior (with ``defaults_only``, the BLR's defaults alone)."""
    rows, scores = [], {}
    for name in names:
        posterior = POSTERIORS[name]
        args = posterior.load()
        params, ref_mean, ref_sd = reference(name)
        scores[name] = {}

        def record(method, result, name=name):
            scores[name][method] = result
            if isinstance(result, Score):
                rows.append((name, method, *result.cells()))
            else:
                rows.append((name, method, result, "-", "-", "-"))

        if defaults_only:
            pyro.set_rng_seed(0)
            try:
                for suffix, result in evaluate(
                    posterior, blr_fit(sizes.blr_steps), args, params, (ref_mean, ref_sd),
                    sizes.num_draws, True,
                ):  # fmt: skip
                    record(BLR_DEFAULTS + suffix, result)
            except (ValueError, RuntimeError, FloatingPointError) as e:
                record(BLR_DEFAULTS, failure(e))
            continue
        pyro.set_rng_seed(0)
        try:
            draws, seconds = run_nuts(posterior, args, params, sizes.nuts_draws)
            record(
                f"NUTS (Pyro), {sizes.nuts_draws} draws",
                score(draws, ref_mean, ref_sd, math.nan, seconds),
            )
        except (ValueError, RuntimeError, FloatingPointError) as e:
            record(f"NUTS (Pyro), {sizes.nuts_draws} draws", failure(e))
        methods = {
            "SVI + Adam, AutoNormal": (svi_fit(AutoNormal, sizes.svi_steps), False),
            "SVI + Adam, AutoMultivariateNormal": (
                svi_fit(AutoMultivariateNormal, sizes.svi_steps),
                False,
            ),
            BLR_DEFAULTS: (blr_fit(sizes.blr_steps), True),
        }
        for method, (fit, psis) in methods.items():
            pyro.set_rng_seed(0)
            try:
                for suffix, result in evaluate(
                    posterior, fit, args, params, (ref_mean, ref_sd), sizes.num_draws, psis
                ):
                    record(method + suffix, result)
            except (ValueError, RuntimeError, FloatingPointError) as e:
                record(method, failure(e))
        default = scores[name][BLR_DEFAULTS]
        if isinstance(default, Score) and default.on_target:
            continue
        for method, fit in candidates(sizes).items():
            pyro.set_rng_seed(0)
            try:
                for suffix, result in evaluate(
                    posterior, fit, args, params, (ref_mean, ref_sd), sizes.num_draws, True
                ):
                    record(method + suffix, result)
            except (ValueError, RuntimeError, FloatingPointError, NotImplementedError) as e:
                record(method, failure(e))
    return rows, scores


def best_pyro_blr(results: dict) -> tuple[str, Score | None]:
    """The fastest pyro_blr method on target, else the one with the smallest worst error among
    those with sd ratios in range, else the smallest worst error."""
    fits = {
        m: s
        for m, s in results.items()
        if isinstance(s, Score) and not m.startswith(("NUTS", "SVI"))
    }
    if not fits:
        return "none", None
    on_target = {m: s for m, s in fits.items() if s.on_target}
    if on_target:
        return min(on_target.items(), key=lambda kv: kv[1].seconds)
    return min(fits.items(), key=lambda kv: kv[1].error)


def summary(scores: dict) -> tuple[list[str], list[tuple]]:
    rows, reached, misses = [], 0, []
    for name, results in scores.items():
        nuts = next((s for m, s in results.items() if m.startswith("NUTS")), None)
        default = results[BLR_DEFAULTS]
        if isinstance(default, Score):
            hit = default.on_target and default.seconds <= MAX_SECONDS
            reached += hit
            flag = "yes" if default.khat > 0.7 else "no"
            speed = f"{nuts.seconds / default.seconds:.0f}x" if isinstance(nuts, Score) else "-"
            verdict = "yes" if hit else "no"
        else:
            hit, flag, speed, verdict = False, "-", "-", "no (diverged)"
        if not hit:
            misses.append(name)
        method, best = best_pyro_blr(results)
        best_cell = (
            method
            if best is None
            else f"{method} ({best.error:.3g}, {best.low:.3g} - {best.high:.3g})"
        )
        if best is not None and not best.on_target:
            best_cell += ", target missed"
        rows.append((name, verdict, flag if not hit else "-", best_cell, speed))
    lines = [
        f"The BLR's defaults reach NUTS quality (worst mean error ≤ {MAX_ERROR} reference sd, "
        f"sd ratios within {MIN_RATIO}-{MAX_RATIO}, ≤ {MAX_SECONDS:g} s) on **{reached} of "
        f"{len(scores)}** posteriors." + (f" Missed: {', '.join(misses)}." if misses else ""),
        "",
    ]
    return lines, rows


def figure(scores: dict, folder=ASSETS):
    """Worst mean error of NUTS, the SVI fits and the BLR's defaults on every posterior."""
    methods = [
        ("NUTS (Pyro)", "NUTS"),
        ("SVI + Adam, AutoNormal", "SVI + Adam, AutoNormal"),
        ("SVI + Adam, AutoMultivariateNormal", "SVI + Adam, AutoMultivariateNormal"),
        ("BLR defaults", BLR_DEFAULTS),
        ("BLR defaults + PSIS", BLR_DEFAULTS + " + PSIS"),
    ]
    names = list(scores)
    fig, ax = pyplot().subplots(figsize=(10, 0.5 * len(names) + 1.6))
    height = 0.8 / len(methods)
    for i, (label, key) in enumerate(methods):
        values = []
        for name in names:
            s = next(
                (
                    v
                    for m, v in scores[name].items()
                    if m.startswith(key) and (key != BLR_DEFAULTS or m == key)
                ),
                None,
            )
            values.append(s.error if isinstance(s, Score) else math.nan)
        ax.barh([j + i * height for j in range(len(names))], values, height, label=label)
    ax.axvline(MAX_ERROR, color="black", linestyle="--", linewidth=1, label="target (0.1 sd)")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(names))], names)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("worst |mean error| in reference sds (lower is better; missing bar: diverged)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, "posteriordb", dpi=110, folder=folder)


def main(smoke: bool = False) -> str:
    sizes = SMOKE if smoke else Sizes()
    names = SMOKE_POSTERIORS if smoke else list(POSTERIORS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ announces its 1.0 refactor
        rows, scores = benchmark(sizes, names)
    lead, summary_rows = summary(scores)
    header = ["posterior", "method", "worst mean error", "sd ratio", "Pareto k̂", "seconds"]
    lines = [
        "# Reference posteriors (posteriordb)",
        "",
        f"{machine('posteriordb', smoke)} Errors in reference sds; NUTS draws "
        f"{sizes.nuts_draws} after as many warm-up steps (dense mass matrix); SVI runs "
        f"{sizes.svi_steps} steps of ClippedAdam (learning rate {ADAM['lr']}, decayed by "
        f"{ADAM['lrd']} a step); statistics and k̂ from {sizes.num_draws} draws of each guide. "
        "Other pyro_blr methods run only where the BLR's defaults miss the target.",
        "",
        *lead,
        *markdown_table(
            [
                "posterior",
                "BLR defaults on target",
                "k̂ > 0.7 flags the miss",
                "best pyro_blr method (worst error, sd ratios)",
                "NUTS s / BLR s",
            ],
            summary_rows,
        ),
        "",
        *markdown_table(header, rows),
    ]
    text = report(lines, "posteriordb", smoke)
    if not smoke:
        figure(scores)
    return text


def defaults_only(smoke: bool = False) -> str:
    """The BLR's defaults alone on every posterior, with the main table's seeds and criteria:
    a quick check of its headline (how many posteriors the defaults bring to NUTS quality)
    after a change of the package, without NUTS and SVI."""
    sizes = SMOKE if smoke else Sizes()
    names = SMOKE_POSTERIORS if smoke else list(POSTERIORS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        rows, scores = benchmark(sizes, names, defaults_only=True)
    accurate = [
        n
        for n, r in scores.items()
        if isinstance(r[BLR_DEFAULTS], Score) and r[BLR_DEFAULTS].on_target
    ]
    reached = [n for n in accurate if scores[n][BLR_DEFAULTS].seconds <= MAX_SECONDS]
    header = ["posterior", "method", "worst mean error", "sd ratio", "Pareto k̂", "seconds"]
    lines = [
        "# The BLR's defaults on the reference posteriors (posteriordb)",
        "",
        f"{machine('posteriordb', smoke).replace('`.', ' --defaults-only`.')} The BLR's "
        f"defaults alone ({BLR_DEFAULTS}; statistics and k̂ from {sizes.num_draws} draws), "
        "seeded as in the main table.",
        "",
        f"The defaults reach NUTS quality (worst mean error ≤ {MAX_ERROR} reference sd, sd "
        f"ratios within {MIN_RATIO}-{MAX_RATIO}, ≤ {MAX_SECONDS:g} s) on **{len(reached)} of "
        f"{len(scores)}** posteriors; its accuracy, the seconds aside (which a loaded machine "
        f"inflates), on **{len(accurate)} of {len(scores)}**"
        + (f" (missed: {', '.join(n for n in scores if n not in accurate)})." if accurate else "."),
        "",
        *markdown_table(header, rows),
    ]
    return report(lines, "posteriordb_blr_defaults", smoke)


# ------------------------------------------------------------------------------ the sweep
def sweep(smoke: bool = False, seeds: int = 2) -> str:
    """The BLR (von, AutoMultivariateNormal, 300 averaged steps) at lr 0.3 / 0.5 / 1.0 and 2 / 4
    / 8 particles on a few posteriors, several seeds each."""
    sizes = SMOKE if smoke else Sizes()
    names = SMOKE_POSTERIORS[:2] if smoke else SWEEP_POSTERIORS
    seeds = 1 if smoke else seeds
    settings = [(lr, s) for lr in (0.3, 0.5, 1.0) for s in (2, 4, 8)]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for lr, mc_samples in settings:
            hits, errors, seconds, diverged = 0, [], [], 0
            for name in names:
                posterior = POSTERIORS[name]
                args = posterior.load()
                params, ref_mean, ref_sd = reference(name)
                for seed in range(seeds):
                    pyro.set_rng_seed(seed)
                    pyro.clear_param_store()
                    try:
                        start = time.perf_counter()
                        guide = blr_fit(sizes.blr_steps, lr, mc_samples)(posterior, args)
                        elapsed = time.perf_counter() - start
                        draws = guide_draws(posterior, guide, args, params, sizes.num_draws // 2)
                        s = score(draws, ref_mean, ref_sd, math.nan, elapsed)
                    except (ValueError, RuntimeError, FloatingPointError):
                        diverged += 1
                        errors.append(math.inf)
                        continue
                    hits += s.on_target
                    errors.append(s.error)
                    seconds.append(elapsed)
            runs = len(names) * seeds
            rows.append(
                (
                    f"{lr:g}",
                    mc_samples,
                    f"{hits} / {runs}",
                    diverged,
                    f"{statistics.median(errors):.3g}",
                    f"{statistics.median(seconds):.2f}" if seconds else "-",
                )
            )
    lines = [
        "# The BLR's default step size and particle count (posteriordb)",
        "",
        f"{machine('posteriordb', smoke).replace('`.', ' --sweep`.')} The BLR (von, "
        f"AutoMultivariateNormal, {sizes.blr_steps} steps, the second half averaged) on "
        f"{', '.join(names)}, {seeds} seeds each; on target: worst mean error ≤ {MAX_ERROR} "
        f"reference sd and sd ratios within {MIN_RATIO}-{MAX_RATIO}, from {sizes.num_draws // 2} "
        "draws. A diverged run counts as an infinite error in the median.",
        "",
        *markdown_table(
            ["lr", "mc_samples", "runs on target", "diverged", "median worst error", "median s"],
            rows,
        ),
    ]
    return report(lines, "posteriordb_defaults", smoke)


if __name__ == "__main__":
    command_line = parser(__doc__, "toy sizes")
    command_line.add_argument(
        "--sweep", action="store_true", help="step size and particle count of the BLR instead"
    )
    command_line.add_argument(
        "--defaults-only",
        action="store_true",
        help="the BLR's defaults alone (results/posteriordb_blr_defaults.md)",
    )
    options = command_line.parse_args()
    if options.sweep:
        sweep(options.smoke)
    elif options.defaults_only:
        defaults_only(options.smoke)
    else:
        main(options.smoke)
