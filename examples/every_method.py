"""One model, every method: the BLR, SVI, a flow, a mixture, SVGD, SGLD and NUTS side by side.

Two posteriors, each fitted by seven methods with the settings written below and no other
tuning: a Bayesian logistic regression (scikit-learn's breast-cancer data, five standardized
features and an intercept) and the non-centred eight-schools model (as in
``examples/eight_schools.py``). Pyro's NUTS is the reference (one long chain); for every other
method the table gives the worst error of a posterior mean in NUTS posterior sds, the range of
its sd ratios to NUTS, the CPU seconds of the fit (``time.process_time`` in this one process;
draws and evidence estimates not counted) and, where one is defined, an estimate of the log
evidence: for a guide, ``pb.log_evidence(method="iwae")`` with its standard error; for SVGD,
the same estimate from a Gaussian proposal with the particles' mean and covariance
(``particle_proposal``: the proposal's estimate, not SVGD's); none for SGLD and NUTS, whose draws
have no density. For the logistic model also the Jaakkola–Jordan bound
(``pb.jaakkola_jordan_evidence``, deterministic) and the gradient-descent bound
(``pb.sgd_evidence``, best step). The SVGD row is ``pyro_blr.samplers.SVGD``: Pyro 1.9.2's
``SVGD`` mixes coordinates of different particles on a model with more than one latent site
(see PYRO_SVGD), and the logistic model also shows Pyro's as written, for comparison.

Run: ``python examples/every_method.py`` (writes examples/results/every_method.md and
docs/assets/every_method.png; ``--smoke`` is quick). Every method starts from its own seed, so
a rerun gives the committed table but for the seconds. About five CPU minutes on one core
(``torch.set_num_threads(1)``; measured 230 to 312 s, 4.6 to 8.5 minutes' wall time on a
shared 2-core machine), NUTS most of it; ``--smoke`` takes about 15 CPU seconds. A progress
bar runs over the fits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.infer
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, RBFSteinKernel, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from sklearn.datasets import load_breast_cancer
from tqdm.auto import tqdm

import pyro_blr as pb
from pyro_blr.diagnostics.particle_proposal import particle_proposal
from pyro_blr.diagnostics.particles import svgd_particles
from pyro_blr.samplers import SVGD, RobbinsMonro

try:  # imported as examples.every_method (by the tests and benchmarks)
    from examples._report import markdown_table, pyplot, report, save_figure, smoke_flag
    from examples.eight_schools import load as load_schools
    from examples.eight_schools import model as schools_model
except ModuleNotFoundError:  # run as a script: python examples/every_method.py
    from _report import markdown_table, pyplot, report, save_figure, smoke_flag
    from eight_schools import load as load_schools
    from eight_schools import model as schools_model

FEATURES = ["mean radius", "mean texture", "mean smoothness", "mean compactness", "mean symmetry"]
METHODS = [
    "NUTS (reference)",
    "BLR (default rule: VON), full Gaussian",
    "SVI + AutoNormal (Adam)",
    "SVI + pb.AutoFlow (Adam)",
    "BLR + pb.AutoMixture (K=3, MixtureRule)",
    "SVGD (50 particles)",
    "SGLD (4 chains)",
]
# Pyro 1.9.2's SVGD.step reshapes its flat particle vector, packed site by site
# ([w of every particle, b of every particle]), to (num_particles, -1) as if it were packed
# particle by particle: with more than one latent site each kernel "particle" mixes coordinates
# of several particles. pyro_blr.samplers.SVGD (the "SVGD" row) unpacks per site; this row runs
# Pyro's as written on the logistic model, to show the difference. Its particles are read raw
# (svgd_particles refuses them) and given no evidence.
PYRO_SVGD = "Pyro 1.9.2's SVGD as written (mixes particles across sites)"


class Problem(NamedTuple):
    """A model, its data, and how to read its parameters off a dict of draws."""

    name: str
    model: Callable
    args: tuple
    names: list[str]
    flat: Callable[[dict], np.ndarray]  # site -> (S, ...) draws to (S, P)
    sgld_step: float  # SGLD's first step (see main)
    shown: int  # the parameter whose marginal is plotted


def logistic(X: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """w ~ N(0, I), b ~ N(0, 5^2), y ~ Bernoulli(logits = X w + b)."""
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(X.new_zeros(()), 5.0))
    with pyro.plate("data", X.shape[0]):
        logits = (X * w).sum(-1) + b  # broadcasts over batched particles (SVGD)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    """The five FEATURES, standardized (569 x 5, float64), and the 0/1 labels."""
    data = load_breast_cancer()
    columns = [list(data.feature_names).index(name) for name in FEATURES]
    X = torch.tensor(data.data[:, columns], dtype=torch.float64)
    return (X - X.mean(0)) / X.std(0), torch.tensor(data.target, dtype=torch.float64)


def problems() -> list[Problem]:
    X, y = breast_cancer()
    sigma, y_schools, _ = load_schools()  # the posteriordb reference is checked in main

    def flat_logistic(s: dict) -> np.ndarray:
        b = np.asarray(s["b"]).reshape(-1, 1)
        return np.concatenate([b, np.asarray(s["w"]).reshape(len(b), -1)], 1)

    def flat_schools(s: dict) -> np.ndarray:
        mu, tau = (np.asarray(s[k]).reshape(-1, 1) for k in ("mu", "tau"))
        theta = mu + tau * np.asarray(s["theta_trans"]).reshape(len(mu), -1)
        return np.concatenate([mu, tau, theta], 1)

    # SGLD's first step is 0.2 / (largest curvature at the start): for the logistic model
    # X'X/4 + I bounds the Hessian of -log p everywhere (sigmoid' <= 1/4); for eight schools the
    # data term's largest curvature in (mu, theta_trans) is about sum(1/sigma^2) = 0.04 at
    # tau = 1, under the prior's 1 of theta_trans, so 0.2 / 1.
    curvature = float(torch.linalg.eigvalsh(X.T @ X / 4 + torch.eye(5, dtype=X.dtype)).max())
    return [
        Problem(
            "logistic regression (breast cancer, 5 features)",
            logistic,
            (X, y),
            ["b"] + [f"w[{name}]" for name in FEATURES],
            flat_logistic,
            0.2 / curvature,
            1,
        ),
        Problem(
            "eight schools (non-centred)",
            schools_model,
            (sigma, y_schools),
            ["mu", "tau"] + [f"theta[{j}]" for j in range(1, 9)],
            flat_schools,
            0.2,
            1,
        ),
    ]


class Row(NamedTuple):
    draws: np.ndarray  # (S, P)
    seconds: float  # CPU seconds of the fit
    evidence: tuple[float, float] | None  # (log p(D) estimate, stderr)
    note: str  # how the evidence was obtained


def cpu(fn: Callable) -> tuple[object, float]:
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def guide_draws(problem: Problem, guide, num: int) -> np.ndarray:
    sites = [k for k in ("w", "b", "mu", "tau", "theta_trans")]
    predictive = Predictive(problem.model, guide=guide, num_samples=num, return_sites=sites)
    with torch.no_grad():
        out = predictive(*problem.args)
    return problem.flat({k: v.detach().numpy() for k, v in out.items()})


def iwae(problem: Problem, guide, particles: int) -> tuple[float, float]:
    value, stderr = pb.log_evidence(
        problem.model, guide, *problem.args, method="iwae", num_particles=particles
    )
    return value, stderr


def svgd_row(model: Callable, flat: Callable, args: tuple, smoke: bool, particles: int) -> Row:
    """``pyro_blr.samplers.SVGD`` on ``model`` (settings in run_methods), its particles and
    their evidence."""
    svgd = SVGD(
        model,
        RBFSteinKernel(),
        pyro.optim.Adam({"lr": 0.05}),
        num_particles=50,
        max_plate_nesting=1,
    )

    def svgd_loop() -> dict:
        for _ in range(50 if smoke else 2000):
            squares = svgd.step(*args)
        return squares  # the mean squared SVGD direction per site at the last step

    squares, seconds = cpu(svgd_loop)
    particles_dict = {k: v.numpy() for k, v in svgd_particles(model, svgd, args, {}).items()}
    proposal = particle_proposal(model, svgd, *args)
    value, stderr = pb.log_evidence(model, proposal, *args, method="iwae", num_particles=particles)
    return Row(
        flat(particles_dict),
        seconds,
        (value, stderr),
        "iwae from the particles' Gaussian; last mean squared SVGD "
        f"direction {max(squares.values()):.0e}",
    )


def pyro_svgd_row(model: Callable, flat: Callable, args: tuple, smoke: bool) -> Row:
    """Pyro 1.9.2's own SVGD, the settings of `svgd_row`: its particles read raw, no
    evidence (see PYRO_SVGD)."""
    svgd = pyro.infer.SVGD(
        model,
        RBFSteinKernel(),
        pyro.optim.Adam({"lr": 0.05}),
        num_particles=50,
        max_plate_nesting=1,
    )

    def svgd_loop() -> dict:
        for _ in range(50 if smoke else 2000):
            squares = svgd.step(*args)
        return squares

    squares, seconds = cpu(svgd_loop)
    raw = {k: v.detach().numpy() for k, v in svgd.get_named_particles().items()}
    return Row(
        flat(raw),
        seconds,
        None,
        "none (its particles mix particles across sites); last mean squared direction "
        f"{max(squares.values()):.0e}",
    )


def run_methods(problem: Problem, smoke: bool, bar) -> dict[str, Row]:
    """Fit every method to ``problem``; method ``i`` starts from seed ``i``."""
    model, args = problem.model, problem.args
    num_draws, particles = (200, 200) if smoke else (4000, 10000)
    rows: dict[str, Row] = {}

    def seed(i: int) -> None:
        pyro.clear_param_store()
        pyro.set_rng_seed(i)

    # NUTS: one chain, 1000 warm-up steps and 4000 draws (Monte Carlo error of a mean about
    # 0.02-0.03 posterior sd); its default step adaptation and mass matrix.
    seed(0)
    mcmc = MCMC(
        NUTS(model),
        num_samples=50 if smoke else 4000,
        warmup_steps=50 if smoke else 1000,
        disable_progbar=True,
    )
    _, seconds = cpu(lambda: mcmc.run(*args))
    samples = {k: v.numpy() for k, v in mcmc.get_samples().items()}
    n_eff = min(float(d["n_eff"].min()) for d in mcmc.diagnostics().values() if "n_eff" in d)
    rows[METHODS[0]] = Row(
        problem.flat(samples),
        seconds,
        None,
        f"none (draws, no density); smallest n_eff {n_eff:.0f}",
    )
    bar.update()

    # The BLR with its default rule for a full-covariance Gaussian (VON, lr 0.1, 2 draws per
    # step, constant lr, so the fit ends at the Polyak average of its second half).
    seed(1)
    guide = AutoMultivariateNormal(model)
    blr = pb.BLR(model, guide)
    _, seconds = cpu(lambda: blr.fit(*args, num_steps=20 if smoke else 300, progress=False))
    rows[METHODS[1]] = Row(
        guide_draws(problem, guide, num_draws), seconds, iwae(problem, guide, particles), "iwae"
    )
    bar.update()

    # SVI + AutoNormal, Adam lr 0.01, 5000 steps of one-particle Trace_ELBO.
    # SVI + pb.AutoFlow (its default: two neural autoregressive layers), the same optimizer and
    # 2000 steps.
    for i, name, make, steps in (
        (2, METHODS[2], AutoNormal, 5000),
        (3, METHODS[3], pb.AutoFlow, 2000),
    ):
        seed(i)
        guide = make(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())

        def loop(svi=svi, steps=steps) -> None:
            for _ in range(50 if smoke else steps):
                svi.step(*args)

        _, seconds = cpu(loop)
        rows[name] = Row(
            guide_draws(problem, guide, num_draws), seconds, iwae(problem, guide, particles), "iwae"
        )
        bar.update()

    # pb.AutoMixture of three diagonal Gaussians, the BLR's default rule for it (MixtureRule,
    # lr 0.1, 2 draws per component and step), 300 steps.
    seed(4)
    guide = pb.AutoMixture(model, num_components=3)
    blr = pb.BLR(model, guide)
    _, seconds = cpu(lambda: blr.fit(*args, num_steps=20 if smoke else 300, progress=False))
    rows[METHODS[4]] = Row(
        guide_draws(problem, guide, num_draws), seconds, iwae(problem, guide, particles), "iwae"
    )
    bar.update()

    # SVGD (pyro_blr.samplers.SVGD, Pyro's with the particle packing fixed): 50 particles, an
    # RBF kernel with the median bandwidth, Adam lr 0.05, 2000 steps. Its evidence: importance
    # sampling from the particles' Gaussian.
    seed(5)
    rows[METHODS[5]] = svgd_row(model, problem.flat, args, smoke, particles)
    if problem.model is logistic:  # Pyro 1.9.2's SVGD as written, see PYRO_SVGD
        seed(5)
        rows[PYRO_SVGD] = pyro_svgd_row(model, problem.flat, args, smoke)
    bar.update()

    # pb.SGLD: four chains on the full data, a Robbins-Monro step beta_t = a (100 + t)^-0.55
    # from problem.sgld_step, 2000 burn-in steps and 1000 draws per chain.
    seed(6)
    sgld = pb.SGLD(
        model,
        RobbinsMonro.from_first(problem.sgld_step, b=100.0, gamma=0.55),
        num_samples=50 if smoke else 1000,
        warmup_steps=50 if smoke else 2000,
        num_chains=4,
    )
    _, seconds = cpu(lambda: sgld.run(*args))
    samples = {k: v.numpy() for k, v in sgld.get_samples().items()}
    r_hat = max(float(d["r_hat"].max()) for d in sgld.diagnostics().values())
    rows[METHODS[6]] = Row(
        problem.flat(samples),
        seconds,
        None,
        f"none (draws, no density); largest split R̂ {r_hat:.2f}",
    )
    bar.update()
    return rows


def logistic_bounds(problem: Problem, smoke: bool) -> dict[str, float]:
    """The two guide-free bounds on the logistic model's log evidence (and their CPU time)."""
    X, y = problem.args
    jj, jj_seconds = cpu(lambda: pb.jaakkola_jordan_evidence(logistic, X, y))
    # 100 gradient-descent chains from the prior's scale N(0, I); the step is 0.2 / the largest
    # curvature bound (X'X/4 + I), so every step is invertible; exact Hessians (D = 6).
    pyro.set_rng_seed(7)
    curvature = float(torch.linalg.eigvalsh(X.T @ X / 4 + torch.eye(5, dtype=X.dtype)).max())
    sgd, sgd_seconds = cpu(
        lambda: pb.sgd_evidence(
            logistic,
            X,
            y,
            num_chains=20 if smoke else 100,
            num_steps=30 if smoke else 300,
            step_size=0.2 / curvature,
            hessian="exact",
        )
    )
    return {
        "jj": jj.bound,
        "jj_seconds": jj_seconds,
        "sgd": sgd.best,
        "sgd_step": sgd.best_step,
        "sgd_seconds": sgd_seconds,
    }


