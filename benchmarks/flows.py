"""Normalizing-flow guides: ``pb.AutoFlow``'s flows against Pyro's flow guides and two Gaussians.

Six targets, each with a reference: a banana (x ~ N(0, 2), y ~ N(x²/2 - 2, 0.5)) and Neal's
funnel in 2 and 10 dimensions (v ~ N(0, 3), x_i ~ N(0, exp(v/2))), all with log Z = 0 and
moments in closed form; eight schools, non-centered and centered (the same posterior, the
centered one a funnel between tau and theta), and posteriordb's ``gp_pois_regr``, against
posteriordb's reference draws (``benchmarks/posteriordb_models``). Guides: ``pb.AutoFlow``
(two layers: its default, the autoregressive neural spline flow and IAF; where zuko is installed,
also on zuko's ``NSF`` and ``NAF`` through :mod:`pyro_blr.guides.lazy_layer`), Pyro's
``AutoNormalizingFlow`` on Pyro's own helpers (two layers: neural, spline and block
autoregressive), ``AutoIAFNormal(num_transforms=2)``, ``AutoNormal`` and the BLR's
full-covariance Gaussian. Every SVI fit has the same budget: ``STEPS`` steps of ClippedAdam
(learning rate 0.01 decayed to 0.001), 8 particles, under ``Trace_ELBO``; the default,
``AutoIAFNormal`` and ``AutoNormal`` also under ``pb.RenyiELBO(0.5)``. The BLR (``rule="von"``)
runs its default 300 steps. Each fit reports the ELBO (± its Monte Carlo error), Pareto k̂
(``pb.psis_diagnostic``), the worst |mean error| in reference sds and the range of sd ratios
(constrained values), and the milliseconds per step; a first table checks the default against
issue 16's targets.

Run: ``python -m benchmarks.flows`` (writes benchmarks/results/flows.md and
docs/assets/flows.png); ``--quick`` runs the banana and the centered eight schools for a few
steps and writes nothing; ``--target NAME`` runs one target.
"""

from __future__ import annotations

import functools
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import (
    block_autoregressive,
    iterated,
    neural_autoregressive,
    spline_autoregressive,
)
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
    init_to_feasible,
)

import pyro_blr as pb
from benchmarks._report import machine, markdown_table, parser, pyplot, report, save_figure
from benchmarks.posteriordb_models import POSTERIORS, eight_schools, flatten, reference
from pyro_blr.guides.flow import DEFAULT_FLOW

STEPS, QUICK_STEPS = 1000, 20
DRAWS, QUICK_DRAWS = 4000, 200
PARTICLES = 8
OBJECTIVES = {
    "Trace_ELBO": lambda: Trace_ELBO(num_particles=PARTICLES, vectorize_particles=True),
    "Rényi α=0.5": lambda: pb.RenyiELBO(0.5, num_particles=PARTICLES),
}


class Target(NamedTuple):
    name: str
    model: Callable
    args: tuple
    log_z: float | None
    names: list[str]  # reference parameters, posteriordb's naming
    mean: torch.Tensor
    sd: torch.Tensor


def banana() -> None:
    x = pyro.sample("x", dist.Normal(0.0, 2.0))
    pyro.sample("y", dist.Normal(x**2 / 2 - 2, 0.5))


def funnel(dim: int) -> None:
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    with pyro.plate("d", dim - 1):
        pyro.sample("x", dist.Normal(0.0, (v / 2).exp()))


