"""What exact curvature costs at scale, and what ``hessian_every`` buys back.

Full-batch Bayesian logistic regression, ``y ~ Bernoulli(sigmoid(X w))``, ``w ~ N(0, I)``,
float32, on synthetic data (standard normal features, true weights of norm 2), fitted in the
same process by:

* SVI + Adam (``AutoNormal``, lr 0.01 decayed to about 1e-3, one particle), the per-step yardstick;
* the same with ``AutoMultivariateNormal``, the family the BLR rules below fit;
* ``pb.BLR(rule="von")`` on ``AutoMultivariateNormal`` (lr 0.2, two antithetic particles) with
  the exact Hessian at every step, and with ``hessian_every`` 10 and 50;
* ``pb.BLR(rule="newton")`` (at the mean, so one model run per step), likewise;
* on ``AutoNormal`` (part 3), ``pb.VON`` (the Hessian's diagonal: Hutchinson's estimate above
  64 coordinates, never a ``D x D`` matrix) and ``pb.VOGN`` (per-datum gradients by reverse mode
  under ``vmap``), both linear in ``D``.

Part 1 is ``N = 10^6, D = 100`` (``--n``/``--d`` to change); part 2 is a full covariance at
``D = 1000`` (``N = 10^4``), both run by default; part 3, diagonal guides at
``N = 10^4, D = 1000``, runs with ``--part diagonal``. ``--part`` runs one part (its table goes
to ``results/curvature_cost_<part>.md``), ``--steps`` sets the BLR
fits' steps (Adam takes twenty times as many). Each fit's ELBO is estimated afterwards with the
same 64 draws for every fit (common random numbers), whose standard error is given. Times per
step leave out the first step (set-up); the ratio column is the mean time per step over that of
Adam (``AutoNormal``), so a Hessian every ``k`` steps counts as ``1/k`` of one.

Run: ``python -m benchmarks.curvature_cost`` (``--device cuda`` on a GPU, ``--smoke`` for toy
sizes).
"""

from __future__ import annotations

import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from benchmarks._report import machine, markdown_table, parser, report
from pyro_blr.blr.rules import rule_from_name

ELBO_DRAWS = 64


def data(num_data: int, dim: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen)
    w = torch.randn(dim, generator=gen)
    w = 2.0 * w / w.norm()
    y = torch.bernoulli(torch.sigmoid(X @ w), generator=gen)
    return X.to(device), y.to(device)


def model(X: torch.Tensor, y: torch.Tensor) -> None:
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


def elbo(guide, X, y) -> tuple[float, float]:
    """The ELBO and its Monte Carlo standard error, from the same draws for every guide."""
    values = []
    with torch.no_grad():
        for draw in range(ELBO_DRAWS):
            pyro.set_rng_seed(10_000 + draw)
            values.append(-Trace_ELBO().loss(model, guide, X, y))
    return statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fit(method: str, X, y, steps: int, device: str) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    name, _, every = method.partition(" every ")
    if name.startswith("SVI"):
        guide = (AutoNormal if "AutoNormal" in name else AutoMultivariateNormal)(model)
        decay = 0.1 ** (1 / steps)
        svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.01, "lrd": decay}), Trace_ELBO())
        step = lambda: svi.step(X, y)  # noqa: E731
    elif "(AutoNormal)" in name:  # part 3: the rules' own defaults but lr
        guide = AutoNormal(model)
        rule = pb.VOGN(lr=0.2) if "vogn" in name else pb.VON(lr=0.2)
        blr = pb.BLR(model, guide, rule)
        step = lambda: blr.step(X, y)  # noqa: E731
    else:
        guide = AutoMultivariateNormal(model)
        rule = "newton" if "newton" in name else "von"
        blr = pb.BLR(model, guide, rule_from_name(rule, lr=0.2, hessian_every=int(every or 1)))
        step = lambda: blr.step(X, y)  # noqa: E731
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    value, error = elbo(guide, X, y)
    # The first step sets up (guide, vectorization probe): the cost per step is that of the rest.
    return {"method": method, "steps": steps, "ms": 1e3 * statistics.median(times[1:]),
            "mean ms": 1e3 * statistics.fmean(times[1:]), "seconds": sum(times), "elbo": value,
            "se": error}  # fmt: skip


