r"""The von Mises family, for circular sites (a von Mises prior).

.. math::
    q(x) = \frac{e^{\kappa\cos(x - m)}}{2\pi I_0(\kappa)}, \qquad
    T(x) = (\cos x, \sin x), \qquad \lambda = \kappa(\cos m, \sin m),

    A(\lambda) = \log 2\pi I_0(\lVert\lambda\rVert), \qquad
    \mu = R(\kappa)\,u, \qquad
    F = \nabla^2 A = R'(\kappa)\,u u^\top + \frac{R(\kappa)}{\kappa}(I - u u^\top),

with :math:`u = (\cos m, \sin m)`, :math:`R = I_1/I_0` and :math:`R' = 1 - R/\kappa - R^2`, and
domain :math:`\lambda \ne 0`. These maps are written in closed form, in float64 whatever the
dtype, rather than by differentiating :math:`A`: autograd of :math:`\log I_0` goes through
:math:`I_1/I_0 - 1`, which cancels (its sign is wrong from :math:`\kappa\approx 10^8` in float32
and :math:`10^{15}` in float64), and :math:`R'\approx 1/(2\kappa^2)` is a difference of numbers
near 1. Above :data:`ASYMPTOTIC_CONCENTRATION` the Bessel ratio comes from its asymptotic
series (Abramowitz & Stegun 9.7.1), whose truncation error is below :math:`10^{-13}` relative
there; :math:`\kappa = \lVert\lambda\rVert` is taken by ``hypot`` (no overflow of
:math:`\lambda_1^2 + \lambda_2^2`). Samples are reparameterized by
:class:`pyro_blr.distributions.VonMises` (implicit reparameterization).

References:
    | Handbook of Mathematical Functions (Abramowitz & Stegun, 1964), 9.7.1
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

__all__ = ["ASYMPTOTIC_CONCENTRATION", "RESOLVED_KL", "VonMisesFamily", "bessel_ratio"]

ASYMPTOTIC_CONCENTRATION = 1000.0
"""From this concentration on, :func:`bessel_ratio` uses the asymptotic series."""

RESOLVED_KL = 1e-3
r"""The largest KL (nats) by which round-off may move a natural-gradient step: see
:meth:`VonMisesFamily.check_resolved`."""


def bessel_ratio(kappa: Tensor) -> tuple[Tensor, Tensor]:
    r"""The gap :math:`1 - R(\kappa)` and the derivative :math:`R'(\kappa)` of the Bessel ratio
    :math:`R = I_1/I_0`, in float64, accurate for every :math:`\kappa > 0`.

    Below :data:`ASYMPTOTIC_CONCENTRATION`: :math:`R` from the exponentially scaled Bessel
    functions and :math:`R' = 1 - R/\kappa - R^2` (relative error below :math:`10^{-9}`).
    From it on, the asymptotic series

    .. math::
        1 - R = \tfrac1{2\kappa} + \tfrac1{8\kappa^2} + \tfrac1{8\kappa^3}
            + \tfrac{25}{128\kappa^4} + \tfrac{13}{32\kappa^5}, \qquad
        R' = \tfrac1{2\kappa^2} + \tfrac1{4\kappa^3} + \tfrac3{8\kappa^4}
            + \tfrac{25}{32\kappa^5} + \tfrac{65}{32\kappa^6}

    (relative error below :math:`10^{-13}`, checked against arbitrary-precision values).

    Example:
        >>> import torch
        >>> gap, slope = bessel_ratio(torch.tensor([1e20], dtype=torch.float64))
        >>> float(gap), float(slope)
        (5e-21, 5e-41)
    """
    kappa = kappa.double()
    large = kappa >= ASYMPTOTIC_CONCENTRATION
    small = torch.where(large, torch.ones_like(kappa), kappa)
    ratio = torch.special.i1e(small) / torch.special.i0e(small)
    direct_gap, direct_slope = 1 - ratio, 1 - ratio / small - ratio.square()
    inv = 1 / torch.where(large, kappa, torch.full_like(kappa, ASYMPTOTIC_CONCENTRATION))
    series_gap = inv * (1 / 2 + inv * (1 / 8 + inv * (1 / 8 + inv * (25 / 128 + inv * 13 / 32))))
    series_slope = inv.square() * (
        1 / 2 + inv * (1 / 4 + inv * (3 / 8 + inv * (25 / 32 + inv * 65 / 32)))
    )
    gap = torch.where(large, series_gap, direct_gap)
    return gap, torch.where(large, series_slope, direct_slope)


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
        return {"loc": torch.atan2(eta[..., 1], eta[..., 0]), "concentration": _norm(eta)}

    def log_normalizer(self, eta: Tensor) -> Tensor:
        kappa = _norm(eta)
        return math.log(2 * math.pi) + torch.log(torch.special.i0e(kappa)) + kappa

    def mean_params(self, eta: Tensor) -> Tensor:
        r""":math:`\mu = R(\kappa)\,u` in closed form (see the module docstring)."""
        eta = eta.detach()
        gap, _ = bessel_ratio(_norm(eta))
        return ((1 - gap).unsqueeze(-1) * _direction(eta)).to(eta.dtype)

    def fisher(self, eta: Tensor) -> Tensor:
        r""":math:`F = R'\,u u^\top + (R/\kappa)(I - u u^\top)` in closed form."""
        eta = eta.detach()
        kappa = _norm(eta).double()
        gap, slope = bessel_ratio(kappa)
        u = _direction(eta)
        radial = u.unsqueeze(-1) * u.unsqueeze(-2)
        eye = torch.eye(2, dtype=torch.float64, device=eta.device)
        tangential = ((1 - gap) / kappa)[..., None, None] * (eye - radial)
        return (slope[..., None, None] * radial + tangential).to(eta.dtype)

    def entropy(self, eta: Tensor) -> Tensor:
        r""":math:`\log 2\pi I_0(\kappa) - \kappa R(\kappa)
        = \log 2\pi + \log(e^{-\kappa}I_0(\kappa)) + \kappa(1 - R)`: no cancellation of
        :math:`\kappa` against :math:`\kappa R`."""
        kappa = _norm(eta)
        gap, _ = bessel_ratio(kappa)
        scaled = math.log(2 * math.pi) + torch.log(torch.special.i0e(kappa))
        return scaled + kappa * gap.to(kappa.dtype)

    def in_domain(self, eta: Tensor) -> Tensor:
        return _norm(eta) > 0

    def check_resolved(self, eta: Tensor) -> None:
        r"""Refuse a concentration whose natural-gradient step the dtype cannot resolve.

        The Fisher information's eigenvalues are :math:`R/\kappa \approx 1/\kappa` (along the
        circle) and :math:`R' \approx 1/(2\kappa^2)` (along :math:`\lambda`): condition number
        :math:`2\kappa`. Solving with it in a dtype of machine epsilon :math:`\epsilon` moves
        the step's radial component by about :math:`2\kappa^2\epsilon`, a KL of about
        :math:`(\kappa\epsilon)^2` nats; the draws' spread :math:`\kappa^{-1/2}` is lost in the
        round-off of the mean direction later still. Above :data:`RESOLVED_KL` the step (and so
        the fitted mean direction) would be round-off: :math:`\kappa \lesssim 2.6\times10^5`
        in float32, :math:`1.4\times 10^{14}` in float64.

        Raises:
            FloatingPointError: naming the concentration, the dtype and the fix.

        Example:
            >>> import torch
            >>> family = VonMisesFamily()
            >>> family.check_resolved(torch.tensor([1e5, 0.0]))  # float32 resolves it
            >>> try:
            ...     family.check_resolved(torch.tensor([1e20, 0.0]))
            ... except FloatingPointError as error:
            ...     print(str(error).split(" (")[0])
            von_mises: concentration 1e+20 is beyond what float32 resolves
        """
        kappa = _norm(eta.detach())
        eps = torch.finfo(eta.dtype).eps
        worst = float(kappa.max()) if kappa.numel() else 0.0
        if not (worst * eps) ** 2 <= RESOLVED_KL:
            floats = (torch.float32, torch.float64)
            reach = {t: RESOLVED_KL**0.5 / torch.finfo(t).eps for t in floats}
            dtype = str(eta.dtype).removeprefix("torch.")
            fix = (
                f"pass float64 data (it resolves concentrations up to {reach[torch.float64]:.2g})"
                if eta.dtype != torch.float64 and worst <= reach[torch.float64]
                else "no floating-point type resolves it: the site is a point for practical "
                "purposes; fix its value (pyro.condition) or lower the concentrations that pin it"
            )
            raise FloatingPointError(
                f"von_mises: concentration {worst:.3g} is beyond what {dtype} resolves (up to "
                f"{reach.get(eta.dtype, 0.0):.2g}): its natural-gradient step would be off by a KL "
                f"of about {(worst * eps) ** 2:.2g} nats (Fisher condition number 2*kappa); {fix}"
            )

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


def _norm(eta: Tensor) -> Tensor:
    """:math:`\\lVert\\lambda\\rVert` by ``hypot``: no overflow where the squares would."""
    return torch.hypot(eta[..., 0], eta[..., 1])


def _direction(eta: Tensor) -> Tensor:
    """The unit vector :math:`u = \\lambda / \\lVert\\lambda\\rVert`, in float64."""
    eta = eta.double()
    return eta / _norm(eta).unsqueeze(-1)
