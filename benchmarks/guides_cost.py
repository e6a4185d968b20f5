"""Time per step of the exponential-family and mixture guides against AutoNormal + SVI.

Same model for every row, one process: SVI + Adam + Trace_ELBO with AutoNormal as the baseline,
then AutoExpFamily (SVI, and BLR rule "expfamily") and AutoMixture (SVI, and BLR rule "mixture").

Run: ``python -m benchmarks.guides_cost`` (writes benchmarks/results/guides_cost.md);
``--smoke`` runs toy sizes.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_blr as pb
from benchmarks._report import machine, markdown_table, parser, report
from benchmarks.blr_vs_adam import per_step_ms
from pyro_blr.blr.rules import rule_from_name


def model(flips: torch.Tensor, counts: torch.Tensor) -> None:
    """A Beta-Bernoulli and a Gamma-Poisson site, 1000 observations each."""
    p = pyro.sample("p", dist.Beta(2.0, 3.0))
    rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
    with pyro.plate("flips", len(flips)):
        pyro.sample("flip", dist.Bernoulli(p), obs=flips)
    with pyro.plate("counts", len(counts)):
        pyro.sample("count", dist.Poisson(rate), obs=counts)


def main(smoke: bool = False) -> str:
    pyro.set_rng_seed(0)
    flips = torch.bernoulli(torch.full((1000,), 0.3))
    counts = torch.poisson(torch.full((1000,), 4.0))
    args = (flips, counts)
    num_steps = 10 if smoke else 300

    def svi(guide, particles):
        elbo = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
        step = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo).step
        return per_step_ms(lambda: step(*args), num_steps)

    def blr(guide, rule, particles):
        driver = pb.BLR(model, guide, rule_from_name(rule, lr=0.1, mc_samples=particles))
        return per_step_ms(lambda: driver.step(*args), num_steps)

    rows = []
    for particles in (1, 16) if not smoke else (2,):
        pyro.clear_param_store()
        base = svi(AutoNormal(model), particles)
        pyro.clear_param_store()
        rows.append(
            ("AutoExpFamily + SVI", particles, svi(pb.AutoExpFamily(model), particles), base)
        )
        pyro.clear_param_store()
        rows.append(("AutoExpFamily + BLR expfamily", particles,
                     blr(pb.AutoExpFamily(model), "expfamily", particles), base))  # fmt: skip
        pyro.clear_param_store()
        rows.append(("AutoMixture (K=3) + SVI", particles,
                     svi(pb.AutoMixture(model, num_components=3), particles), base))  # fmt: skip
        if particles % 2 == 0:
            pyro.clear_param_store()
            guide = pb.AutoMixture(model, num_components=3)
            # the mixture rule draws `particles` per component: K times the model evaluations
            rows.append(("AutoMixture (K=3) + BLR mixture", particles,
                         blr(guide, "mixture", particles), base))  # fmt: skip
    header = ["guide + driver", "particles", "ms per step", "AutoNormal + SVI (ms)", "ratio"]
    table = [
        (name, particles, f"{ms:.2f}", f"{base:.2f}", f"{ms / base:.2f}")
        for name, particles, ms, base in rows
    ]
    lines = [
        "# Exponential-family and mixture guides: cost per step",
        "",
        machine("guides_cost", smoke),
        "",
        *markdown_table(header, table),
    ]
    return report(lines, "guides_cost", smoke)


if __name__ == "__main__":
    main(parser(__doc__, "toy sizes, nothing written").parse_args().smoke)
