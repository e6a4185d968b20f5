r"""Stepping back from a BLR step that made the fit diverge, for every rule.

Far from the posterior a Newton-like step can overshoot into a region where the log joint is
astronomically worse (a Poisson rate :math:`e^f` with :math:`f` too large, a scale parameter
pushed to where a covariance matrix is singular): the precision then explodes and the run never
returns. The BLR's own loss says so one step later at no extra cost: the negative ELBO
:math:`\hat L_{t+1}` estimated at the new guide :math:`q_{t+1}` has jumped far above the
estimate :math:`\hat L_t` at :math:`q_t` (see :func:`pyro_blr.blr.averaging.diverging`), or the
log joint, a gradient or a Hessian at its particles is not finite. The stepper then
*steps back*: it returns to :math:`q_t` and retakes that step from the same estimates with half
the step size,

.. math::
    q_{t+1} \leftarrow \operatorname{update}(q_t, \hat g_t, \hat H_t, \rho_t / 2^k),

halving again (``k`` = 1, 2, ...) while the retaken step still diverges, up to
:data:`MAX_STEP_BACKS` times; a step that is accepted resets ``k``. This is backtracking on the
step size (Nocedal & Wright 2006, Ch. 3) with the sufficient-decrease test replaced by a
divergence test, loose enough that Monte Carlo noise never triggers it. Every step back is
reported (:attr:`pyro_blr.BLR.step_backs`) and warned about once per fit: a fit that steps
back often wants a smaller ``lr``.

Two losses compare only on the same data, so the driver steps back only between steps on the
very same argument objects, unmodified in place, and never for a model that draws minibatches
(``subsample_size``: one minibatch's loss may rightly be far above the last one's). A state
written from outside (``load_state_dict``, an iterate average) has no step to retake. A
checkpoint holds the current state only: resumed from a checkpoint taken between a diverging
step and the step that would have stepped back from it, a run raises where the original would
have stepped back. The model's own parameters (``model_optim=``) skip their update when their ELBO
gradient at the new guide is not finite, so that the next step can step back; twice in a row
without a step back between, the error names them.

The Gaussian stepper keeps a :class:`StepBack` itself; the exponential-family and mixture
steppers use :class:`StepBacks`, the same mechanism as a wrapper around ``rule.update`` (see
:mod:`pyro_blr.blr.steppers.rule_state`), which retakes a step from the rule's state and
:class:`~pyro_blr.blr.rules.Estimates` as they were (natural parameters, mixture logits).

References:
    | Numerical Optimization, 2nd ed. (Nocedal & Wright, Springer 2006), Chapter 3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor

from pyro_blr.blr.averaging import diverging
from pyro_blr.core import DataStamp

__all__ = ["MAX_STEP_BACKS", "StepBack", "StepBacks", "data_stamp"]

MAX_STEP_BACKS = 10
"""How many times one step may be retaken (halved) before the fit is declared diverged."""


class StepBack(NamedTuple):
    """What retaking a step needs: the rule's state before it, the estimates it was taken
    from, its step size and number, the loss estimated at that state, how often the step has
    been halved so far, and the data it was taken on (the model's arguments with their tensors'
    in-place versions: a later loss compares with this one only on the same data).

    Example:
        >>> import torch
        >>> from pyro_blr.blr.rules import GaussianState
        >>> state = GaussianState(torch.zeros(1), torch.ones(1))
        >>> undo = StepBack(state, torch.ones(1), torch.ones(1), 0.5, 3, 12.0)
        >>> undo.halved().lr_now, undo.halved().halved().lr_now
        (0.25, 0.125)
    """

    state: Any
    grad: Tensor
    hess: Tensor
    lr: float
    step_number: int
    loss: float
    halvings: int = 0
    data: DataStamp | tuple = ()
    estimates: Any = None

    def same_data(self, args: tuple, kwargs: dict) -> bool:
        """Whether the model gets the very objects this step was taken on, unmodified in place
        (only then are two steps' losses comparable: a step on other data may well have a
        larger loss)."""
        return bool(self.data) and self.data.matches(args, kwargs)

    @property
    def lr_now(self) -> float:
        """The step size the step is retaken with."""
        return self.lr * 0.5**self.halvings

    @property
    def exhausted(self) -> bool:
        """Whether the step has been retaken :data:`MAX_STEP_BACKS` times already."""
        return self.halvings > MAX_STEP_BACKS

    def halved(self) -> StepBack:
        """The same step, to be retaken with half the step size."""
        return self._replace(halvings=self.halvings + 1)


def data_stamp(args: tuple, kwargs: dict) -> DataStamp:
    """The model's arguments and their tensors' in-place versions, inside containers too
    (:class:`pyro_blr.core.DataStamp`): what :meth:`StepBack.same_data` compares with."""
    return DataStamp.of(args, kwargs)


class StepBacks:
    """The step-back wrapper around a rule's update, as a stepper uses it.

    A stepper calls :meth:`keep_if` at the start of a step (forgetting the last step where the
    guide was written from outside or the data differ), :meth:`diverged` with the loss
    estimated at the current state, :meth:`retake` to step back, and :meth:`remember` after an
    ordinary step. ``enabled=False`` (a model that draws minibatches) never remembers a step.

    Example:
        >>> backs = StepBacks()
        >>> backs.remember("q0", None, 0.5, 1, 10.0, (), {})
        >>> backs.diverged(5000.0)
        'the loss rose to 5000'
        >>> taken = []
        >>> backs.retake(2, "the loss rose", lambda s, e, lr: taken.append((s, lr)), print)
        10.0
        >>> taken
        [('q0', 0.25)]
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.undo: StepBack | None = None

    def forget(self) -> None:
        """No step to retake (a state written from outside, a checkpoint restored)."""
        self.undo = None

    def keep_if(self, same_state: bool, args: tuple, kwargs: dict) -> None:
        """Keep the last step only where the guide still holds what it wrote
        (``same_state``) and the model gets the same data."""
        if self.undo is not None and not (same_state and self.undo.same_data(args, kwargs)):
            self.undo = None

    def diverged(self, loss: float) -> str | None:
        """Why the last step must be retaken (the loss at its result jumped far above the
        loss before it, see :func:`pyro_blr.blr.averaging.diverging`), or ``None``."""
        if self.undo is not None and diverging(self.undo.loss, loss):
            return f"the loss rose to {loss:.4g}"
        return None

    def remember(
        self,
        state: Any,
        estimates: Any,
        lr: float,
        step_number: int,
        loss: float,
        args: tuple,
        kwargs: dict,
    ) -> None:
        """Keep what retaking this step needs (nothing where step-back is disabled)."""
        if self.enabled:
            data = data_stamp(args, kwargs)
            self.undo = StepBack(
                state, None, None, lr, step_number, loss, data=data, estimates=estimates
            )

    def retake(
        self,
        step_number: int,
        reason: str,
        take: Callable[[Any, Any, float], None],
        restore: Callable[[Any], None],
    ) -> float:
        """Retake the last step from its state and estimates with half its step size:
        ``take(state, estimates, lr)`` writes the result (or raises with the guide
        unchanged). Returns the loss at the state returned to.

        Raises:
            FloatingPointError: the step was halved :data:`MAX_STEP_BACKS` times already; the
                guide is then written back to the state before it (``restore(state)``).
        """
        undo = self.undo.halved()
        if undo.exhausted:
            restore(undo.state)
            self.undo = None
            raise FloatingPointError(
                f"BLR step {step_number}: after step {undo.step_number} {reason}, and that step "
                f"diverged even at lr={undo.lr_now * 2:g} (lr={undo.lr:g} halved "
                f"{undo.halvings - 1} times): the fit diverged; lower lr or raise mc_samples. "
                f"The guide holds the state before step {undo.step_number}"
            )
        take(undo.state, undo.estimates, undo.lr_now)
        self.undo = undo
        return undo.loss
