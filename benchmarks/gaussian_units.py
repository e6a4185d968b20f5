"""The Gaussian rules' defaults in other units, and Pyro's eight-schools example against a
reference: the figures behind tests/blr/test_units.py and tests/blr/test_start_bounds.py.

1. Bayesian linear regression (tests/scenarios.py, 50 data, 2 weights) with the response, the
   prior's scale and the noise in units of 1, 1e8 and 1e-8, fitted by IVON (3000 steps) and VON
   (300 steps) at their defaults from ``AutoNormal``: the mean's error in posterior sds and the
   ratio of the fitted scale to the mean-field optimum's.
2. Pyro's examples/eight_schools/svi.py model (pyro-ppl/pyro) with one tau per school, Pyro's
   validation off as in that example's Pyro 1.3: IVON's default fit (2000 steps at lr 0.1) and
   the reference, a long exact-Hessian VON fit (4000 steps, 16 draws a step, the second half's
   guides averaged).

Run: ``python benchmarks/gaussian_units.py [--quick]`` (prints the tables; a few minutes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyro_blr as pb
from pyro_blr.blr.rules import rule_from_name
from tests.scenarios import LinearRegression, linear_regression

Y = torch.tensor([28, 8, -3, 7, -1, 1, 18, 12], dtype=torch.float64)
SIGMA = torch.tensor([15, 10, 16, 11, 9, 11, 10, 18], dtype=torch.float64)


def schools(data):
    """examples/eight_schools/svi.py's model, one tau per school, in float64."""
    y, sigma = data[:, 0], data[:, 1]
    J = len(y)
    eta = pyro.sample("eta", dist.Normal(torch.zeros(J).double(), torch.ones(J).double()))
    mu = pyro.sample("mu", dist.Normal(torch.zeros(1).double(), 10 * torch.ones(1).double()))
    tau = pyro.sample("tau", dist.HalfCauchy(scale=25 * torch.ones(J).double()))
    pyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


def units(steps: dict[str, int]) -> None:
    base = linear_regression(num_data=50, dim=2)
    print("| rule | units | mean error (posterior sds) | scale / mean-field scale |")
    print("|---|---|---|---|")
    for rule in ("ivon", "von"):
        for c in (1.0, 1e8, 1e-8):
            s = LinearRegression(base.X, base.y * c, prior_scale=c, noise=base.noise * c)
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            guide = AutoNormal(s.model)
            blr = pb.BLR(s.model, guide, rule_from_name(rule, lr=0.1))
            for _ in range(steps[rule]):
                blr.step(s.X, s.y)
            sd = s.posterior_covariance.diagonal().sqrt()
            z = (guide.locs.w.detach() - s.posterior_mean) / sd
            ratio = guide.scales.w.detach() / s.posterior_precision.diagonal().rsqrt()
            print(f"| {rule} | {c:g} | {_fmt(z)} | {_fmt(ratio)} |")


def eight_schools(steps: int, reference_steps: int) -> None:
    pyro.enable_validation(False)
    data = torch.stack([Y, SIGMA], dim=1)
    fits = {}
    for name, rule, n, options in (
        ("ivon (default)", "ivon", steps, {}),
        ("reference: von", "von", reference_steps, {"mc_samples": 16}),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoNormal(schools)
        blr = pb.BLR(
            schools, guide, rule_from_name(rule, lr=0.1 if rule == "ivon" else 0.05, **options)
        )
        sums, count, loss = {}, 0, None
        for t in range(n):
            loss = blr.step(data)
            if rule == "von" and t >= n // 2:  # the reference averages its second half
                count += 1
                for site in ("eta", "mu", "tau"):
                    m = getattr(guide.locs, site).detach()
                    s = getattr(guide.scales, site).detach()
                    old = sums.get(site, (0.0, 0.0))
                    sums[site] = (old[0] + m, old[1] + s)
        if rule == "ivon":
            sums = {
                site: (getattr(guide.locs, site).detach(), getattr(guide.scales, site).detach())
                for site in ("eta", "mu", "tau")
            }
            count = 1
        fits[name] = ({k: (a / count, b / count) for k, (a, b) in sums.items()}, loss)
    pyro.enable_validation(True)
    for name, (fit, loss) in fits.items():
        print(f"\n{name}: last loss {loss:.4g}")
        for site, (loc, scale) in fit.items():
            label = "log tau" if site == "tau" else site
            print(f"  {label}: loc {_fmt(loc)}; sd {_fmt(scale)}")


def _fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in t.tolist()) + "]"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps")
    args = parser.parse_args()
    k = 10 if args.quick else 1
    units({"ivon": 3000 // k, "von": 300 // k})
    eight_schools(2000 // k, 4000 // k)
