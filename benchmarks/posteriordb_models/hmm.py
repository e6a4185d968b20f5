"""posteriordb ``hmm_example-hmm_example``: a two-state Gaussian hidden Markov model, its discrete
states marginalized by the forward algorithm written in the model (``pyro.factor``).

theta1, theta2 (the rows of the transition matrix) are uniform on the simplex -- Stan's
``simplex[K]`` without a prior statement, which is ``Dirichlet(1, 1)``, a proper prior. mu is
``positive_ordered`` with ``target += normal_lpdf(mu[1] | 3, 1) + normal_lpdf(mu[2] | 10, 1)``:
two Normal densities restricted to the cone 0 < mu[1] < mu[2]. The port drops the restriction
and samples mu ~ N((3, 10), I) on the real plane: ``pb.BLR`` traces the model from its prior,
which ``dist.ImproperUniform`` (the flat density on the cone) refuses. The two posteriors differ
only outside the cone, which the reference puts 13 sds away (mu[1] = 3.02, sd 0.22; mu[2] - mu[1]
= 5.8, about 23 sds): the same posterior to far below Monte Carlo error. (The restriction is
there in Stan to rule out label switching; the priors, 7 sds apart, already do here.) Observations
y[t] ~ N(mu[z_t], 1); as in the Stan program the first state has no initial distribution
(gamma[1, k] = log N(y[1] | mu[k], 1)).
"""

from __future__ import annotations

from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

from benchmarks.posteriordb_models._data import read, tensor


def model(y: torch.Tensor) -> None:
    ones = y.new_ones(2)
    theta1 = pyro.sample("theta1", dist.Dirichlet(ones))
    theta2 = pyro.sample("theta2", dist.Dirichlet(ones))
    mu = pyro.sample("mu", dist.Normal(y.new_tensor([3.0, 10.0]), 1.0).to_event(1))
    log_theta = torch.stack([theta1, theta2], -2).log()  # [j, k]: from state j to state k
    emission = dist.Normal(mu.unsqueeze(-2), 1.0).log_prob(y[:, None])  # [t, k]
    gamma = emission[..., 0, :]
    for t in range(1, y.shape[0]):
        gamma = torch.logsumexp(gamma[..., :, None] + log_theta, -2) + emission[..., t, :]
    pyro.factor("y", torch.logsumexp(gamma, -1))


def load(folder: Path) -> tuple[torch.Tensor]:
    return (tensor(read(folder)["y"]),)
