"""posteriordb ``eight_schools-eight_schools_noncentered``: the non-centered eight schools.

mu ~ N(0, 5), tau ~ HalfCauchy(5), theta_trans[j] ~ N(0, 1), theta[j] = mu + tau theta_trans[j]
(recorded with ``pyro.deterministic``: the reference summarizes theta), y[j] ~ N(theta[j],
sigma[j]). All priors are proper.
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from benchmarks.posteriordb_models._data import read, tensor


def model(sigma: torch.Tensor, y: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(sigma.new_zeros(()), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(sigma.new_tensor(5.0)))
    with pyro.plate("school", sigma.shape[0]):
        theta_trans = pyro.sample("theta_trans", dist.Normal(sigma.new_zeros(()), 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_trans)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def load(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    data = read(folder)
    return tensor(data["sigma"]), tensor(data["y"])
