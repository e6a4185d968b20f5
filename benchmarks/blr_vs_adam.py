"""BLR against Pyro's SVI + Adam on the same models and guides, in one process.

(a) wall time until the ELBO is within 1 nat of the optimum (breast-cancer logistic regression,
    D = 31, full-covariance guide), BLR("von") vs SVI + Adam at its best learning rate;
(b) time per step on a one-hidden-layer (50 tanh units) Bayesian neural net with a subsampled
    plate (diabetes data), BLR("ivon") vs SVI + Adam + Trace_ELBO, same guide (AutoNormal);
(c) time per step as the data grow from 10^3 to 10^6 rows with a fixed minibatch of 100.

Accuracy against reference posteriors (posteriordb) is ``benchmarks/posteriordb.py``.

Run: ``python -m benchmarks.blr_vs_adam`` (writes benchmarks/results/blr_vs_adam.md);
``--smoke`` runs every part at toy sizes.
"""

from __future__ import annotations

import math
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from sklearn.datasets import load_breast_cancer, load_diabetes

import pyro_blr as pb
from benchmarks import models
from benchmarks._report import machine, markdown_table, parser, report
from pyro_blr.core import GaussianGuide, latent_layout, neg_log_joint

ADAM_LRS = [0.001, 0.003, 0.01, 0.03]
ADAM_DECAYED = {"lr": 0.05, "lrd": 0.9997}


def standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0)


class ELBO:
    """The ELBO of a Gaussian guide with fixed noise (common random numbers): a smooth,
    deterministic function of the guide, so that methods are compared on the same yardstick."""

    def __init__(self, model, guide, args, num_particles=512):
        layout = latent_layout(guide.prototype_trace, pyro.poutine.trace(model).get_trace(*args))
        self.model, self.layout, self.args = model, layout, args
        self.guide, self.gaussian = guide, GaussianGuide(guide, layout)
        gen = torch.Generator().manual_seed(1)
        self.noise = torch.randn(num_particles, layout.dim, generator=gen, dtype=args[0].dtype)

    @torch.no_grad()
    def __call__(self) -> float:
        if isinstance(self.guide, AutoMultivariateNormal):  # read the factor as Pyro holds it
            loc = self.guide.loc.detach()
            scale_tril = (self.guide.scale[:, None] * self.guide.scale_tril).detach()
        else:
            loc, precision = self.gaussian.read()
            scale_tril = torch.diag(precision.rsqrt())
        theta = loc + self.noise @ scale_tril.T
        values = torch.cat(
            [neg_log_joint(self.model, self.layout, t, self.args) for t in theta.split(128)]
        )
        d = loc.shape[-1]
        entropy = 0.5 * d * (1 + math.log(2 * math.pi)) + scale_tril.diagonal().log().sum()
        return float(-values.mean() + entropy)


def time_to_target(step, evaluate, target, every, max_steps, max_seconds):
    """Optimization seconds (evaluations excluded) until evaluate() >= target, or None."""
    seconds = 0.0
    for i in range(1, max_steps + 1):
        start = time.perf_counter()
        step()
        seconds += time.perf_counter() - start
        if i % every == 0 and evaluate() >= target:
            return seconds, i
        if seconds > max_seconds:
            break
    return None, i


def part_a(smoke: bool) -> list[str]:
    data = load_breast_cancer()
    X = standardize(torch.tensor(data.data, dtype=torch.float32))
    y = torch.tensor(data.target, dtype=torch.float32)
    args = (X, y)
    model = models.logistic_regression

    def blr_run():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoMultivariateNormal(model)
        blr = pb.BLR(model, guide, pb.VON(lr=lambda t: 0.5 / (1 + t / 10), mc_samples=4))
        return guide, blr

    guide, blr = blr_run()
    blr.fit(*args, num_steps=20 if smoke else 300, progress=False)
    elbo = ELBO(model, guide, args, num_particles=64 if smoke else 512)
    optimum = elbo()
    target = optimum - 1.0

    rows = []
    guide, blr = blr_run()
    blr.step(*args)  # initializes the guide
    blr_elbo = ELBO(model, guide, args, num_particles=len(elbo.noise))
    blr_seconds, blr_steps = time_to_target(lambda: blr.step(*args), blr_elbo, target, 1, 200, 60)
    rows.append(("BLR von (mc_samples=4)", blr_seconds, blr_steps, blr_elbo()))
    best_adam = None
    optimizers = [(f"SVI + Adam lr={lr}", pyro.optim.Adam, {"lr": lr}) for lr in ADAM_LRS]
    optimizers.append(
        ("SVI + ClippedAdam lr=0.05, decay 0.9997/step", pyro.optim.ClippedAdam, ADAM_DECAYED)
    )
    for name, optimizer, options in optimizers:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoMultivariateNormal(model)
        svi = SVI(model, guide, optimizer(dict(options)), Trace_ELBO())
        svi.step(*args)  # initializes the guide
        evaluate = ELBO(model, guide, args, num_particles=len(elbo.noise))
        seconds, steps = time_to_target(
            lambda svi=svi: svi.step(*args),
            evaluate,
            target,
            25,
            200 if smoke else 20000,
            5 if smoke else 120,
        )
        rows.append((name, seconds, steps, evaluate()))
        if seconds is not None and (best_adam is None or seconds < best_adam):
            best_adam = seconds
    table = []
    for name, seconds, steps, final in rows:
        shown = "not reached" if seconds is None else f"{seconds:.3f}"
        ratio = "" if seconds is None or best_adam is None else f"{best_adam / seconds:.1f}x"
        table.append((name, shown, steps, f"{final:.2f}", ratio))
    header = ["method", "seconds", "steps", "ELBO at stop", "best Adam / method"]
    return [
        f"**(a) Time to within 1 nat of the ELBO optimum** (breast cancer, D = 31, "
        f"AutoMultivariateNormal; optimum {optimum:.2f} from a 300-step BLR run, every ELBO "
        f"from the same 512 fixed draws)",
        "",
        *markdown_table(header, table),
    ]


