r"""The Normal and LogNormal families of a single coordinate (the Gaussian's maps, reused).

.. math::
    T(x) = (x, x^2), \qquad \lambda = \Big(\frac{m}{\sigma^2}, -\frac1{2\sigma^2}\Big), \qquad
    A(\lambda) = -\frac{\lambda_1^2}{4\lambda_2} - \tfrac12\log(-2\lambda_2) + \tfrac12\log 2\pi,

with domain :math:`\lambda_2 < 0`. The maps are those of the diagonal Gaussian
(:data:`pyro_blr.families.gaussian.DIAGONAL`) on one coordinate: the Gaussian is described once.
The LogNormal is the Normal of :math:`\log x`, with base measure :math:`h(x) = 1/x`, so
:math:`T(x) = (\log x, \log^2 x)` and :math:`\mathbb E_q[\log h] = -m`.

A guide gives a Normal to every site on the real line and a LogNormal to a positive site on
request (``families={"site": "lognormal"}``).
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_blr.families.base import (
    POSITIVE,
    ExpFamily,
    clamp_positive,
    is_positive,
    site_support,
)
from pyro_blr.families.gaussian import DIAGONAL

__all__ = ["LogNormal", "Normal"]


def _split(eta: Tensor) -> tuple[Tensor, Tensor]:
    """The two natural parameters as length-one vectors, for the diagonal Gaussian's maps."""
    return eta[..., 0:1], eta[..., 1:2]


class Normal(ExpFamily):
    r"""Normal(loc :math:`m`, scale :math:`\sigma`) for sites on the real line.

    Example:
        >>> import torch
        >>> family = Normal()
        >>> eta = family.natural_params(torch.tensor(1.0), torch.tensor(0.5))
        >>> eta
        tensor([ 4., -2.])
        >>> family.params(eta)
        {'loc': tensor(1.), 'scale': tensor(0.5000)}
    """

    name = "normal"
    distribution_class = dist.Normal
    param_constraints: ClassVar[dict] = {"loc": constraints.real, "scale": POSITIVE}

    def natural_params(self, loc: Tensor, scale: Tensor) -> Tensor:
        eta1, eta2 = DIAGONAL.natural_params(loc, scale.pow(-2))
        return torch.stack([eta1, eta2], -1)

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        loc, precision = DIAGONAL.from_natural(eta[..., 0], eta[..., 1])
        return {"loc": loc, "scale": precision.rsqrt()}

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return DIAGONAL.log_normalizer(*_split(eta))

    def in_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 1] < 0

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x, x.square()], -1)

    def matches(self, fn: dist.Distribution) -> bool:
        """Sites on the whole real line (a von Mises site included: its support is real)."""
        return site_support(fn) is constraints.real

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        """Centred on ``value`` with scale ``init_scale``.

        Example:
            >>> import torch
            >>> Normal().initial_params(torch.tensor([0.0, 2.0]), 0.1)["scale"]
            tensor([0.1000, 0.1000])
        """
        return {"loc": value, "scale": torch.full_like(value, init_scale)}


class LogNormal(Normal):
    r"""LogNormal: a :class:`Normal` over :math:`\log x`, with base measure :math:`h(x) = 1/x`.

    Example:
        >>> import torch
        >>> family = LogNormal()
        >>> params = family.initial_params(torch.tensor(1.0), 0.1)
        >>> family.distribution(family.natural_params(*params.values())).mean
        tensor(1.0050)
    """

    name = "lognormal"
    distribution_class = dist.LogNormal

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return super().sufficient_statistics(x.log())

    def log_base_measure(self, x: Tensor) -> Tensor:
        return -x.log()

    def expected_log_base_measure(self, eta: Tensor) -> Tensor:
        return -self.params(eta)["loc"]

    def matches(self, fn: dist.Distribution) -> bool:
        """Sites on the positive half-line."""
        return is_positive(site_support(fn))

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        """Median ``value`` (clamped by :func:`~pyro_blr.families.base.clamp_positive`) and
        log-scale ``init_scale``."""
        return {"loc": clamp_positive(value).log(), "scale": torch.full_like(value, init_scale)}