def eight_schools_centered(sigma: torch.Tensor, y: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(sigma.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(sigma.new_tensor(5.0)))
    with pyro.plate("school", sigma.shape[0]):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def targets() -> list[Target]:
    d = torch.float64
    funnel_sd = math.exp(9 / 4)  # sd of x: E[exp(v)]^(1/2), v ~ N(0, 3)
    out = [
        Target(
            "banana",
            banana,
            (),
            0.0,
            ["x", "y"],
            torch.zeros(2, dtype=d),
            torch.tensor([2.0, math.sqrt(8.25)], dtype=d),
        ),
    ]
    for dim in (2, 10):
        names = ["v"] + [f"x[{i + 1}]" for i in range(dim - 1)]
        sd = torch.tensor([3.0] + [funnel_sd] * (dim - 1), dtype=d)
        model = functools.partial(funnel, dim)
        out.append(Target(f"funnel {dim}-D", model, (), 0.0, names, torch.zeros(dim, dtype=d), sd))
    schools = "eight_schools-eight_schools_noncentered"
    args = POSTERIORS[schools].load()
    out.append(Target("eight schools (non-centered)", eight_schools.model, args, None,
                      *reference(schools)))  # fmt: skip
    out.append(Target("eight schools (centered)", eight_schools_centered, args, None,
                      *reference(schools)))  # fmt: skip
    gp = "gp_pois_regr-gp_pois_regr"
    out.append(Target("gp_pois_regr", POSTERIORS[gp].model, POSTERIORS[gp].load(), None,
                      *reference(gp)))  # fmt: skip
    return out


# ------------------------------------------------------------------------------ guides
def _in_dtype(guide, dtype: torch.dtype):
    """Pyro's flow guides build their transforms in the default dtype: follow the model's."""
    build = guide._init_transform_fn
    guide._init_transform_fn = lambda dim: build(dim).to(dtype)
    return guide


def _pyro_flow(helper: Callable) -> Callable:
    return lambda model: AutoNormalizingFlow(model, functools.partial(iterated, 2, helper))


def _zuko_flows() -> dict[str, Callable]:
    """AutoFlow on zuko's neural spline and neural autoregressive flows (two layers of one
    transform each, zuko's default sizes), where zuko is installed (it is not a dependency)."""
    try:
        import zuko
    except ImportError:
        return {}

    def on(kind: type) -> Callable:
        return lambda m: pb.AutoFlow(m, flow=lambda dim: kind(dim, transforms=1).transform)

    return {"AutoFlow zuko NSF": on(zuko.flows.NSF), "AutoFlow zuko NAF": on(zuko.flows.NAF)}


def guides() -> dict[str, Callable]:
    """Every SVI guide, by name: ``model -> guide``."""
    return {
        f"AutoFlow {DEFAULT_FLOW} (default)": lambda m: pb.AutoFlow(m),
        "AutoFlow spline_autoregressive": lambda m: pb.AutoFlow(m, flow="spline_autoregressive"),
        "AutoFlow iaf": lambda m: pb.AutoFlow(m, flow="iaf"),
        **_zuko_flows(),
        "Pyro neural_autoregressive": _pyro_flow(neural_autoregressive),
        "Pyro spline_autoregressive": _pyro_flow(spline_autoregressive),
        "Pyro block_autoregressive": _pyro_flow(block_autoregressive),
        "Pyro AutoIAFNormal": lambda m: AutoIAFNormal(m, num_transforms=2),
        "AutoNormal": lambda m: AutoNormal(m, init_loc_fn=init_to_feasible),
    }


DEFAULT = f"AutoFlow {DEFAULT_FLOW} (default)"
SAME_SIZE = f"Pyro {DEFAULT_FLOW}"  # Pyro's flow of the default's kind and size
PYRO_FLOWS = [name for name in guides() if name.startswith("Pyro")]
RENYI_GUIDES = [DEFAULT, "Pyro AutoIAFNormal", "AutoNormal"]
BLR = "BLR Gaussian (von)"
BLR_STEPS = 300  # the BLR's default budget: lr 0.5 for longer diverges on the funnels


def make(target: Target, name: str):
    guide = guides()[name](target.model)
    if isinstance(guide, AutoNormalizingFlow):
        guide = _in_dtype(guide, target.args[0].dtype if target.args else torch.float32)
    return guide


def fit(target: Target, name: str, objective: str | None, steps: int):
    """Fit one guide (SVI with ``objective``, or the BLR)."""
    model = target.model
    if name == BLR:
        guide = AutoMultivariateNormal(model, init_loc_fn=init_to_feasible)
        blr = pb.BLR(model, guide, pb.VON(lr=0.5))
        blr.fit(*target.args, num_steps=min(steps, BLR_STEPS), progress=False)
        return guide
    guide = make(target, name)
    optim = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.1 ** (1 / steps)})
    engine = SVI(model, guide, optim, OBJECTIVES[objective]())
    for _ in range(steps):
        engine.step(*target.args)
    return guide


