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
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import pyro.util
import torch
from pyro.poutine import Trace
from torch import Tensor

from pyro_blr.core import num_observations, sample_sites

__all__ = [
    "Choice",
    "IterateAverage",
    "compare",
    "converged",
    "diverged",
    "diverging",
    "paired_estimates",
    "problem_size",
]

DIVERGE_NATS = 100.0
"""The rise (nats) above the run's best loss that is a divergence on any problem (see
:func:`diverging`), before :data:`DIVERGE_NATS_PER_UNIT` per datum and coordinate."""

DIVERGE_NATS_PER_UNIT = 10.0
"""The rise (nats) per observed datum and per latent coordinate that is a divergence."""


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
        >>> blr = pb.BLR(model, guide, pb.VON(lr=0.5))
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
        self.reset()

    def reset(self) -> None:
        """Forget the iterates averaged so far."""
        self._sum: dict[str, Tensor] | None = None  # of the iterates before the last one
        self._confirmed = 0
        self._last: tuple[int, dict[str, Tensor]] | None = None  # (step, the last iterate)

    @property
    def count(self) -> int:
        """How many iterates the average holds."""
        return self._confirmed + (self._last is not None)

    def update(self) -> None:
        """Add the guide's current natural parameters to the average. If the driver's last
        step stepped back (see :mod:`pyro_blr.blr.step_back`) from the iterate added after the
        step before, that iterate leaves the average: the driver rejected it."""
        step = self.blr.num_steps
        if self._last is not None:
            rejected = self.blr.stepped_back and self._last[0] == step - 1
            if not rejected:
                if self._sum is None:
                    self._sum = self._last[1]
                else:
                    for key, value in self._last[1].items():
                        self._sum[key] += value
                self._confirmed += 1
        state = self.blr.natural_state()
        self._last = (step, {k: v.detach().clone() for k, v in state.items()})

    def average(self) -> dict[str, Tensor]:
        """The average natural parameters of the iterates added so far."""
        if self._last is None:
            raise ValueError("no iterate has been averaged yet: call update() after a step")
        last = self._last[1]
        if self._sum is None:
            return {key: value.clone() for key, value in last.items()}
        return {key: (self._sum[key] + last[key]) / self.count for key in last}

    def write(self) -> None:
        """Write the average into the guide (checked whole before anything is written)."""
        self.blr.load_natural_state(self.average())


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


def diverged(
    losses: Sequence[float], window: int, *, size: float | None = None
) -> tuple[bool, float, float]:
    """Whether a run ended far above its best loss, with the two numbers compared.

    The run's best loss is compared with the mean of the losses that came *after* it (at most
    the last ``window``): a run whose loss climbed after its best and stayed up diverged; a run
    whose last loss is its best (a loss still falling, however steeply) did not, however few
    steps it took. A non-finite loss after the best, or no finite loss at all, is a divergence.

    Args:
        losses: the run's losses, in order.
        window: the most losses after the best to average.
        size: the problem's size :math:`N + D` (see :func:`diverging`).

    Returns:
        ``(diverged, mean of the losses after the best, best)``.

    Example:
        >>> diverged([5000.0, 900.0, 300.0, 120.0], window=20, size=3)[0]  # falling
        False
        >>> diverged([300.0, 120.0, 9000.0, 8000.0], window=20, size=3)
        (True, 8500.0, 120.0)
    """
    finite = [(loss, i) for i, loss in enumerate(losses) if math.isfinite(loss)]
    if not finite:
        return bool(losses), math.nan, math.nan
    best, where = min(finite)
    after = list(losses[where + 1 :])[-window:]
    if not after:
        return False, best, best
    final = math.fsum(after) / len(after)
    return diverging(best, final, size=size), final, best


def paired_estimates(
    candidates: Sequence[dict[str, Tensor]],
    write: Callable[[dict[str, Tensor]], None],
    estimate: Callable[[], Tensor],
) -> list[Tensor]:
    r"""Evaluate a Monte Carlo ``estimate`` at each candidate on the *same* random numbers.

    Each candidate (e.g. a guide's natural parameters) is written with ``write``, then the
    random generators are reset to where they were before the first one, so that every
    candidate sees the same draws (common random numbers): for a reparameterized guide
    :math:`\theta = T_\lambda(\epsilon)` the difference of two estimates has the variance of
    :math:`\log w_{\lambda_1}(\epsilon) - \log w_{\lambda_2}(\epsilon)`, small when the two
    are close, rather than the sum of their variances. The generators end where they started;
    the last candidate stays written.

    Args:
        candidates: the states to compare.
        write: puts one state into the guide.
        estimate: the per-draw values to compare (e.g. log importance weights), at the guide as
            written.

    Returns:
        ``estimate()`` at each candidate, in order.
    """
    state = pyro.util.get_rng_state()
    out = []
    try:
        for candidate in candidates:
            write(candidate)
            pyro.util.set_rng_state(state)
            out.append(estimate())
    finally:
        pyro.util.set_rng_state(state)
    return out