def part(title: str, num_data: int, dim: int, plan: list[tuple[str, int]], device: str):
    X, y = data(num_data, dim, device)
    rows = [fit(method, X, y, steps, device) for method, steps in plan]
    base = next(r for r in rows if "AutoNormal" in r["method"])
    exact = next((r for r in rows if r["method"] == "BLR von"), None)
    table = markdown_table(
        ["method", "steps", "ms per step (median; mean)", "mean x Adam's", "wall s",
         "ELBO ± se", "ELBO - exact von's"],
        [
            [
                r["method"], r["steps"], f"{r['ms']:.1f}; {r['mean ms']:.1f}",
                f"{r['mean ms'] / base['mean ms']:.2f}", f"{r['seconds']:.1f}",
                f"{r['elbo']:.1f} ± {r['se']:.1f}",
                "-" if exact is None else f"{r['elbo'] - exact['elbo']:+.2f}",
            ]
            for r in rows
        ],
    )  # fmt: skip
    lines = [f"## {title}", "", f"N = {num_data}, D = {dim}.", "", *table, ""]
    return rows, lines


def main(smoke: bool = False, device: str = "cpu", num_data: int | None = None,
         dim: int | None = None, which: str = "all",
         steps: int | None = None) -> list[dict]:  # fmt: skip
    if smoke:
        n1, d1, n2, d2, adam, von = 2000, 10, 500, 40, 60, 21
        n3, d3 = 600, 80
    else:  # steps 2 .. 101 hold exactly two Hessians of a fit with hessian_every=50
        n1, d1, n2, d2, adam, von = num_data or 10**6, dim or 100, 10**4, 1000, 2000, 101
        n3, d3 = 10**4, 1000
    if steps:
        adam, von = 20 * steps, steps
    plan1 = [
        ("SVI + Adam (AutoNormal)", adam),
        ("SVI + Adam (AutoMultivariateNormal)", adam),
        ("BLR von", von),
        ("BLR von every 10", von),
        ("BLR von every 50", von),
        ("BLR newton", von),
        ("BLR newton every 10", von),
        ("BLR newton every 50", von),
    ]
    plan2 = [
        ("SVI + Adam (AutoNormal)", adam),
        ("SVI + Adam (AutoMultivariateNormal)", adam),
        ("BLR von", von),
        ("BLR von every 10", von),
        ("BLR von every 50", von),
    ]
    plan3 = [
        ("SVI + Adam (AutoNormal)", adam),
        ("BLR von (AutoNormal)", von),
        ("BLR vogn (AutoNormal)", von),
    ]
    parts = {
        "many-data": ("Many data", n1, d1, plan1),
        "full": ("A full covariance in many dimensions", n2, d2, plan2),
        "diagonal": ("Diagonal guides in many dimensions", n3, d3, plan3),
    }
    chosen = ["many-data", "full"] if which == "all" else [which]
    rows, body = [], []
    for key in chosen:
        part_rows, part_lines = part(*parts[key][:3], parts[key][3], device)
        rows += part_rows
        body += part_lines
    lines = [
        "# What exact curvature costs, and what hessian_every buys back",
        "",
        machine("curvature_cost", smoke) + f" Device {device}, float32. BLR: lr 0.2 "
        "(constant; the fit ends at the average of its second half), two antithetic particles "
        "for von. SVI + Adam: lr 0.01 decayed tenfold over the run. ELBO: the same "
        f"{ELBO_DRAWS} draws for every fit; `- exact von's` is the difference from `BLR von` "
        "(the exact Hessian at every step) under those common draws.",
        "",
        *body,
    ]
    report(lines, "curvature_cost" + ("" if which == "all" else f"_{which}"), smoke)
    return rows


if __name__ == "__main__":
    command_line = parser(__doc__, "toy sizes; writes nothing")
    command_line.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    command_line.add_argument("--n", type=int, default=None, help="part 1's N (10^6)")
    command_line.add_argument("--d", type=int, default=None, help="part 1's D (100)")
    command_line.add_argument("--part", default="all",
                              choices=["all", "many-data", "full", "diagonal"])  # fmt: skip
    command_line.add_argument("--steps", type=int, default=None, help="BLR steps (101)")
    options = command_line.parse_args()
    main(options.smoke, options.device, options.n, options.d, options.part, options.steps)
