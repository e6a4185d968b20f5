r"""A von Mises distribution with reparameterized samples (implicit reparameterization).

Samples are drawn by torch's rejection sampler and carry gradients by implicit
reparameterization (Figurnov, Mohamed & Mnih 2018): for :math:`z = \mu + x`, :math:`x` with CDF
:math:`F(x \mid \kappa)` on :math:`[-\pi, \pi)`,

.. math::
    \frac{\partial z}{\partial \mu} = 1, \qquad
    \frac{\partial z}{\partial \kappa} = -\frac{\partial F(x \mid \kappa)/\partial\kappa}{p(x \mid
    \kappa)}, \qquad
    \frac{\partial F}{\partial \kappa}(x) = \int_{-\pi}^{x} p(t \mid \kappa)\,(\cos t - A(\kappa))
    \,dt,

with :math:`A = I_1/I_0`. The integrals are computed by Gauss–Legendre quadrature split at the
mode and cut at 12 standard deviations; the CDF is exact to 1e-12 for kappa from 0.1 to 500
(tested against SciPy and arbitrary-precision quadrature).

References:
    | Implicit Reparameterization Gradients (Figurnov, Mohamed & Mnih, NeurIPS 2018)
    | https://arxiv.org/abs/1805.08498
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["VonMises", "von_mises_cdf"]

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(96)
_EMPTY = torch.Size()


def _log_normalizer(concentration: Tensor) -> Tensor:
    """log(2 pi I0(kappa)), stable for large kappa."""
    return math.log(2 * math.pi) + torch.log(torch.special.i0e(concentration)) + concentration


def _integrate(fn, lower: Tensor, upper: Tensor) -> Tensor:
    """Gauss-Legendre quadrature of fn over [lower, upper] (elementwise, broadcast)."""
    nodes = torch.as_tensor(_NODES, dtype=upper.dtype, device=upper.device)
    weights = torch.as_tensor(_WEIGHTS, dtype=upper.dtype, device=upper.device)
    half = (upper - lower).unsqueeze(-1) / 2
    points = (upper + lower).unsqueeze(-1) / 2 + half * nodes
    return (half * weights * fn(points)).sum(-1)


def _split_integral(fn, x: Tensor, concentration: Tensor) -> Tensor:
    """Integral over [-pi, x] of fn (a multiple of the centred density), split at the mode and
    cut at 12 standard deviations, past which the density is below exp(-72)."""
    width = torch.clamp(12 / concentration.sqrt(), max=math.pi).expand_as(x)
    x = torch.minimum(torch.maximum(x, -width), width)
    zero = torch.zeros_like(x)
    left = _integrate(fn, -width, torch.minimum(x, zero))
    right = _integrate(fn, zero, torch.maximum(x, zero))
    return left + right


def von_mises_cdf(x: Tensor, concentration: Tensor) -> Tensor:
    r"""CDF :math:`F(x \mid \kappa)` of a centred von Mises on :math:`[-\pi, \pi)`, by quadrature.

    Example:
        >>> import torch
        >>> round(float(von_mises_cdf(torch.tensor(0.0, dtype=torch.float64),
        ...                           torch.tensor(3.0, dtype=torch.float64))), 10)
        0.5
    """
    kappa = concentration.unsqueeze(-1)
    log_norm = _log_normalizer(kappa)
    return _split_integral(lambda t: torch.exp(kappa * torch.cos(t) - log_norm), x, concentration)


def _dcdf_dkappa(x: Tensor, concentration: Tensor) -> Tensor:
    kappa = concentration.unsqueeze(-1)
    log_norm = _log_normalizer(kappa)
    ratio = torch.special.i1e(kappa) / torch.special.i0e(kappa)
    return _split_integral(
        lambda t: torch.exp(kappa * torch.cos(t) - log_norm) * (torch.cos(t) - ratio),
        x,
        concentration,
    )


class _ImplicitVonMises(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loc: Tensor, concentration: Tensor, x: Tensor) -> Tensor:
        ctx.save_for_backward(concentration, x)
        return loc + x

    @staticmethod
    def backward(ctx, grad: Tensor):
        concentration, x = ctx.saved_tensors
        with torch.no_grad():
            log_density = concentration * torch.cos(x) - _log_normalizer(concentration)
            dz_dkappa = -_dcdf_dkappa(x, concentration) / log_density.exp()
        return grad, grad * dz_dkappa, None


class VonMises(dist.VonMises):
    r"""Pyro's von Mises with ``rsample``: gradients in ``loc`` and ``concentration`` by implicit
    reparameterization (see the module docstring). Samples lie in :math:`[\mu - \pi, \mu + \pi)`.

    Constructed like Pyro's: ``VonMises(loc, concentration)`` with mean direction :math:`\mu` and
    concentration :math:`\kappa > 0`.

    Example:
        >>> import torch
        >>> kappa = torch.tensor(2.0, requires_grad=True)
        >>> z = VonMises(torch.tensor(0.0), kappa).rsample((1000,))
        >>> torch.cos(z).mean().backward()  # d/dkappa E[cos z] = A'(kappa) > 0
        >>> bool(kappa.grad > 0)
        True
    """

    has_rsample = True

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`-2\kappa \sin^2\frac{z-\mu}{2} - \log(2\pi\, e^{-\kappa} I_0(\kappa))`
        (which is :math:`\kappa \cos(z-\mu) - \log(2\pi I_0(\kappa))`) by the exponentially
        scaled Bessel function: finite values and gradients for every :math:`\kappa > 0` (torch's
        polynomial branches give NaN gradients below about 1e-5) and no cancellation in float32
        for large :math:`\kappa`."""
        if self._validate_args:
            self._validate_sample(value)
        kappa = self.concentration
        log_scaled_normalizer = math.log(2 * math.pi) + torch.log(torch.special.i0e(kappa))
        half_angle = torch.sin((value - self.loc) / 2)
        return -2 * kappa * half_angle.square() - log_scaled_normalizer

    def rsample(self, sample_shape: torch.Size = _EMPTY) -> Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            x = super().sample(sample_shape) - self.loc  # centred draw, in [-pi, pi) about 0
            x = torch.remainder(x + math.pi, 2 * math.pi) - math.pi
        loc = self.loc.expand(shape)
        concentration = self.concentration.expand(shape)
        return _ImplicitVonMises.apply(loc, concentration, x)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(VonMises, _instance)
        return super().expand(batch_shape, _instance=new)
