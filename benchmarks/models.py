"""The benchmark models, written as Pyro users write them (broadcasting over particles)."""

from __future__ import annotations

import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

POSTERIORDB = Path(__file__).resolve().parents[2] / "shared" / "posteriordb"


def logistic_regression(X: torch.Tensor, y: torch.Tensor | None = None, subsample_size=None):
    """Logistic regression, N(0, 1) weights and a N(0, 5^2) intercept."""
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[-1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(X.new_zeros(()), 5.0))
    with pyro.plate("data", X.shape[0], subsample_size=subsample_size) as idx:
        logits = (X[idx] * w).sum(-1) + b
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=None if y is None else y[idx])


def bnn(
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    hidden: int = 50,
    subsample_size=None,
    activation=torch.tanh,
    noise_prior: tuple[float, float] = (1.0, 0.1),
    noise_head: bool = False,
):
    """One hidden layer, N(0, 1) weights and a Gamma(concentration, rate) noise precision.

    With ``noise_head`` the noise is input-dependent (heteroscedastic): a second output
    ``g(x) = 2 tanh(h(x) . v / 2)`` of the hidden layer, with N(0, 1) weights ``v``, scales the
    noise sd to ``precision^(-1/2) exp(g(x))``; bounded to a factor ``e^2`` either way so that
    no draw of ``v`` sends a datum's noise to 0 or infinity.
    """
    dim = X.shape[-1]
    zeros = X.new_zeros
    w1 = pyro.sample("w1", dist.Normal(zeros(dim, hidden), 1.0).to_event(2))
    b1 = pyro.sample("b1", dist.Normal(zeros(hidden), 1.0).to_event(1))
    w2 = pyro.sample("w2", dist.Normal(zeros(hidden), 1.0).to_event(1))
    b2 = pyro.sample("b2", dist.Normal(zeros(()), 1.0))
    concentration, rate = noise_prior
    precision = pyro.sample(
        "precision", dist.Gamma(X.new_tensor(concentration), X.new_tensor(rate))
    )
    v = pyro.sample("w_noise", dist.Normal(zeros(hidden), 1.0).to_event(1)) if noise_head else None
    with pyro.plate("data", X.shape[0], subsample_size=subsample_size) as idx:
        # (N, D, 1) * (..., 1, D, H): a global weight's size-1 plate slot meets the data.
        h = activation((X[idx].unsqueeze(-1) * w1).sum(-2) + b1)
        mean = pyro.deterministic("mean", (h * w2).sum(-1) + b2)
        scale = precision.rsqrt()
        if noise_head:
            scale = scale * torch.exp(2 * torch.tanh((h * v).sum(-1) / 2))
        pyro.sample("y", dist.Normal(mean, scale), obs=None if y is None else y[idx])


def sblrc_blr(X: torch.Tensor, y: torch.Tensor) -> None:
    """posteriordb sblrc-blr: beta ~ N(0, 10), sigma ~ HalfNormal(10), y ~ N(X beta, sigma)."""
    beta = pyro.sample("beta", dist.Normal(X.new_zeros(X.shape[-1]), 10.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(X.new_tensor(10.0)))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * beta).sum(-1), sigma), obs=y)


def wells_dist(dist_m: torch.Tensor, switched: torch.Tensor) -> None:
    """posteriordb wells_dist: switched ~ Bernoulli(logit(beta1 + beta2 dist)).

    Stan's flat priors become N(0, 1000^2): Pyro's autoguides initialize by sampling the prior.
    """
    beta = pyro.sample("beta", dist.Normal(dist_m.new_zeros(2), 1000.0).to_event(1))
    with pyro.plate("data", dist_m.shape[0]):
        logits = beta[..., 0] + beta[..., 1] * dist_m
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=switched)


def load_sblrc(dtype=torch.float64):
    data = json.loads((POSTERIORDB / "sblrc-blr" / "data.json").read_text())
    summary = json.loads((POSTERIORDB / "sblrc-blr" / "reference_summary.json").read_text())
    X = torch.tensor(data["X"], dtype=dtype)
    y = torch.tensor(data["y"], dtype=dtype)
    names = [f"beta[{i + 1}]" for i in range(X.shape[1])] + ["sigma"]
    mean = torch.tensor([summary[n]["mean"] for n in names], dtype=dtype)
    sd = torch.tensor([summary[n]["sd"] for n in names], dtype=dtype)
    return (X, y), mean, sd


def load_wells(dtype=torch.float64):
    """The wells data (distance in metres, switched). posteriordb has no reference draws for
    wells: ``benchmarks/posteriordb.py`` computes one by Pyro NUTS and caches it in
    ``benchmarks/results/wells_nuts.json``, the only wells reference the benchmarks use."""
    data = json.loads((POSTERIORDB / "wells_data-wells_dist" / "data.json").read_text())
    return torch.tensor(data["dist"], dtype=dtype), torch.tensor(data["switched"], dtype=dtype)
