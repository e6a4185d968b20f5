"""Quickstart: Bayesian logistic regression on the breast-cancer data, fitted by the BLR.

An ordinary Pyro model and Pyro's own ``AutoMultivariateNormal`` guide; ``pb.BLR`` replaces
``pyro.infer.SVI`` and reaches the ELBO optimum in a few dozen natural-gradient steps. The same
model and guide fitted with SVI + Adam are printed for comparison.

Run: ``python examples/quickstart.py`` (``--smoke`` for a seconds-long check).
"""

from __future__ import annotations

import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from sklearn.datasets import load_breast_cancer
from tqdm.auto import tqdm

import pyro_blr as pb

try:  # imported as examples.quickstart (by the tests and benchmarks)
    from examples._report import smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/quickstart.py
    from _report import smoke_flag


def load_data() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Standardized features (569 x 30) and the 0/1 labels, from scikit-learn's package data."""
    data = load_breast_cancer()
    X = torch.tensor(data.data, dtype=torch.float32)
    X = (X - X.mean(0)) / X.std(0)
    return X, torch.tensor(data.target, dtype=torch.float32), list(data.feature_names)


def model(X: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Logistic regression with N(0, 1) weights and a N(0, 5^2) intercept."""
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(X.new_zeros(()), 5.0))
    with pyro.plate("data", X.shape[0]):
        logits = (X * w).sum(-1) + b  # broadcasts over batched particles
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def elbo(guide: AutoMultivariateNormal, X: torch.Tensor, y: torch.Tensor) -> float:
    """The ELBO, estimated with 1000 vectorized particles."""
    estimator = Trace_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        return -estimator.loss(model, guide, X, y)


def main(smoke: bool = False) -> dict:
    pyro.set_rng_seed(0)
    X, y, names = load_data()

    pyro.clear_param_store()
    guide = AutoMultivariateNormal(model)
    blr = pb.BLR(model, guide, pb.VON(lr=lambda t: 0.5 / (1 + t / 10), mc_samples=4))
    fit = blr.fit(X, y, num_steps=5 if smoke else 60, progress=not smoke)
    blr_elbo = elbo(guide, X, y)

    median = guide.median(X, y)
    sd = guide.get_posterior().stddev.detach()
    print(f"BLR (von, full covariance): {len(fit.losses)} steps in {fit.seconds:.2f} s")
    print(f"{'parameter':<26}{'mean':>9}{'sd':>9}")
    order = median["w"].abs().argsort(descending=True)[:8]
    for i in order.tolist():
        print(f"{'w[' + names[i] + ']':<26}{median['w'][i]:>9.3f}{sd[i]:>9.3f}")
    print(f"{'b':<26}{float(median['b']):>9.3f}{float(sd[-1]):>9.3f}")
    print(f"ELBO reached by BLR: {blr_elbo:.2f}")

    pyro.clear_param_store()
    adam_guide = AutoMultivariateNormal(model)
    svi = SVI(model, adam_guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    num_steps = 20 if smoke else 2000
    start = time.perf_counter()
    for _ in tqdm(range(num_steps), "SVI + Adam", disable=smoke):
        svi.step(X, y)
    adam_seconds = time.perf_counter() - start
    adam_elbo = elbo(adam_guide, X, y)
    print(f"SVI + Adam (lr 0.01), same guide: {num_steps} steps in {adam_seconds:.2f} s")
    print(f"ELBO reached by SVI + Adam: {adam_elbo:.2f}")
    return {"blr_elbo": blr_elbo, "adam_elbo": adam_elbo, "blr_seconds": fit.seconds}


if __name__ == "__main__":
    main(smoke_flag(__doc__, "a few steps only"))