def timings(target: Target, steps: int, rounds: int = 3) -> dict[str, float]:
    """Milliseconds per Trace_ELBO step of every SVI guide: the fastest of ``rounds`` rounds of
    ``steps`` steps, the guides interleaved, so that a machine shared with other jobs slows
    them alike."""
    engines = {}
    for name in guides():
        pyro.clear_param_store()
        guide = make(target, name)
        engines[name] = SVI(target.model, guide, pyro.optim.Adam({"lr": 1e-3}),
                            OBJECTIVES["Trace_ELBO"]())  # fmt: skip
        engines[name].step(*target.args)  # sets the guide up, untimed
    best = dict.fromkeys(engines, math.inf)
    for _ in range(rounds):
        for name, engine in engines.items():
            start = time.perf_counter()
            for _ in range(steps):
                engine.step(*target.args)
            best[name] = min(best[name], 1000 * (time.perf_counter() - start) / steps)
    return best


class Score(NamedTuple):
    elbo: float
    stderr: float
    khat: float
    error: float  # worst |mean error| in reference sds
    low: float  # sd ratios' range
    high: float
    ms: float


def evaluate(target: Target, guide, ms: float, draws: int) -> Score:
    """ELBO (± Monte Carlo error), k̂, worst mean error and sd ratios from ``draws`` draws."""
    args = target.args
    evidence = pb.log_evidence(target.model, guide, *args, method="elbo", num_particles=draws)
    khat = pb.psis_diagnostic(target.model, guide, *args, num_samples=draws).khat
    idata = pb.to_inference_data(target.model, guide, *args, num_samples=draws)
    samples = {k: torch.as_tensor(idata.posterior[k].values) for k in idata.posterior.data_vars}
    x = flatten(samples, target.names, draws)
    error = float(((x.mean(0) - target.mean) / target.sd).abs().max())
    ratio = x.std(0) / target.sd
    return Score(evidence.value, evidence.stderr, khat, error, float(ratio.min()),
                 float(ratio.max()), ms)  # fmt: skip


