"""Figures for job P, "Pareto k-hat false alarms on fits that are right": run
``python benchmarks/pareto_false_alarms.py`` (about 20 s on one CPU).

For each fit it prints k-hat of the library (:func:`pyro_blr.core.pareto_khat` on
:func:`pyro_blr.core.log_weights`), k-hat of ArviZ's ``psislw`` called directly on log ratios
computed here independently (exact log density minus the guide's, on the guide's own
distribution), the raw weights' effective sample size over S and the sd of log r, at
S = 256 / 1000 / 10^4 / 10^5 and seeds 0-2; then log r along q's axis and its supremum.

* mixture: examples/multimodal_posterior.py, AutoMixture (K=2) fitted as there (300 steps).
* enumerated: the conformance idiom ``enumerated``, AutoMultivariateNormal fitted by 15 VON
  steps of lr 0.5 (the conformance proposal).
* cavi: examples/gaussian_mixture_cavi.py's AutoNormal and AutoMultivariateNormal fits (library
  k-hat only), and the k a mean-field Gaussian of a Gaussian posterior has in theory,
  1 - the least eigenvalue of the posterior precision scaled to a unit diagonal (from the
  full-covariance fit).
"""

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_blr as pb
from pyro_blr.core import log_weights, pareto_khat

F64 = torch.float64


