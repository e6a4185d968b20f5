r"""Averaging the BLR's iterates, and a stopping rule, so that a fit ends at a good point.

With a constant step :math:`\rho` the iterates :math:`\lambda_t` do not converge: they jitter
around the optimum with Monte Carlo noise of order :math:`\sqrt\rho`. The BLR's update

.. math::
    \lambda_{t+1} = \lambda_t - \rho\,\big(\lambda_t + \widehat{\nabla_\mu \mathbb E_q[\ell]}\big)

is a stochastic-approximation step that is *linear* in the natural parameters :math:`\lambda`
(Khan & Rue 2023, Section 2), so the classical remedy applies there: the Polyak--Ruppert average
:math:`\bar\lambda = \tfrac1T\sum_{t} \lambda_t` of the last iterates has the noise of the mean
of :math:`T` steps (Polyak & Juditsky 1992). Natural parameters of a Gaussian are
:math:`(Sm, S)` up to a constant, and an average of precisions is a precision, so the averaged
guide is always valid; the same holds for the other exponential families, whose natural domains
are convex. (Averaging the mean and the scale instead would bias the spread: the mean of
:math:`S_t^{-1/2}` is not :math:`\bar S^{-1/2}`.)

References:
    | Acceleration of Stochastic Approximation by Averaging (Polyak & Juditsky, SIAM J. Control
      Optim. 1992) https://doi.org/10.1137/0330046
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

__all__ = ["IterateAverage", "converged"]


class IterateAverage:
    """A running average of a BLR driver's natural parameters, written into the guide on demand.

    :meth:`pyro_blr.BLR.fit` averages the second half of its steps by default; ``step()`` users
    call :meth:`update` after each step they want averaged and :meth:`write` at the end. Start
    averaging after the transient: early iterates, far from the optimum, would bias it.

    Args:
        blr: a :class:`pyro_blr.BLR` driver (after its first step).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> import pyro_blr as pb
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([1.0, 2.0, 3.0])
        >>> guide = AutoMultivariateNormal(model)
        >>> blr = pb.BLR(model, guide, lr=0.5, rule="von")
        >>> average = pb.blr.IterateAverage(blr)
        >>> for t in range(100):
        ...     loss = blr.step(y)
        ...     if t >= 50:  # average after the transient, as fit() does
        ...         average.update()
        >>> average.write()
        >>> round(float(guide.get_posterior().mean), 1)  # the exact posterior mean is 1.5
        1.5
    """

    def __init__(self, blr: Any):
        self.blr = blr
        self.count = 0
        self._sum: dict[str, Tensor] | None = None

    def reset(self) -> None:
        """Forget the iterates averaged so far."""
        self.count, self._sum = 0, None

    def update(self) -> None:
        """Add the guide's current natural parameters to the average."""
        state = self.blr._stepper.natural_state()
        if self._sum is None:
            self._sum = {k: v.detach().clone() for k, v in state.items()}
        else:
            for key, value in state.items():
                self._sum[key] += value.detach()
        self.count += 1

    def average(self) -> dict[str, Tensor]:
        """The average natural parameters of the iterates added so far."""
        if not self.count:
            raise ValueError("no iterate has been averaged yet: call update() after a step")
        return {key: value / self.count for key, value in self._sum.items()}

    def write(self) -> None:
        """Write the average into the guide (checked whole before anything is written)."""
        self.blr._stepper.load_natural_state(self.average())


def converged(losses: Sequence[float], window: int, tol: float) -> bool:
    """Whether the loss's moving average has stopped improving: the mean of the last ``window``
    losses is not below the mean of the ``window`` before them by more than ``tol`` (nats).

    Example:
        >>> converged([10.0, 9.0, 5.1, 5.0], window=2, tol=0.1)
        False
        >>> converged([5.2, 5.0, 5.1, 5.05], window=2, tol=0.1)
        True
    """
    if len(losses) < 2 * window:
        return False
    previous = math.fsum(losses[-2 * window : -window]) / window
    last = math.fsum(losses[-window:]) / window
    return previous - last < tol
