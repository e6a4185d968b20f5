r"""``RMSprop``: RMSprop as the Bayesian learning rule, and its weight-perturbed version.

Adam's derivation (:mod:`pyro_blr.blr.rules.adam`) without the bias corrections: the BLR on a
diagonal Gaussian with the squared gradients for the Hessian, a slowly moving average of them
(the scale vector), the square root of that average scaling the mean's step and, optionally,
heavy-ball momentum on the scaled step (Khan & Rue 2023, Section 4.2). At the mean it is
``torch.optim.RMSprop``'s update step for step; perturbed it draws from the posterior the
squared gradients imply, Vadam's :math:`\mathcal N(m, 1/(N(s + \delta)))`.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
      (Section 4.2 and Table 1)
    | Fast and Scalable Bayesian Deep Learning by Weight-Perturbation in Adam (Khan et al.,
      ICML 2018) https://arxiv.org/abs/1806.04854
    | Lecture 6e, Neural Networks for Machine Learning (Tieleman & Hinton, 2012)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_blr.blr.rules.adam import check_perturb_options, vadam_precision
from pyro_blr.blr.rules.base import Estimates, GaussianRule, GaussianState

__all__ = ["RMSprop", "RMSpropState", "rmsprop_update"]


class RMSpropState(NamedTuple):
    """The mean, the precision, the squared gradients' average and the momentum buffer."""

    loc: Tensor
    precision: Tensor
    second_moment: Tensor
    momentum: Tensor


def rmsprop_update(
    state: RMSpropState,
    grad: Tensor,
    squared_grad: Tensor,
    lr: float,
    step: int,
    alpha: float = 0.99,
    eps: float = 1e-8,
    momentum: float = 0.0,
    ess: float | None = None,
    prior_precision: Tensor | None = None,
) -> RMSpropState:
    r"""One RMSprop (``ess=None``) or perturbed RMSprop step on a diagonal Gaussian.

    .. math::
        v \leftarrow \alpha v + (1-\alpha)\, \widehat{g \circ g}, \qquad
        b \leftarrow \mu b + \frac{\hat g}{\sqrt v + \epsilon}, \qquad m \leftarrow m - \rho b

    (:math:`\mu = 0`: :math:`m \leftarrow m - \rho\, \hat g / (\sqrt v + \epsilon)`), the update
    of ``torch.optim.RMSprop`` in its order of operations. With ``ess`` the precision becomes
    :func:`~pyro_blr.blr.rules.adam.vadam_precision` of the bias-corrected
    :math:`v / (1-\alpha^t)`; without, it is returned unchanged.

    Args:
        state: mean, precision, squared-gradient average and momentum buffer.
        grad: the expected gradient :math:`\hat g`, shape ``(D,)``.
        squared_grad: the expected squared gradient :math:`\widehat{g\circ g}`, shape ``(D,)``.
        lr: the step size :math:`\rho`.
        step: the 1-based step number :math:`t` (for the precision's bias correction).
        alpha: the squared gradients' momentum :math:`\alpha`.
        eps: :math:`\epsilon`.
        momentum: the heavy-ball momentum :math:`\mu`.
        ess: the number of data :math:`N` for the perturbed rule's precision; ``None``:
            RMSprop.
        prior_precision: the prior's precision :math:`\delta` (with ``ess``).

    Example:
        >>> import torch
        >>> s = RMSpropState(torch.zeros(1), torch.ones(1), torch.zeros(1), torch.zeros(1))
        >>> rmsprop_update(s, torch.tensor([2.0]), torch.tensor([4.0]), 0.1, 1, alpha=0.75,
        ...                eps=0.0).loc  # v = 1, step 0.1 * 2 / 1
        tensor([-0.2000])
    """
    second = state.second_moment * alpha + (1 - alpha) * squared_grad
    denom = second.sqrt() + eps
    buffer = state.momentum
    if momentum > 0:
        buffer = buffer * momentum + grad / denom
        loc = state.loc - lr * buffer
    else:
        loc = state.loc - lr * (grad / denom)
    precision = state.precision
    if ess is not None:
        precision = vadam_precision(second / (1 - alpha**step), ess, prior_precision)
    return RMSpropState(loc, precision, second, buffer)


class RMSprop(GaussianRule):
    r"""RMSprop as a BLR, or its weight-perturbed version with ``perturb=True``
    (:func:`rmsprop_update`).

    ``perturb=False`` (the default): the gradient at the mean and the guide's scale left as it
    is (the family's fixed covariance): ``pb.BLR(model, guide, pb.RMSprop(lr, alpha=a, eps=e,
    momentum=mu))`` takes the steps of ``torch.optim.RMSprop(params, lr, alpha=a, eps=e,
    momentum=mu)`` on the model's negative log joint (a Normal prior of scale :math:`s` is
    torch's ``weight_decay`` of :math:`1/s^2`), to floating-point round-off (while the driver's
    step-back safeguard stays silent, see :class:`~pyro_blr.blr.rules.sgd.SGD`). torch's
    ``centered=True`` has no counterpart here.

    ``perturb=True``: the gradient and squared gradient averaged over draws from the guide,
    whose precision is Vadam's :math:`v/(1-\alpha^t)/N + \delta` (see
    :class:`~pyro_blr.blr.rules.adam.Adam`, whose notes on that precision apply).

    Args:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float``.
        alpha: the squared gradients' momentum.
        eps: :math:`\epsilon`.
        momentum: the heavy-ball momentum :math:`\mu` on the scaled step.
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2`.
        perturb: draw from the guide instead of taking the gradient at the mean.
        mc_samples: draws per step (``perturb=True`` only).
        antithetic: draw them in antithetic pairs (``perturb=True`` only).
        ess: the number of data :math:`N` of the precision, found from the model's plates when
            ``None`` (``perturb=True`` only).

    Example:
        >>> from pyro_blr.blr.rules.rmsprop import RMSprop
        >>> RMSprop(lr=0.01).alpha
        0.99
    """

    name = "rmsprop"
    curvature = "squared_gradient"
    full_covariance = False
    State = RMSpropState

    def __init__(
        self,
        lr: float | Callable[[int], float] = 0.01,
        *,
        alpha: float = 0.99,
        eps: float = 1e-8,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        perturb: bool = False,
        mc_samples: int = 2,
        antithetic: bool = True,
        ess: float | None = None,
    ):
        check_perturb_options(self, perturb, mc_samples, antithetic, ess)
        self.at_mean = not perturb  # the delta method unless perturbed
        self._set(
            lr,
            alpha=alpha,
            eps=eps,
            momentum=momentum,
            weight_decay=weight_decay,
            perturb=perturb,
            mc_samples=mc_samples,
            antithetic=antithetic,
            ess=ess,
        )

    def init(self, params: GaussianState) -> RMSpropState:
        """The mean and precision, with zero squared-gradient average and momentum."""
        loc, precision = params
        return RMSpropState(loc, precision, torch.zeros_like(loc), torch.zeros_like(loc))

    def gaussian_update(self, state: RMSpropState, estimates: Estimates, lr: float):
        ess = estimates.ess if self.perturb else None
        delta = estimates.prior_precision if self.perturb else None
        return rmsprop_update(
            state, estimates.grad, estimates.hess, lr, estimates.step, self.alpha, self.eps,
            self.momentum, ess, delta,
        )  # fmt: skip
