r"""Step-size schedules for stochastic-gradient Langevin dynamics.

Welling & Teh (2011) ask of the steps :math:`\beta_t` the Robbins–Monro conditions

.. math::
    \sum_{t} \beta_t = \infty, \qquad \sum_t \beta_t^2 < \infty,

the first so that the chains travel arbitrarily far, the second so that the noise of the
stochastic gradients (of variance :math:`O(\beta_t^2)`) dies out against the injected noise (of
variance :math:`2\beta_t`), and with it the discretization bias: the draws then converge to the
posterior. :class:`RobbinsMonro` is the polynomial schedule
:math:`\beta_t = a (b + t)^{-\gamma}`, which meets both conditions exactly for
:math:`\gamma \in (1/2, 1]`.

References:
    | Bayesian Learning via Stochastic Gradient Langevin Dynamics (Welling & Teh, ICML 2011)
    | https://www.stat.berkeley.edu/~ywteh/publications/sgld.pdf
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RobbinsMonro", "as_schedule", "checked_step"]


@dataclass(frozen=True)
class RobbinsMonro:
    r"""The polynomially decaying step :math:`\beta_t = a\,(b + t)^{-\gamma}`, :math:`t = 0, 1,
    \dots`

    Args:
        a: the scale :math:`a > 0`.
        b: the offset :math:`b > 0` (the first step is :math:`a b^{-\gamma}`; a large :math:`b`
            keeps the early steps nearly constant).
        gamma: the decay :math:`\gamma \in (1/2, 1]`; outside it one Robbins–Monro condition
            fails (:math:`\gamma \le 1/2`: :math:`\sum\beta_t^2 = \infty`; :math:`\gamma > 1`:
            :math:`\sum\beta_t < \infty`).

    Raises:
        ValueError: ``a`` or ``b`` not positive and finite, or ``gamma`` outside
            :math:`(1/2, 1]`.

    Example:
        >>> schedule = RobbinsMonro(a=1.0, b=1.0, gamma=1.0)
        >>> [schedule(t) for t in range(3)]
        [1.0, 0.5, 0.3333333333333333]
        >>> round(RobbinsMonro.from_first(0.01, b=100.0, gamma=0.55)(0), 12)
        0.01
    """

    a: float
    b: float = 1.0
    gamma: float = 0.55

    def __post_init__(self) -> None:
        for name in ("a", "b"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"RobbinsMonro: {name} must be positive and finite, got {value!r}")
        gamma = self.gamma
        if not (isinstance(gamma, (int, float)) and 0.5 < gamma <= 1):
            raise ValueError(
                f"RobbinsMonro: gamma must lie in (0.5, 1], got {gamma!r}: gamma <= 0.5 makes "
                "sum(step**2) infinite (the gradient noise never dies out) and gamma > 1 makes "
                "sum(step) finite (the chains stop before they reach the posterior)"
            )

    @classmethod
    def from_first(cls, first: float, b: float = 1.0, gamma: float = 0.55) -> RobbinsMonro:
        r"""The schedule whose first step :math:`\beta_0 = a b^{-\gamma}` is ``first``."""
        return cls(first * b**gamma, b, gamma)

    def __call__(self, step: int) -> float:
        return self.a * (self.b + step) ** (-self.gamma)


def as_schedule(step_size: Any) -> Callable[[int], float]:
    """A step-size schedule ``step -> float`` from a positive float (a constant step) or a
    callable (e.g. :class:`RobbinsMonro`), whose values are checked where they are used.

    Raises:
        ValueError: a number that is not positive and finite, or anything else.

    Example:
        >>> as_schedule(0.1)(7)
        0.1
    """
    if callable(step_size):
        return step_size
    if isinstance(step_size, (int, float)) and not isinstance(step_size, bool):
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be positive and finite, got {step_size!r}")
        value = float(step_size)
        return lambda step: value
    raise ValueError(
        "step_size must be a positive float or a schedule step -> float (e.g. "
        f"pyro_blr.samplers.RobbinsMonro(a, b, gamma)), got {type(step_size).__name__}"
    )


def checked_step(schedule: Callable[[int], float], step: int) -> float:
    """The schedule's step at ``step``, refused unless positive and finite (naming the step)."""
    value = schedule(step)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"the step-size schedule returned {value!r} at step {step}: it must return a float"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"the step-size schedule returned {value} at step {step}: steps must be positive "
            "and finite"
        )
    return value