def benchmark(steps: int, draws: int, names: list[str] | None = None) -> dict:
    results = {}
    runs = [(g, "Trace_ELBO") for g in guides()] + [(BLR, None)]
    runs += [(g, "Rényi α=0.5") for g in RENYI_GUIDES]
    for target in targets():
        if names and target.name not in names:
            continue
        pyro.set_rng_seed(0)
        ms = timings(target, max(steps // 40, 5))
        for name, objective in runs:
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            start = time.perf_counter()
            try:
                guide = fit(target, name, objective, steps)
                seconds = time.perf_counter() - start
                cost = ms.get(name, 1000 * seconds / min(steps, BLR_STEPS))
                results[target.name, name, objective] = evaluate(target, guide, cost, draws)
            except (ValueError, RuntimeError, FloatingPointError, MemoryError) as e:  # diverged
                results[target.name, name, objective] = f"failed ({type(e).__name__})"
            print(target.name, name, objective, results[target.name, name, objective],
                  file=sys.stderr, flush=True)  # fmt: skip
    return results


# ------------------------------------------------------------------------------ report
def cells(score) -> tuple:
    if isinstance(score, str):
        return (score, "-", "-", "-", "-")
    return (f"{score.elbo:.3f} ± {score.stderr:.3f}", f"{score.khat:.2f}", f"{score.error:.3f}",
            f"{score.low:.2f} - {score.high:.2f}", f"{score.ms:.2f}")  # fmt: skip


def figure(results: dict) -> None:
    """The Trace_ELBO (and BLR) fits' ELBO below the best per target (bars, clipped at 10 nats)
    and k̂ (labels)."""
    names = list(dict.fromkeys(t for t, _, _ in results))
    labels = [*guides(), BLR]
    fig, axes = pyplot().subplots(1, len(names), figsize=(3.2 * len(names), 4.5), sharey=True)
    for ax, target in zip(axes, names, strict=True):
        scores = [results.get((target, g, None if g == BLR else "Trace_ELBO")) for g in labels]
        best = max(s.elbo for s in scores if isinstance(s, Score))
        for i, s in enumerate(scores):
            if isinstance(s, Score):
                ax.barh(i, min(best - s.elbo, 10.0), color="C0")
                ax.text(0, i, f" k̂ {s.khat:.2f}", va="center", fontsize=7)
            else:
                ax.text(0, i, " failed", va="center", fontsize=7, color="C3")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlim(0, 10)
        ax.set_title(target, fontsize=9)
        ax.set_xlabel("ELBO below the best (nats)", fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    save_figure(fig, "flows", dpi=100)


def summary(results: dict) -> list[tuple]:
    """Per target, the issue's four checks on the default's Trace_ELBO fit."""
    rows = []
    for target in dict.fromkeys(t for t, _, _ in results):
        default = results[target, DEFAULT, "Trace_ELBO"]
        pyro_fits = [(g, results[target, g, "Trace_ELBO"]) for g in PYRO_FLOWS]
        pyro_fits = [(g, s) for g, s in pyro_fits if not isinstance(s, str)]
        gaussian = results[target, BLR, None]
        same = results[target, SAME_SIZE, "Trace_ELBO"]
        if isinstance(default, str):
            rows.append((target, default, "-", "-", "-", "-"))
            continue
        if pyro_fits:
            name, best = max(pyro_fits, key=lambda gs: gs[1].elbo)
            gap = default.elbo - best.elbo
            se = math.hypot(default.stderr, best.stderr)
            verdict = "yes" if gap >= -2 * se else "no"
            elbo = f"{verdict}: {gap:+.3f} ± {se:.3f} vs {name.removeprefix('Pyro ')}"
        else:
            elbo = "yes (every Pyro flow failed)"
        if isinstance(gaussian, str) or gaussian.khat > 0.7:
            k_gauss = "failed" if isinstance(gaussian, str) else f"{gaussian.khat:.2f}"
            khat = (
                f"{'yes' if default.khat < 0.5 else 'no'}: {default.khat:.2f} (Gaussian {k_gauss})"
            )
        else:
            khat = f"- ({default.khat:.2f}; Gaussian {gaussian.khat:.2f})"
        nuts = default.error <= 0.1 and 0.9 <= default.low and default.high <= 1.1
        spread = f"{default.low:.2f} - {default.high:.2f}"
        quality = f"{'yes' if nuts else 'no'}: {default.error:.3f}, {spread}"
        cost = "-" if isinstance(same, str) else f"{default.ms / same.ms:.2f}"
        rows.append((target, elbo, khat, quality, cost))
    return rows


def main(smoke: bool = False, names: list[str] | None = None) -> str:
    steps, draws = (QUICK_STEPS, QUICK_DRAWS) if smoke else (STEPS, DRAWS)
    if smoke and names is None:
        names = ["banana", "eight schools (centered)"]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ announces its 1.0 refactor
        results = benchmark(steps, draws, names)
    minutes = (time.perf_counter() - start) / 60
    return write(results, steps, draws, minutes, smoke)


def write(results: dict, steps: int, draws: int, minutes: float, smoke: bool = False) -> str:
    """The report of ``benchmark``'s results: the checks, every fit, the figure."""
    header = ["target", "guide", "objective", "ELBO", "Pareto k̂", "worst mean error",
              "sd ratio", "ms per step"]  # fmt: skip
    rows = [(t, g, o or "BLR", *cells(s)) for (t, g, o), s in results.items()]
    checks = ["target", "ELBO ≥ best Pyro flow's (gap ± se)", "k̂ < 0.5 where the Gaussian's > 0.7",
              "NUTS quality (worst error, sd ratios)", f"cost / {SAME_SIZE}"]  # fmt: skip
    lines = [
        "# Normalizing-flow guides",
        "",
        f"{machine('flows', smoke).replace('--smoke', '--quick')} {steps} steps per fit "
        f"(ClippedAdam 0.01 decayed to 0.001, {PARTICLES} particles; the BLR: its default "
        f"{min(steps, BLR_STEPS)} steps of lr 0.5, 2 particles), ELBO, k̂ and moments from "
        f"{draws} draws; ms per Trace_ELBO step the fastest of three interleaved rounds; "
        f"{minutes:.0f} minutes in all.",
        "",
        f"The default, `pb.AutoFlow(model)` ({DEFAULT_FLOW}, two layers), against the targets:",
        "",
        *markdown_table(checks, summary(results)),
        "",
        *markdown_table(header, rows),
    ]
    text = report(lines, "flows", smoke)
    if not smoke:
        figure(results)
    return text


if __name__ == "__main__":
    cli = parser(__doc__, "a few steps and draws on every target; writes nothing")
    cli.add_argument("--quick", dest="smoke", action="store_true", help="the same as --smoke")
    cli.add_argument("--target", action="append", help="run only this target (repeatable)")
    options = cli.parse_args()
    main(options.smoke, options.target)
