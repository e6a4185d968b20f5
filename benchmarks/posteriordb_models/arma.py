"""posteriordb ``arma-arma11``: an ARMA(1, 1) time series.

mu ~ N(0, 10), phi ~ N(0, 2), theta ~ N(0, 2), sigma ~ HalfCauchy(2.5) (Stan's ``cauchy(0,
2.5)`` on a ``<lower=0>`` parameter). The one-step errors follow Stan's recursion, with
err[0] = 0: nu[1] = mu + phi mu, nu[t] = mu + phi y[t-1] + theta err[t-1], err[t] = y[t] - nu[t],
and err ~ N(0, sigma), which is y[t] ~ N(nu[t], sigma) with nu = y - err (the map y -> err has
unit Jacobian): the model observes y. All priors are proper; phi and theta are
unconstrained, as in the Stan program.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from benchmarks.posteriordb_models._data import read, tensor


def model(y: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 10.0))
    phi = pyro.sample("phi", dist.Normal(y.new_zeros(()), 2.0))
    theta = pyro.sample("theta", dist.Normal(y.new_zeros(()), 2.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(y.new_tensor(2.5)))
    # y[t] - mu - phi y[t-1] for every t (y[0] = 0 here; Stan's nu[1] uses mu, added below),
    # then the recursion on theta, one (..., 1) column per time step
    lagged = torch.cat([y.new_zeros(1), y[:-1]])
    innovation = y - mu - phi * lagged
    errors = [innovation[..., 0:1] - phi * mu]
    for t in range(1, y.shape[0]):
        errors.append(innovation[..., t : t + 1] - theta * errors[-1])
    with pyro.plate("time", y.shape[0]):
        nu = y - torch.cat(errors, -1)  # the one-step predictions
        pyro.sample("y", dist.Normal(nu, sigma), obs=y)


def load(folder: Path) -> tuple[torch.Tensor]:
    return (tensor(read(folder)["y"]),)