class Choice(NamedTuple):
    """How several candidates compared (see :func:`compare`).

    Attributes:
        best: the index of the candidate with the highest mean estimate.
        gains: each candidate's mean estimate minus the first candidate's (0 for the first).
        stderrs: the Monte Carlo standard error of each gain (paired draws).
        draws: the per-draw estimates, shape ``(candidates, draws)``, for the paired
            difference of any two candidates (this process's draws only).
    """

    best: int
    gains: list[float]
    stderrs: list[float]
    draws: Tensor


def compare(
    candidates: Sequence[dict[str, Tensor]],
    write: Callable[[dict[str, Tensor]], None],
    estimate: Callable[[], Tensor],
    reduce: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> Choice:
    r"""Compare candidates by their mean ``estimate`` on the same draws; write none of them.

    The candidates are compared by :func:`paired_estimates`: the gain of candidate :math:`c`
    over the first is the mean over draws of :math:`e_c(\epsilon_k) - e_0(\epsilon_k)` with
    its standard error. A candidate whose estimate is not finite never wins; on ties the
    earlier candidate wins. The first candidate is written last, so that the guide ends where
    it was when the first candidate is the guide's state.

    Args:
        candidates: the states to choose from (the first is the reference).
        write: puts one state into the guide.
        estimate: per-draw values (e.g. log importance weights) at the guide as written.
        reduce: averages the gains and standard errors over the ranks of a distributed run,
            so that every rank chooses alike.
    """
    values = paired_estimates(candidates[::-1], write, estimate)[::-1]  # ends at the first
    diffs = torch.stack([v - values[0] for v in values])
    gains = diffs.mean(1)
    stderrs = diffs.std(1) / math.sqrt(diffs.shape[1]) if diffs.shape[1] > 1 else 0 * gains
    if reduce is not None:
        gains, stderrs = reduce([gains, stderrs])
    gains = torch.where(torch.isnan(gains), -math.inf, gains)
    best = 0
    for i in range(1, len(candidates)):
        if gains[i] > gains[best]:
            best = i
    return Choice(best, gains.tolist(), stderrs.tolist(), torch.stack(values))


def diverging(best: float, loss: float, *, size: float | None = None) -> bool:
    r"""Whether a loss has climbed far above the best loss of the run so far.

    A change of the data's units by :math:`c` shifts every loss of a run by the same
    :math:`N\log c` nats, so the verdict looks at the rise :math:`L - L^\star` only, against a
    threshold in nats set by the size of the problem, never by :math:`|L^\star|`:

    .. math::
        L - L^\star > 100 + 10\,(N + D) \quad \text{nats},

    with :math:`N` the number of observed data and :math:`D` the number of latent values
    (``size`` = :math:`N + D`; :data:`DIVERGE_NATS` and :data:`DIVERGE_NATS_PER_UNIT`): 10 nats
    a datum and a coordinate, far beyond the Monte Carlo
    noise of a converging fit (at the optimum of a Gaussian posterior the loss of one draw has
    standard deviation :math:`\sqrt{D/2}`; a minibatch's scaled loss has one of order
    :math:`N/\sqrt B` nats), and reached within a few steps by a diverging one. Without
    ``size`` the older rule is used, a rise above :math:`10|L^\star| + 100`, which depends on the
    loss's additive constant (the data's units); it is kept for callers that do not know the
    problem's size yet.

    Args:
        best: the best (lowest) loss of the run so far.
        loss: the loss to judge; a NaN loss diverges.
        size: :math:`N + D` (see :func:`problem_size`).

    Example:
        >>> diverging(55.0, 3044.0, size=3), diverging(55.0, 60.0, size=3)
        (True, False)
        >>> shift = -1000 * math.log(1e8)  # the same run in other units: the same verdict
        >>> diverging(55.0 + shift, 3044.0 + shift, size=3)
        True
    """
    if size is None:
        return not loss - best <= 10 * abs(best) + 100  # a NaN loss diverges too
    return not loss - best <= DIVERGE_NATS + DIVERGE_NATS_PER_UNIT * size


def problem_size(trace: Trace) -> int:
    """The size :math:`N + D` that sets the divergence threshold of :func:`diverging`: the
    number of observed data (:func:`pyro_blr.core.num_observations`: a subsampled plate counts
    its full size) plus the number of latent values of a model ``trace``.

    Example:
        >>> import pyro, pyro.distributions as dist, pyro.poutine as poutine
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu.sum(), 1.0), obs=y)
        >>> problem_size(poutine.trace(model).get_trace(torch.zeros(5)))
        7
    """
    latent = sum(
        site["value"].numel()
        for _, site in sample_sites(trace, deterministic=False)
        if not site["is_observed"] and torch.is_tensor(site["value"])
    )
    return num_observations(trace) + latent
