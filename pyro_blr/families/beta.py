r"""The Beta family, for sites in the unit interval.

.. math::
    q(x) = \frac{x^{a-1}(1-x)^{b-1}}{B(a, b)}, \qquad
    T(x) = (\log x, \log(1 - x)), \qquad \lambda = (a - 1, b - 1),

    A(\lambda) = \log\Gamma(\lambda_1+1) + \log\Gamma(\lambda_2+1)
        - \log\Gamma(\lambda_1+\lambda_2+2),
    \qquad \mu = \big(\psi(a) - \psi(a+b),\; \psi(b) - \psi(a+b)\big),

with domain :math:`\lambda > -1`. Samples are reparameterized by torch's implicit
reparameterization. It is the conjugate family of a Bernoulli or Binomial probability.
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_blr.families.base import POSITIVE, ExpFamily, clamp_unit, is_unit_interval, site_support

__all__ = ["Beta"]


class Beta(ExpFamily):
    r"""Beta(concentration1 :math:`a`, concentration0 :math:`b`).

    Example:
        >>> import torch
        >>> family = Beta()
        >>> eta = family.natural_params(torch.tensor(3.0), torch.tensor(5.0))
        >>> eta
        tensor([2., 4.])
        >>> family.distribution(eta).mean
        tensor(0.3750)
    """

    name = "beta"
    distribution_class = dist.Beta
    param_constraints: ClassVar[dict] = {"concentration1": POSITIVE, "concentration0": POSITIVE}

    def natural_params(self, concentration1: Tensor, concentration0: Tensor) -> Tensor:
        return torch.stack([concentration1 - 1, concentration0 - 1], -1)

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"concentration1": eta[..., 0] + 1, "concentration0": eta[..., 1] + 1}

    def log_normalizer(self, eta: Tensor) -> Tensor:
        a, b = eta[..., 0] + 1, eta[..., 1] + 1
        return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)

    def in_domain(self, eta: Tensor) -> Tensor:
        return (eta > -1).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x.log(), torch.log1p(-x)], -1)

    def matches(self, fn: dist.Distribution) -> bool:
        """Sites in the unit interval."""
        return is_unit_interval(site_support(fn))

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        r"""Mean ``value`` (clamped by :func:`~pyro_blr.families.base.clamp_unit`) and total
        concentration :math:`a + b = 1/s^2`.

        Example:
            >>> import torch
            >>> Beta().initial_params(torch.tensor(0.25), 0.5)
            {'concentration1': tensor(1.), 'concentration0': tensor(3.)}
        """
        value = clamp_unit(value)
        total = 1 / init_scale**2
        return {"concentration1": value * total, "concentration0": (1 - value) * total}