def score(draws: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """Worst |mean error| in reference sds, and the smallest and largest sd ratio."""
    sd = reference.std(0)
    ratio = draws.std(0) / sd
    error = abs(draws.mean(0) - reference.mean(0)) / sd
    return float(error.max()), float(ratio.min()), float(ratio.max())


def _posteriordb_score(draws: np.ndarray, names: list[str]) -> tuple[float, float, float]:
    """Worst mean error (reference sds) and sd ratio range against posteriordb's summary."""
    reference = load_schools()[2]
    mean = np.array([reference[p]["mean"] for p in names])
    sd = np.array([reference[p]["sd"] for p in names])
    ratio = draws.std(0) / sd
    return float((abs(draws.mean(0) - mean) / sd).max()), float(ratio.min()), float(ratio.max())


def main(smoke: bool = False) -> dict:
    """Fit both problems with every method; return, per problem, ``{method: scores}``."""
    results, all_rows = {}, {}
    bar = tqdm(total=2 * len(METHODS), desc="every method (fits)", disable=smoke)
    lines = []
    for problem in problems():
        rows = run_methods(problem, smoke, bar)
        reference = rows[METHODS[0]].draws
        extra = logistic_bounds(problem, smoke) if problem.model is logistic else None
        table, out = [], {}
        for name, row in rows.items():
            error, low, high = score(row.draws, reference)
            out[name] = {
                "error": error,
                "sd_low": low,
                "sd_high": high,
                "seconds": row.seconds,
                "evidence": row.evidence,
            }
            shown = "-" if row.evidence is None else "{:.2f} ± {:.2f}".format(*row.evidence)
            cells = (
                ("0 (ref.)", "1 (ref.)")
                if name == METHODS[0]
                else (f"{error:.2f}", f"{low:.2f} - {high:.2f}")
            )
            table.append((name, *cells, f"{row.seconds:.1f}", shown, row.note))
        if extra is not None:
            out["jaakkola_jordan"], out["sgd_evidence"] = extra["jj"], extra["sgd"]
            table.append(
                (
                    "Jaakkola–Jordan bound (no draws)",
                    "-",
                    "-",
                    f"{extra['jj_seconds']:.1f}",
                    f"{extra['jj']:.2f}",
                    "deterministic lower bound",
                )
            )
            table.append(
                (
                    "sgd_evidence (100 GD chains)",
                    "-",
                    "-",
                    f"{extra['sgd_seconds']:.1f}",
                    f"{extra['sgd']:.2f}",
                    f"lower bound (MC), best at step {extra['sgd_step']}",
                )
            )
        if problem.model is schools_model:  # the reference itself, against posteriordb's
            error, low, high = _posteriordb_score(reference, problem.names)
            out["nuts_vs_posteriordb"] = error
            table.append(
                (
                    "NUTS against posteriordb's reference",
                    f"{error:.2f}",
                    f"{low:.2f} - {high:.2f}",
                    "-",
                    "-",
                    "posteriordb (Stan)",
                )
            )
        lines += [
            f"**{problem.name}**: {len(problem.names)} parameters; errors and sd ratios against "
            f"NUTS, over {', '.join(problem.names)}.",
            "",
            *markdown_table(
                [
                    "method",
                    "worst mean error (NUTS sd)",
                    "sd ratio to NUTS",
                    "CPU s (fit)",
                    "log evidence",
                    "evidence from",
                ],
                table,
            ),
            "",
        ]
        results[problem.name] = out
        all_rows[problem.name] = (problem, rows)
    bar.close()
    report(lines[:-1], "every_method", smoke)
    if not smoke:
        _plot(all_rows)
    return results


def _plot(all_rows: dict) -> None:
    """Per method (rows) and problem (columns): one marginal against NUTS's."""
    plt = pyplot()
    others = METHODS[1:]
    fig, axes = plt.subplots(
        len(others), len(all_rows), figsize=(9, 1.7 * len(others)), sharex="col"
    )
    for col, (problem, rows) in enumerate(all_rows.values()):
        index = problem.shown
        reference = rows[METHODS[0]].draws[:, index]
        every = [rows[name].draws[:, index] for name in rows]
        low = min(np.quantile(x, 0.001) for x in every)
        high = max(np.quantile(x, 0.995 if problem.names[index] == "tau" else 0.999) for x in every)
        bins = np.linspace(low, high, 60)
        for row, name in enumerate(others):
            ax = axes[row, col]
            ax.hist(reference, bins, density=True, color="0.75", label="NUTS")
            ax.hist(
                rows[name].draws[:, index],
                bins,
                density=True,
                histtype="step",
                lw=1.5,
                color="C0",
                label=name.split(" (")[0],
            )
            if name == METHODS[5] and PYRO_SVGD in rows:
                ax.hist(
                    rows[PYRO_SVGD].draws[:, index],
                    bins,
                    density=True,
                    histtype="step",
                    lw=1.5,
                    ls="--",
                    color="C1",
                    label="Pyro 1.9.2's SVGD",
                )
                ax.legend(["NUTS", "SVGD", "Pyro 1.9.2's SVGD"], fontsize=7, loc="upper left")
            ax.set_yticks([])
            ax.set_title(name, fontsize=8)
            if row == len(others) - 1:
                ax.set_xlabel(f"{problem.names[index]}  ({problem.name.split(' (')[0]})")
    axes[0, 0].legend(["NUTS", "method"], fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, "every_method", dpi=100)


if __name__ == "__main__":
    torch.set_num_threads(1)  # one core: the CPU seconds are one core's
    main(smoke_flag(__doc__, "a few steps and draws per method"))
