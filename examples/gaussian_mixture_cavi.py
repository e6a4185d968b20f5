"""The univariate Gaussian mixture of Blei, Kucukelbir & McAuliffe (2017, Section 3): CAVI
against pyro_blr.

Model: cluster means mu_k ~ N(0, sigma^2), assignments c_i ~ Categorical(1/K),
x_i ~ N(mu_{c_i}, 1). The reference is the paper's closed-form coordinate-ascent VI (CAVI),
written out below, with q(mu_k) = N(m_k, s_k^2) and q(c_i) = Categorical(phi_i).

The Pyro model sums the assignments out (a ``MixtureSameFamily`` likelihood, the same joint over
the means), and the BLR fits Gaussian guides over the K means: a mean-field ``AutoNormal`` (rule
``"von"``, the family CAVI uses for the means) and a full-covariance ``AutoMultivariateNormal``.
Summing c out gives a tighter bound than CAVI's (it needs no q(c)), so the table reports both the
ELBO each method optimizes and the cluster means, which all should agree on.

Run: ``python examples/gaussian_mixture_cavi.py`` (writes
examples/results/gaussian_mixture_cavi.md; ``--smoke`` is quick).
"""

from __future__ import annotations

import math
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb

try:  # imported as examples.gaussian_mixture_cavi (by the tests and benchmarks)
    from examples._report import markdown_table, report, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/gaussian_mixture_cavi.py
    from _report import markdown_table, report, smoke_flag

K, SIGMA = 3, 5.0


def make_data(num: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Points from three unit-variance clusters at -4, 0 and 5."""
    means = torch.tensor([-4.0, 0.0, 5.0], dtype=torch.float64)
    labels = torch.randint(0, K, (num,))
    return means[labels] + torch.randn(num, dtype=torch.float64), means


def cavi(x: torch.Tensor, num_iters: int = 200) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Blei et al. (2017), Algorithm 2: returns m, s^2 and the ELBO of the last iterate."""
    m = x[torch.randperm(len(x))[:K]].clone()  # start the means at random data points
    s2 = torch.ones(K, dtype=x.dtype)
    for _ in range(num_iters):
        log_phi = x[:, None] * m - 0.5 * (s2 + m**2)
        phi = torch.softmax(log_phi, -1)
        s2 = 1 / (1 / SIGMA**2 + phi.sum(0))
        m = (phi * x[:, None]).sum(0) * s2
    # ELBO = E[log p(mu)] + E[log p(c)] + E[log p(x | c, mu)] - E[log q(mu)] - E[log q(c)]
    e_log_prior = (-0.5 * math.log(2 * math.pi * SIGMA**2) - 0.5 * (s2 + m**2) / SIGMA**2).sum()
    e_log_c = -len(x) * math.log(K)
    e_log_lik = (phi * (-0.5 * math.log(2 * math.pi) - 0.5 * ((x[:, None] - m) ** 2 + s2))).sum()
    entropy_mu = (0.5 * torch.log(2 * math.pi * math.e * s2)).sum()
    entropy_c = -(phi * torch.log(phi.clamp_min(1e-300))).sum()
    elbo = e_log_prior + e_log_c + e_log_lik + entropy_mu + entropy_c
    return m, s2, float(elbo)


def model(x: torch.Tensor) -> None:
    """The same joint with the assignments summed out."""
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(K), SIGMA).to_event(1))
    mix = dist.Categorical(logits=x.new_zeros(K))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.MixtureSameFamily(mix, dist.Normal(mu, 1.0)), obs=x)


def blr_fit(guide, x: torch.Tensor, start: torch.Tensor, num_steps: int, progress: bool = False):
    guide(x)
    loc = guide.loc if isinstance(guide, AutoMultivariateNormal) else guide.locs.mu_unconstrained
    with torch.no_grad():  # start next to where CAVI ended
        loc.copy_(start)
    blr = pb.BLR(model, guide, pb.VON(lr=lambda t: 0.5 / (1 + t / 20), mc_samples=8))
    return blr.fit(x, num_steps=num_steps, progress=progress).seconds


def main(smoke: bool = False) -> dict:
    pyro.set_rng_seed(0)
    x, true_means = make_data()
    start = time.perf_counter()
    m, _, cavi_elbo = cavi(x)
    rows = {"CAVI (Blei et al. 2017)": (m, cavi_elbo, time.perf_counter() - start)}
    start_means = m.sort().values + torch.tensor([1.0, -1.0, 1.0], dtype=x.dtype)
    elbo = Trace_ELBO(num_particles=2000, vectorize_particles=True)
    guides = {
        "AutoNormal + BLR": AutoNormal(model),
        "AutoMultivariateNormal + BLR": AutoMultivariateNormal(model),
    }
    for name, guide in guides.items():
        pyro.clear_param_store()
        seconds = blr_fit(guide, x, start_means, 10 if smoke else 100, progress=not smoke)
        means = guide.median(x)["mu"].detach()
        rows[name] = (means, -elbo.loss(model, guide, x), seconds)
    table = []
    for name, (means, value, seconds) in rows.items():
        shown = ", ".join(f"{v:.3f}" for v in means.sort().values.tolist())
        table.append((name, shown, f"{value:.2f}", f"{seconds:.2f}"))
    header = ["method", "cluster means (sorted)", "ELBO it optimizes", "seconds"]
    lines = [
        f"{len(x)} points from clusters at {true_means.tolist()}; K = {K}, sigma = {SIGMA}.",
        "",
        *markdown_table(header, table),
    ]
    report(lines, "gaussian_mixture_cavi", smoke)
    return rows


if __name__ == "__main__":
    main(smoke_flag(__doc__, "a few steps"))