def per_step_ms(step, num_steps, warmup=10):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(num_steps):
        step()
    return 1000 * (time.perf_counter() - start) / num_steps


def compare_step_times(model, args, num_steps, configs):
    """ms per step for SVI + Adam and BLR("ivon") on AutoNormal, paired by particle count."""
    out = []
    for particles, antithetic in configs:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoNormal(model)
        elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        adam_ms = per_step_ms(lambda svi=svi: svi.step(*args), num_steps)
        pyro.clear_param_store()
        guide = AutoNormal(model)
        blr = pb.BLR(model, guide, pb.IVON(lr=0.05, mc_samples=particles, antithetic=antithetic))
        blr_ms = per_step_ms(lambda blr=blr: blr.step(*args), num_steps)
        out.append((particles, antithetic, adam_ms, blr_ms))
    return out


def part_b(smoke: bool) -> list[str]:
    data = load_diabetes()
    X = standardize(torch.tensor(data.data, dtype=torch.float32))
    y = standardize(torch.tensor(data.target, dtype=torch.float32))

    def model(X, y):
        models.bnn(X, y, hidden=50, subsample_size=32)

    results = compare_step_times(model, (X, y), 20 if smoke else 300, [(1, False), (2, True)])
    table = [
        (
            f"{particles}" + (" (antithetic pair)" if antithetic else ""),
            f"{adam_ms:.2f}",
            f"{blr_ms:.2f}",
            f"{blr_ms / adam_ms:.2f}",
        )
        for particles, antithetic, adam_ms, blr_ms in results
    ]
    header = ["particles", "SVI + Adam + Trace_ELBO (ms)", "BLR ivon (ms)", "BLR / Adam"]
    return [
        "**(b) Time per step, Bayesian neural net** (diabetes, 10 inputs, 50 tanh units, "
        "611 weights, minibatch 32 of 442, AutoNormal for both)",
        "",
        *markdown_table(header, table),
    ]


def part_c(smoke: bool) -> list[str]:
    table = []
    for exponent in [3, 4] if smoke else [3, 4, 5, 6]:
        n = 10**exponent
        gen = torch.Generator().manual_seed(0)
        X = torch.randn(n, 10, generator=gen)
        y = torch.bernoulli(torch.sigmoid(X[:, 0] - X[:, 1]), generator=gen)

        def model(X, y):
            models.logistic_regression(X, y, subsample_size=100)

        [(_, _, adam_ms, blr_ms)] = compare_step_times(
            model, (X, y), 20 if smoke else 200, [(1, False)]
        )
        randperm_ms = per_step_ms(lambda n=n: torch.randperm(n), 20 if smoke else 200)
        ratio = blr_ms / adam_ms
        table.append(
            (
                f"10^{exponent}",
                f"{adam_ms:.2f}",
                f"{blr_ms:.2f}",
                f"{ratio:.2f}",
                f"{randperm_ms:.2f}",
            )
        )
    header = ["N", "SVI + Adam (ms)", "BLR ivon (ms)", "BLR / Adam", "randperm(N) (ms)"]
    return [
        "**(c) Time per step as the data grow** (logistic regression, D = 10, minibatch 100, "
        "AutoNormal, one particle)",
        "",
        *markdown_table(header, table),
        "",
        "Both drivers run the same model, whose `pyro.plate(subsample_size=100)` draws its indices "
        "with `torch.randperm(N)`: that draw is the only part that grows with N.",
    ]


def main(smoke: bool = False, parts: str = "abc") -> str:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lines = ["# BLR vs SVI + Adam", "", machine("blr_vs_adam", smoke)]
    sections = {"a": part_a, "b": part_b, "c": part_c}
    for key in parts:
        lines += ["", *sections[key](smoke)]
    return report(lines, "blr_vs_adam", smoke)


if __name__ == "__main__":
    command_line = parser(__doc__, "toy sizes, nothing written")
    command_line.add_argument("--parts", default="abc", help="which parts to run, e.g. 'ab'")
    options = command_line.parse_args()
    main(options.smoke, options.parts)
