r"""The Gamma family, for sites on the positive half-line.

.. math::
    q(x) = \frac{\beta^\alpha}{\Gamma(\alpha)} x^{\alpha-1} e^{-\beta x}, \qquad
    T(x) = (\log x, x), \qquad \lambda = (\alpha - 1, -\beta),

    A(\lambda) = \log\Gamma(\lambda_1 + 1) - (\lambda_1 + 1)\log(-\lambda_2),
    \qquad \mu = \big(\psi(\alpha) - \log\beta,\; \alpha/\beta\big),

with domain :math:`\lambda_1 > -1,\ \lambda_2 < 0`. Samples are reparameterized by torch's
implicit reparameterization of the Gamma. It is the conjugate family of the Poisson rate and of
the Normal precision.
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_blr.families.base import POSITIVE, ExpFamily, clamp_positive, is_positive, site_support

__all__ = ["Gamma"]


class Gamma(ExpFamily):
    r"""Gamma(concentration :math:`\alpha`, rate :math:`\beta`).

    Example:
        >>> import torch
        >>> family = Gamma()
        >>> eta = family.natural_params(torch.tensor(3.0), torch.tensor(2.0))
        >>> eta
        tensor([ 2., -2.])
        >>> family.mean_params(eta)[1]  # E[x] = alpha / beta
        tensor(1.5000)
    """

    name = "gamma"
    distribution_class = dist.Gamma
    param_constraints: ClassVar[dict] = {"concentration": POSITIVE, "rate": POSITIVE}

    def natural_params(self, concentration: Tensor, rate: Tensor) -> Tensor:
        return torch.stack([concentration - 1, -rate], -1)

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"concentration": eta[..., 0] + 1, "rate": -eta[..., 1]}

    def log_normalizer(self, eta: Tensor) -> Tensor:
        alpha, rate = eta[..., 0] + 1, -eta[..., 1]
        return torch.lgamma(alpha) - alpha * torch.log(rate)

    def in_domain(self, eta: Tensor) -> Tensor:
        return (eta[..., 0] > -1) & (eta[..., 1] < 0)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x.log(), x], -1)

    def matches(self, fn: dist.Distribution) -> bool:
        """Sites on the positive half-line."""
        return is_positive(site_support(fn))

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        r"""Mean ``value`` and coefficient of variation ``init_scale``:
        :math:`\alpha = 1/s^2,\ \beta = \alpha / x_0`.

        ``value`` is first clamped by :func:`~pyro_blr.families.base.clamp_positive`, so a median
        that underflowed still gives a finite rate (at most :math:`\alpha/\epsilon`).

        Example:
            >>> import torch
            >>> Gamma().initial_params(torch.tensor(2.0), 0.5)
            {'concentration': tensor(4.), 'rate': tensor(2.)}
            >>> Gamma().initial_params(torch.tensor(1e-37), 0.1)["rate"] < 1e10
            tensor(True)
        """
        concentration = torch.full_like(value, 1 / init_scale**2)
        return {"concentration": concentration, "rate": concentration / clamp_positive(value)}
