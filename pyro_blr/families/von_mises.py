r"""The von Mises family, for circular sites (a von Mises prior).

.. math::
    q(x) = \frac{e^{\kappa\cos(x - m)}}{2\pi I_0(\kappa)}, \qquad
    T(x) = (\cos x, \sin x), \qquad \lambda = \kappa(\cos m, \sin m),

    A(\lambda) = \log 2\pi I_0(\lVert\lambda\rVert), \qquad
    \mu = \frac{I_1(\kappa)}{I_0(\kappa)}(\cos m, \sin m),

with domain :math:`\lambda \ne 0`. :math:`\log I_0` is computed through the exponentially scaled
:math:`I_0` (no overflow for large :math:`\kappa`). Samples are reparameterized by
:class:`pyro_blr.distributions.VonMises` (implicit reparameterization).
"""

from __future__ import annotations

import math
from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_blr.distributions import VonMises
from pyro_blr.families.base import POSITIVE, ExpFamily

__all__ = ["VonMisesFamily"]


class VonMisesFamily(ExpFamily):
    r"""von Mises(loc :math:`m`, concentration :math:`\kappa`).

    Example:
        >>> import torch
        >>> family = VonMisesFamily()
        >>> eta = family.natural_params(torch.tensor(0.0), torch.tensor(2.0))
        >>> eta
        tensor([2., 0.])
        >>> family.params(eta)
        {'loc': tensor(0.), 'concentration': tensor(2.)}
    """

    name = "von_mises"
    distribution_class = VonMises
    param_constraints: ClassVar[dict] = {"loc": constraints.real, "concentration": POSITIVE}

    def natural_params(self, loc: Tensor, concentration: Tensor) -> Tensor:
        return concentration.unsqueeze(-1) * torch.stack([torch.cos(loc), torch.sin(loc)], -1)

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"loc": torch.atan2(eta[..., 1], eta[..., 0]), "concentration": eta.norm(dim=-1)}

    def log_normalizer(self, eta: Tensor) -> Tensor:
        kappa = eta.norm(dim=-1)
        return math.log(2 * math.pi) + torch.log(torch.special.i0e(kappa)) + kappa

    def in_domain(self, eta: Tensor) -> Tensor:
        return eta.norm(dim=-1) > 0

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([torch.cos(x), torch.sin(x)], -1)

    def matches(self, fn: dist.Distribution) -> bool:
        """Sites whose prior is a von Mises (torch's, Pyro's or this package's)."""
        base = fn.base_dist if isinstance(fn, dist.Independent) else fn
        return isinstance(base, torch.distributions.VonMises)

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        r"""Mean direction ``value`` and concentration :math:`1/s^2` (circular spread about
        ``init_scale`` radians).

        Example:
            >>> import torch
            >>> VonMisesFamily().initial_params(torch.tensor(1.0), 0.5)
            {'loc': tensor(1.), 'concentration': tensor(4.)}
        """
        return {"loc": value, "concentration": torch.full_like(value, 1 / init_scale**2)}