def psislw_khat(log_r: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(az.psislw(log_r - log_r.max())[1])


def table(name, model, guide, args, enumerated, sample_q, log_p, log_q, axis):
    print(f"== {name}")
    for num in (256, 1000):
        rows = []
        for seed in range(3):
            pyro.set_rng_seed(seed)
            with torch.no_grad():
                w = log_weights(model, guide, args, {}, num, 1, False, enumerated).joint
            rows.append(round(pareto_khat(w.detach()), 2))
        print(f"  library k-hat, S={num}, seeds 0-2: {rows}")
    for num in (256, 1000, 10_000, 100_000):
        rows = []
        for seed in range(3):
            theta = sample_q(num, torch.Generator().manual_seed(seed))
            log_r = (log_p(theta) - log_q(theta)).numpy()
            weights = np.exp(log_r - log_r.max())
            ess = weights.sum() ** 2 / np.square(weights).sum() / num
            rows.append(f"{psislw_khat(log_r):.2f} (ESS/S {ess:.3f}, sd {log_r.std():.3f})")
        print(f"  az.psislw k-hat, S={num}: {rows}")
    zs = torch.arange(-8.0, 9.0)
    loc, scale = axis
    values = (log_p(loc + zs * scale) - log_q(loc + zs * scale)).tolist()
    print("  log r at loc + z sd, z = -8..8:", [round(v - values[8], 2) for v in values])
    grid = torch.linspace(loc - 40 * scale, loc + 40 * scale, 200_001, dtype=F64)
    log_r = log_p(grid) - log_q(grid)
    top = int(log_r.argmax())
    print(
        f"  sup log r - log r(loc) = {float(log_r[top]) - values[8]:.1f} nats at z = "
        f"{float((grid[top] - loc) / scale):.1f}"
    )
    # the exact ESS/S as S grows: (int p)^2 / int p^2 / q, by quadrature on the same grid
    lp, step = log_p(grid), math.log(float(grid[1] - grid[0]))
    log_ratio = 2 * torch.logsumexp(lp, 0) - torch.logsumexp(2 * lp - log_q(grid), 0) + step
    print(f"  exact ESS/S (S -> infinity) = exp({float(log_ratio):.1f})")


def mixture():
    from examples.multimodal_posterior import model

    pyro.set_rng_seed(0)
    y = 4.0 + 0.5 * torch.randn(8, dtype=F64)
    pyro.clear_param_store()
    guide = pb.AutoMixture(model, num_components=2)
    blr = pb.BLR(model, guide, pb.MixtureRule(lr=lambda t: 0.3 / (1 + t / 50), mc_samples=16))
    blr.fit(y, num_steps=300, progress=False)
    print(f"fit's closing check: {blr.pareto}")
    q = guide.get_posterior()
    locs, scales = q.locs.detach().flatten(), q.coord_scale.detach().flatten()
    logits = torch.log_softmax(q.component_logits.detach(), 0)

    def sample_q(num, gen):
        comp = torch.multinomial(logits.exp(), num, True, generator=gen)
        return locs[comp] + scales[comp] * torch.randn(num, generator=gen, dtype=F64)

    def log_p(t):
        return dist.Normal(0.0, 2.0).log_prob(t) + dist.Normal(t[:, None] ** 2, 0.5).log_prob(
            y
        ).sum(-1)

    def log_q(t):
        return torch.logsumexp(logits + dist.Normal(locs, scales).log_prob(t[:, None]), -1)

    axis = (float(locs[0]), float(scales[0]))
    table("mixture", model, guide, (y,), None, sample_q, log_p, log_q, axis)


def enumerated():
    gen = torch.Generator().manual_seed(6)
    z = torch.rand(15, generator=gen, dtype=F64) < 0.3
    y = 0.8 + 3.0 * z + torch.randn(15, generator=gen, dtype=F64)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample(
                "z", dist.Bernoulli(torch.tensor(0.3, dtype=F64)), infer={"enumerate": "parallel"}
            )
            pyro.sample("y", dist.Normal(mu + 3.0 * z, 1.0), obs=y)

    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(pyro.poutine.block(model, hide=["z"]))
    frozen = pyro.optim.SGD({"lr": 0.0})
    pb.BLR(model, guide, pb.VON(lr=0.5), model_optim=frozen).fit(y, num_steps=15, progress=False)
    post = guide.get_posterior()
    loc, scale = float(post.mean.detach()), float(post.covariance_matrix.detach().sqrt())

    def sample_q(num, gen):
        return loc + scale * torch.randn(num, generator=gen, dtype=F64)

    def log_p(m):
        comp = torch.stack(
            [
                math.log(0.7) + dist.Normal(m[:, None], 1.0).log_prob(y),
                math.log(0.3) + dist.Normal(m[:, None] + 3.0, 1.0).log_prob(y),
            ]
        )
        return dist.Normal(0.0, 1.0).log_prob(m) + torch.logsumexp(comp, 0).sum(-1)

    def log_q(m):
        return dist.Normal(loc, scale).log_prob(m)

    table("enumerated", model, guide, (y,), {"z"}, sample_q, log_p, log_q, (loc, scale))


def cavi():
    from pyro.infer.autoguide import AutoNormal

    from examples.gaussian_mixture_cavi import blr_fit, make_data, model
    from examples.gaussian_mixture_cavi import cavi as run_cavi

    print("== cavi")
    pyro.set_rng_seed(0)
    x, _ = make_data()
    start = run_cavi(x)[0].sort().values + torch.tensor([1.0, -1.0, 1.0], dtype=F64)
    for name, guide in {
        "AutoNormal": AutoNormal(model),
        "MVN": AutoMultivariateNormal(model),
    }.items():
        pyro.clear_param_store()
        blr_fit(guide, x, start, 100)
        for num in (256, 1000, 10_000):
            rows = []
            for seed in range(3):
                pyro.set_rng_seed(seed)
                with torch.no_grad():
                    rows.append(
                        round(
                            pareto_khat(log_weights(model, guide, (x,), {}, num, 1, False).joint), 2
                        )
                    )
            print(f"  {name} library k-hat, S={num}, seeds 0-2: {rows}")
    precision = torch.linalg.inv(guide.get_posterior().covariance_matrix.detach())
    d = precision.diagonal().rsqrt()
    k = 1 - float(torch.linalg.eigvalsh(d[:, None] * precision * d).min())
    print(f"  mean-field k in theory (Gaussian posterior): {k:.3f}")


if __name__ == "__main__":
    mixture()
    enumerated()
    cavi()
