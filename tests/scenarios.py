"""Models with exact answers, shared by the tests.

* Conjugate Bayesian linear regression: exact posterior mean, covariance and log evidence.
* Bayesian logistic regression: the exact ELBO of any Gaussian guide by Gauss-Hermite quadrature
  (each likelihood term depends on the weights only through a scalar projection), and the ELBO
  optimum of the full and the diagonal Gaussian family found by L-BFGS on that exact ELBO.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor


@dataclass
class LinearRegression:
    """y ~ N(X w, noise^2), w ~ N(0, prior_scale^2 I): everything in closed form."""

    X: Tensor
    y: Tensor
    prior_scale: float
    noise: float
    subsample_size: int | None = None

    def model(self, X: Tensor, y: Tensor) -> None:
        dim = X.shape[-1]
        w = pyro.sample("w", dist.Normal(X.new_zeros(dim), self.prior_scale).to_event(1))
        with pyro.plate("data", X.shape[0], subsample_size=self.subsample_size) as idx:
            mean = (X[idx] * w).sum(-1)
            pyro.sample("y", dist.Normal(mean, self.noise), obs=y[idx])

    @property
    def posterior_precision(self) -> Tensor:
        X = self.X
        eye = torch.eye(X.shape[1], dtype=X.dtype)
        return eye / self.prior_scale**2 + X.T @ X / self.noise**2

    @property
    def posterior_covariance(self) -> Tensor:
        return torch.linalg.inv(self.posterior_precision)

    @property
    def posterior_mean(self) -> Tensor:
        return self.posterior_covariance @ (self.X.T @ self.y) / self.noise**2

    @property
    def log_evidence(self) -> float:
        X = self.X
        cov = self.noise**2 * torch.eye(X.shape[0], dtype=X.dtype)
        cov = cov + self.prior_scale**2 * X @ X.T
        return float(dist.MultivariateNormal(torch.zeros_like(self.y), cov).log_prob(self.y))


def linear_regression(
    num_data: int = 20,
    dim: int = 3,
    dtype: torch.dtype = torch.float64,
    subsample_size: int | None = None,
    seed: int = 0,
) -> LinearRegression:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen, dtype=dtype)
    X[:, 1:] += 0.5 * X[:, :1]  # correlated columns: the posterior is not mean-field
    w = torch.randn(dim, generator=gen, dtype=dtype)
    y = X @ w + 0.5 * torch.randn(num_data, generator=gen, dtype=dtype)
    return LinearRegression(X, y, prior_scale=1.0, noise=0.5, subsample_size=subsample_size)


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(64)


@dataclass
class LogisticRegression:
    """y ~ Bernoulli(sigmoid(X w)), w ~ N(0, prior_scale^2 I)."""

    X: Tensor
    y: Tensor
    prior_scale: float

    def model(self, X: Tensor, y: Tensor) -> None:
        dim = X.shape[-1]
        w = pyro.sample("w", dist.Normal(X.new_zeros(dim), self.prior_scale).to_event(1))
        with pyro.plate("data", X.shape[0]):
            logits = (X * w).sum(-1)
            pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)

    def elbo(self, loc: Tensor, scale_tril: Tensor) -> Tensor:
        """The exact ELBO of q = N(loc, L L^T) (64-point Gauss-Hermite per datum)."""
        X, y = self.X, self.y
        nodes = torch.as_tensor(_GH_NODES, dtype=X.dtype)
        weights = torch.as_tensor(_GH_WEIGHTS, dtype=X.dtype) / math.sqrt(2 * math.pi)
        mean = X @ loc
        sd = (X @ scale_tril).norm(dim=-1)
        f = mean[:, None] + sd[:, None] * nodes
        log_lik = y[:, None] * f - torch.nn.functional.softplus(f)
        expected_log_lik = (log_lik * weights).sum()
        dim = X.shape[1]
        tau2 = self.prior_scale**2
        trace_cov = scale_tril.square().sum()
        expected_log_prior = -0.5 * (loc.square().sum() + trace_cov) / tau2
        expected_log_prior = expected_log_prior - 0.5 * dim * math.log(2 * math.pi * tau2)
        log_det = scale_tril.diagonal().abs().log().sum()
        entropy = 0.5 * dim * (1 + math.log(2 * math.pi)) + log_det
        return expected_log_lik + expected_log_prior + entropy

    def optimum(self, diagonal: bool) -> tuple[float, Tensor, Tensor]:
        """The best ELBO of the full or diagonal Gaussian family, its mean and scale_tril."""
        dim = self.X.shape[1]
        loc = torch.zeros(dim, dtype=self.X.dtype, requires_grad=True)
        raw = torch.zeros(dim if diagonal else dim * (dim + 1) // 2, dtype=self.X.dtype)
        raw.requires_grad_(True)
        rows, cols = torch.tril_indices(dim, dim)

        def scale_tril() -> Tensor:
            if diagonal:
                return torch.diag(raw.exp())
            L = torch.zeros(dim, dim, dtype=self.X.dtype)
            L = L.index_put((rows, cols), raw)
            return L - torch.diag(L.diagonal()) + torch.diag(L.diagonal().exp())

        opt = torch.optim.LBFGS(
            [loc, raw], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure() -> Tensor:
            opt.zero_grad()
            loss = -self.elbo(loc, scale_tril())
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        with torch.no_grad():
            L = scale_tril()
            return float(self.elbo(loc, L)), loc.detach().clone(), L


def logistic_regression(
    num_data: int = 100, dim: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0
) -> LogisticRegression:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen, dtype=dtype)
    X[:, 1:] += 0.7 * X[:, :1]
    w = torch.tensor([1.5, -1.0, 0.5][:dim] + [0.0] * max(0, dim - 3), dtype=dtype)
    y = torch.bernoulli(torch.sigmoid(X @ w), generator=gen)
    return LogisticRegression(X, y, prior_scale=2.0)


def constrained_model(x, y):
    """Real, positive and simplex latents, nested plates, a deterministic site."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.Gamma(torch.tensor(2.0, dtype=x.dtype), 2.0))
    probs = pyro.sample("probs", dist.Dirichlet(torch.ones(3, dtype=x.dtype)))
    with pyro.plate("groups", 2, dim=-2):
        offset = pyro.sample("offset", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate("data", x.shape[-1], dim=-1):
            mean = w[..., 0] * x + offset
            pyro.deterministic("mean", mean)
            pyro.sample("y", dist.Normal(mean, sigma), obs=y)
    pyro.sample("c", dist.Categorical(probs), obs=torch.tensor(1))
