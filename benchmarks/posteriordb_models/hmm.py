"""posteriordb ``hmm_example-hmm_example``: a two-state Gaussian hidden Markov model, its discrete
states marginalized by the forward algorithm written in the model (``pyro.factor``).

theta1, theta2 (the rows of the transition matrix) are uniform on the simplex -- Stan's
``simplex[K]`` without a prior statement, which is ``Dirichlet(1, 1)``, a proper prior. mu is
``positive_ordered`` with ``target += normal_lpdf(mu[1] | 3, 1) + normal_lpdf(mu[2] | 10, 1)``:
two Normal densities restricted to the cone 0 < mu[1] < mu[2], which :class:`PositiveOrderedNormal`
is (its support is Pyro's ``positive_ordered_vector``, so every method works in Stan's
unconstrained coordinates). Observations y[t] ~ N(mu[z_t], 1); as in the Stan program the first
state has no initial distribution (gamma[1, k] = log N(y[1] | mu[k], 1)).

The ordering matters. Without it (mu ~ N((3, 10), I) on the whole plane, the port before
2026-12-07) the likelihood is unchanged by swapping the labels (mu[1] with mu[2], theta1 with
theta2 reversed), so the posterior has a second mode, the reference with its labels swapped,
about 37 nats below it (the priors' penalty, 7 sds apart): negligible mass, but a local optimum
a fit started at the symmetric point mu[1] = mu[2] can end in. The BLR's defaults did (49
reference sds off, sd ratios 0.29-3.6, k-hat 0.63: the importance ratios of a Gaussian on one
mode say nothing of the other); see ``tests/benchmarks/test_hmm_port.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions.utils import broadcast_all

from benchmarks.posteriordb_models._data import read, tensor


class PositiveOrderedNormal(dist.TorchDistribution):
    r"""Independent Normals :math:`\mathcal N(\text{loc}_k, \text{scale}_k^2)` over the last
    dimension restricted to :math:`0 < x_1 < \dots < x_K`: Stan's ``positive_ordered[K] x`` with
    ``target += normal_lpdf(x[k] | loc[k], scale[k])``. ``log_prob`` is the Normals' log density,
    without the cone's normalizer :math:`\log P(0 < X_1 < \dots < X_K)` (as in Stan's
    ``target``; a constant, -0.0013 for this model's (3, 10)), and ``sample`` draws the Normals
    again until a draw lies in the cone (rejection: the accepted draws have the restricted
    density exactly).
    """

    arg_constraints: ClassVar[dict] = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.positive_ordered_vector
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale, validate_args=None):
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape[:-1], self.loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return PositiveOrderedNormal(self.loc.expand(shape), self.scale.expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return dist.Normal(self.loc, self.scale).log_prob(value).sum(-1)

    @torch.no_grad()
    def sample(self, sample_shape=()) -> torch.Tensor:
        normal = dist.Normal(self.loc, self.scale)
        sample_shape = torch.Size(sample_shape)
        out = normal.sample(sample_shape)
        for _ in range(1000):
            ok = (out[..., :1] > 0).all(-1) & (out.diff(dim=-1) > 0).all(-1)
            if ok.all():
                return out
            out = torch.where(ok[..., None], out, normal.sample(sample_shape))
        raise RuntimeError("PositiveOrderedNormal: the cone has almost no mass under loc, scale")


def model(y: torch.Tensor) -> None:
    ones = y.new_ones(2)
    theta1 = pyro.sample("theta1", dist.Dirichlet(ones))
    theta2 = pyro.sample("theta2", dist.Dirichlet(ones))
    mu = pyro.sample("mu", PositiveOrderedNormal(y.new_tensor([3.0, 10.0]), y.new_ones(2)))
    log_theta = torch.stack([theta1, theta2], -2).log()  # [j, k]: from state j to state k
    emission = dist.Normal(mu.unsqueeze(-2), 1.0).log_prob(y[:, None])  # [t, k]
    gamma = emission[..., 0, :]
    for t in range(1, y.shape[0]):
        gamma = torch.logsumexp(gamma[..., :, None] + log_theta, -2) + emission[..., t, :]
    pyro.factor("y", torch.logsumexp(gamma, -1))


def load(folder: Path) -> tuple[torch.Tensor]:
    return (tensor(read(folder)["y"]),)
