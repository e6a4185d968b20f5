r"""``SGD``: gradient descent as the Bayesian learning rule (Khan & Rue 2023, Section 1.3).

Take the Gaussian family with a **fixed** covariance, :math:`q = \mathcal N(m, \Sigma)`, and
the delta method (the expected gradient replaced by the gradient at the mean,
:math:`\mathbb E_q[\nabla\ell] \approx \nabla\ell(m)`). The natural parameter that moves is
:math:`\Sigma^{-1} m` and the BLR's step, multiplied through by :math:`\Sigma`, is gradient
descent,

.. math::
    m \leftarrow m - \rho\, \nabla\ell(m),

where the covariance is absorbed in the step size (Khan & Rue 2023, Eq. 7 with
:math:`\Sigma = I`). The covariance is not learned: the guide's scale is left as it is; it is
the family's fixed covariance, whose only role is to say which Gaussians the rule moves
between, and the fit is a point estimate (the MAP of the model's log joint), not a posterior.
Heavy-ball momentum (Polyak 1964) is ``torch.optim.SGD``'s, step for step.

See :class:`~pyro_blr.blr.rules.rmsprop.RMSprop` and :class:`~pyro_blr.blr.rules.adam.Adam`
for the adaptive optimizers and :class:`~pyro_blr.blr.rules.ogn.OGN` for Gauss--Newton at the
mean, whose covariance is learned.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
      (Section 1.3.1 and Table 1)
    | Some methods of speeding up the convergence of iteration methods (Polyak, USSR
      Computational Mathematics and Mathematical Physics, 1964)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_blr.blr.rules.base import Estimates, GaussianRule, GaussianState

__all__ = ["SGD", "SGDState", "sgd_update"]


class SGDState(NamedTuple):
    """The mean, the fixed precision (never moved) and the heavy-ball momentum buffer."""

    loc: Tensor
    precision: Tensor
    momentum: Tensor


def sgd_update(
    state: SGDState,
    grad: Tensor,
    lr: float,
    step: int,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
) -> SGDState:
    r"""One gradient-descent step on the mean of a fixed-covariance Gaussian.

    .. math::
        b &\leftarrow \mu b + (1-\tau)\, g \quad (b = g \text{ at step } 1), \\
        m &\leftarrow m - \rho\, (g + \mu b \text{ if Nesterov, else } b),

    with :math:`g = \nabla\ell(m)`, momentum :math:`\mu` and dampening :math:`\tau`: the
    update of ``torch.optim.SGD``, in the same order of operations. With :math:`\mu = 0` it is
    :math:`m \leftarrow m - \rho g`. The precision is returned unchanged.

    Args:
        state: mean, fixed precision and momentum buffer.
        grad: the gradient at the mean, shape ``(D,)``.
        lr: the step size :math:`\rho`.
        step: the 1-based step number (the buffer starts as the first gradient, as torch's).
        momentum: :math:`\mu`.
        dampening: :math:`\tau`.
        nesterov: Nesterov's momentum (Sutskever et al. 2013's form, as torch's).

    Example:
        >>> import torch
        >>> state = SGDState(torch.zeros(1), torch.ones(1), torch.zeros(1))
        >>> state = sgd_update(state, torch.tensor([2.0]), 0.1, step=1, momentum=0.9)
        >>> state = sgd_update(state, torch.tensor([2.0]), 0.1, step=2, momentum=0.9)
        >>> state.loc, state.momentum  # b = 2, then 0.9 * 2 + 2
        (tensor([-0.5800]), tensor([3.8000]))
    """
    buffer, direction = state.momentum, grad
    if momentum != 0:
        buffer = grad.clone() if step == 1 else buffer * momentum + (1 - dampening) * grad
        direction = grad + momentum * buffer if nesterov else buffer
    return SGDState(state.loc - lr * direction, state.precision, buffer)


class SGD(GaussianRule):
    r"""Gradient descent, with ``torch.optim.SGD``'s momentum, as a BLR (:func:`sgd_update`).

    The Gaussian family with fixed covariance and the delta method: ``pb.BLR(model, guide,
    pb.SGD(lr, momentum=...))`` takes the same steps as ``torch.optim.SGD(params, lr,
    momentum=...)`` on the model's negative log joint :math:`\ell` (the MAP loss: the prior is
    in :math:`\ell`, so a Normal prior of scale :math:`s` is torch's ``weight_decay`` of
    :math:`1/s^2`), to floating-point round-off. The guide's scale is never moved: it is the
    fixed covariance of the family, the limit in which the BLR is an optimizer; for a
    posterior use :class:`~pyro_blr.blr.rules.adam.Adam` with ``perturb=True`` (Vadam),
    :class:`~pyro_blr.blr.rules.ogn.OGN` (Gauss--Newton at the mean) or ``pb.IVON``.

    Args:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float``.
        momentum: the heavy-ball momentum :math:`\mu` (0: plain gradient descent).
        dampening: :math:`\tau`, the momentum's dampening.
        nesterov: Nesterov's momentum (needs ``momentum > 0`` and ``dampening = 0``).
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2`
            (torch's coupled ``weight_decay``).

    Note:
        The loss :meth:`pyro_blr.BLR.step` reports is the delta method's negative ELBO,
        :math:`\ell(m)` minus the fixed Gaussian's entropy (a constant). The steps are
        ``torch.optim``'s as long as the driver's step-back safeguard stays silent: a loss that
        rises by more than :math:`100 + 10(N + D)` nats (see :mod:`pyro_blr.blr.averaging`) is
        retaken with half the step size, which ``torch.optim`` would not do.

    References:
        | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562

    Example:
        >>> import pyro_blr as pb
        >>> from pyro_blr.blr.rules.sgd import SGD
        >>> SGD(lr=0.01, momentum=0.9)
        SGD(lr=0.01, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0)
    """

    name = "sgd"
    curvature = "none"
    at_mean = True
    full_covariance = True
    State = SGDState

    def __init__(
        self,
        lr: float | Callable[[int], float] = 0.01,
        *,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ):
        self._set(
            lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
        )
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(
                "SGD(nesterov=True) needs momentum > 0 and dampening = 0 (as torch.optim.SGD), "
                f"got momentum={self.momentum}, dampening={self.dampening}"
            )

    def init(self, params: GaussianState) -> SGDState:
        """The mean and the fixed precision, with an empty momentum buffer."""
        loc, precision = params
        return SGDState(loc, precision, torch.zeros_like(loc))

    def gaussian_update(self, state: SGDState, estimates: Estimates, lr: float) -> SGDState:
        return sgd_update(
            state, estimates.grad, lr, estimates.step, self.momentum, self.dampening,
            self.nesterov,
        )  # fmt: skip
