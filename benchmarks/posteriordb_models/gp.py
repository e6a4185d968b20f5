"""posteriordb ``gp_pois_regr-gp_pois_regr``: a latent Gaussian process with Poisson counts.

rho ~ Gamma(25, 4), alpha ~ HalfNormal(2) (Stan's ``normal(0, 2)`` on a ``<lower=0>``
parameter), f_tilde ~ N(0, I), f = L f_tilde with L the Cholesky factor of the squared-exponential
covariance alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) plus 1e-10 on the diagonal (Stan's
``gp_exp_quad_cov``), k[i] ~ Poisson(exp(f[i])) (``poisson_log``). ``f`` is recorded with
``pyro.deterministic``: the reference summarizes it. All priors are proper.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from benchmarks.posteriordb_models._data import read, tensor


def model(x: torch.Tensor, k: torch.Tensor) -> None:
    n = x.shape[0]
    rho = pyro.sample("rho", dist.Gamma(x.new_tensor(25.0), 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(x.new_tensor(2.0)))
    data = pyro.plate("data", n)
    with data:
        f_tilde = pyro.sample("f_tilde", dist.Normal(x.new_zeros(()), 1.0))
    squared_distance = (x[:, None] - x[None, :]) ** 2
    alpha, rho = alpha[..., None], rho[..., None]  # (..., 1, 1): batches of n x n matrices
    cov = alpha**2 * torch.exp(-0.5 * squared_distance / rho**2)
    cov = cov + 1e-10 * torch.eye(n, dtype=x.dtype, device=x.device)
    f = pyro.deterministic("f", (torch.linalg.cholesky(cov) @ f_tilde[..., None])[..., 0])
    with data:
        pyro.sample("k", dist.Poisson(f.exp()), obs=k)


def load(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    return tensor(data["x"]), tensor(data["k"])
