r"""The Dirichlet family, for sites on the probability simplex.

.. math::
    q(x) = \frac{\Gamma(\sum_i \alpha_i)}{\prod_i \Gamma(\alpha_i)} \prod_i x_i^{\alpha_i - 1},
    \qquad T(x) = \log x, \qquad \lambda = \alpha - 1,

    A(\lambda) = \sum_i \log\Gamma(\lambda_i + 1) - \log\Gamma\Big(\sum_i (\lambda_i + 1)\Big),
    \qquad \mu_i = \psi(\alpha_i) - \psi\Big(\sum_j \alpha_j\Big),

with domain :math:`\lambda > -1`. The natural parameters' last dimension is the categories, and
so is the concentration's (one event dimension). Samples are reparameterized by torch's implicit
reparameterization. It is the conjugate family of categorical probabilities.

References:
    | Estimating a Dirichlet distribution (Minka, 2000)
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_blr.families.base import POSITIVE, ExpFamily, site_support

__all__ = ["Dirichlet"]


class Dirichlet(ExpFamily):
    r"""Dirichlet(concentration :math:`\alpha`).

    Example:
        >>> import torch
        >>> family = Dirichlet()
        >>> eta = family.natural_params(torch.tensor([1.0, 2.0, 3.0]))
        >>> eta
        tensor([0., 1., 2.])
        >>> family.distribution(eta).mean
        tensor([0.1667, 0.3333, 0.5000])
    """

    name = "dirichlet"
    distribution_class = dist.Dirichlet
    param_constraints: ClassVar[dict] = {"concentration": POSITIVE}
    param_event_dims: ClassVar[dict] = {"concentration": 1}

    def natural_params(self, concentration: Tensor) -> Tensor:
        return concentration - 1

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"concentration": eta + 1}

    def log_normalizer(self, eta: Tensor) -> Tensor:
        alpha = eta + 1
        return torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha.sum(-1))

    def in_domain(self, eta: Tensor) -> Tensor:
        return (eta > -1).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x.log()

    def matches(self, fn: dist.Distribution) -> bool:
        """Sites on the simplex."""
        return site_support(fn) is constraints.simplex

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        r"""Mean ``value`` and total concentration :math:`\sum_i\alpha_i = 1/s^2`.

        Entries of ``value`` below the dtype's machine epsilon :math:`\epsilon` are raised to
        it (and the vector renormalized), so that no concentration underflows to zero.

        Example:
            >>> import torch
            >>> Dirichlet().initial_params(torch.tensor([0.25, 0.75]), 0.5)
            {'concentration': tensor([1., 3.])}
        """
        value = value.clamp_min(torch.finfo(value.dtype).eps)
        value = value / value.sum(-1, keepdim=True)
        return {"concentration": value / init_scale**2}
