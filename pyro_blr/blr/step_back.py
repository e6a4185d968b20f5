r"""Stepping back from a Gaussian BLR step that made the fit diverge.

Far from the posterior a Newton-like step can overshoot into a region where the log joint is
astronomically worse (a Poisson rate :math:`e^f` with :math:`f` too large, a scale parameter
pushed to where a covariance matrix is singular): the precision then explodes and the run never
returns. The BLR's own loss says so one step later at no extra cost: the negative ELBO
:math:`\hat L_{t+1}` estimated at the new guide :math:`q_{t+1}` has jumped far above the
estimate :math:`\hat L_t` at :math:`q_t` (see :func:`pyro_blr.blr.averaging.diverging`), or the
log joint, a gradient or a Hessian at its particles is not finite. The Gaussian stepper then
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
have stepped back. The model's own parameters (``optim=``) skip their update when their ELBO
gradient at the new guide is not finite, so that the next step can step back; twice in a row
without a step back between, the error names them.

References:
    | Numerical Optimization, 2nd ed. (Nocedal & Wright, Springer 2006), Chapter 3
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor

__all__ = ["MAX_STEP_BACKS", "StepBack"]

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
    data: tuple = ()

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
