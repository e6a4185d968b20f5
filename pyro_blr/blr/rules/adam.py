r"""``Adam``: Adam as the Bayesian learning rule, and Vadam with its weight perturbation.

From the BLR on a diagonal Gaussian :math:`q = \mathcal N(m, \operatorname{diag}(S)^{-1})`
(Khan & Rue 2023, Section 4.2): replace the expected Hessian by the squared gradients
:math:`\hat g \circ \hat g` (an estimate of the diagonal Gauss--Newton matrix), keep a slowly
moving average of it, and make the talk's two choices that turn the resulting "RMSprop without
a square root" into Adam: the **square root** of that average scales the mean's step, and the
gradient gets a **heavy-ball momentum** (Khan et al. 2018, Section 3). With the gradient taken
at the mean (the delta method, ``perturb=False``) the update is ``torch.optim.Adam``'s step for
step; with the gradient at draws :math:`\theta \sim \mathcal N(m, 1/(N(s + \delta)))`
(``perturb=True``) it is Vadam, whose draws come from the posterior the squared gradients
imply.

References:
    | Fast and Scalable Bayesian Deep Learning by Weight-Perturbation in Adam (Khan, Nielsen,
      Tangkaratt, Lin, Gal & Srivastava, ICML 2018) https://arxiv.org/abs/1806.04854 (Figure 1)
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
      (Section 4.2 and Table 1)
    | Adam: A Method for Stochastic Optimization (Kingma & Ba, ICLR 2015)
      https://arxiv.org/abs/1412.6980
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_blr.blr.rules.base import Estimates, GaussianRule, GaussianState

__all__ = [
    "Adam",
    "AdamState",
    "adam_update",
    "check_perturb_options",
    "vadam_precision",
]


class AdamState(NamedTuple):
    """The mean, the precision, the gradient's momentum and the squared gradients' average."""

    loc: Tensor
    precision: Tensor
    momentum: Tensor
    second_moment: Tensor


def vadam_precision(second_moment: Tensor, ess: float, prior_precision: Tensor) -> Tensor:
    r"""The precision Vadam draws from: :math:`N(s + \tilde\delta) = v / N + \delta`.

    Vadam's :math:`s` averages the squared gradients of the per-datum loss and its
    :math:`\tilde\delta = \delta / N` is the prior's precision per datum; here :math:`v` averages
    the squared gradients of the whole negative log joint :math:`\ell` (``N`` times the per-datum
    loss), so :math:`s = v / N^2` and the precision is :math:`v / N + \delta`.

    Args:
        second_moment: the bias-corrected average :math:`v` of the squared gradients.
        ess: the number of data :math:`N`.
        prior_precision: the prior's precision :math:`\delta` per coordinate.

    Example:
        >>> import torch
        >>> vadam_precision(torch.tensor([400.0]), 100.0, torch.tensor([1.0]))
        tensor([5.])
    """
    return second_moment / ess + prior_precision


def adam_update(
    state: AdamState,
    grad: Tensor,
    squared_grad: Tensor,
    lr: float,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    ess: float | None = None,
    prior_precision: Tensor | None = None,
) -> AdamState:
    r"""One Adam (``ess=None``) or Vadam step on a diagonal Gaussian.

    .. math::
        b &\leftarrow \beta_1 b + (1-\beta_1)\, \hat g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2)\, \widehat{g \circ g}, \\
        m &\leftarrow m - \frac{\rho}{1-\beta_1^t}\,
            \frac{b}{\sqrt{v / (1-\beta_2^t)} + \epsilon},

    with :math:`\hat g` the expected gradient and :math:`\widehat{g\circ g}` the expected
    squared gradient (at the mean both are the gradient's: ``torch.optim.Adam``, in its order
    of operations). With ``ess`` the precision becomes Vadam's,
    :func:`vadam_precision` of :math:`v/(1-\beta_2^t)`; without, it is returned unchanged (the
    delta method's fixed covariance).

    Args:
        state: mean, precision, momentum and squared-gradient average.
        grad: :math:`\hat g`, shape ``(D,)``.
        squared_grad: :math:`\widehat{g \circ g}`, shape ``(D,)``.
        lr: the step size :math:`\rho`.
        step: the 1-based step number :math:`t` of the bias corrections.
        beta1: the gradient's momentum :math:`\beta_1`.
        beta2: the squared gradients' momentum :math:`\beta_2`.
        eps: :math:`\epsilon` (Vadam's is the prior's precision per datum).
        ess: the number of data :math:`N` for Vadam's precision; ``None``: Adam.
        prior_precision: the prior's precision :math:`\delta` (with ``ess``).

    Example:
        >>> import torch
        >>> s = AdamState(torch.zeros(1), torch.ones(1), torch.zeros(1), torch.zeros(1))
        >>> adam_update(s, torch.tensor([3.0]), torch.tensor([9.0]), 0.1, step=1, eps=0.0).loc
        tensor([-0.1000])
    """
    momentum = state.momentum.lerp(grad, 1 - beta1)
    second = state.second_moment * beta2 + (1 - beta2) * squared_grad
    correction2 = 1 - beta2**step
    denom = second.sqrt() / math.sqrt(correction2) + eps
    loc = state.loc - lr / (1 - beta1**step) * (momentum / denom)
    precision = state.precision
    if ess is not None:
        precision = vadam_precision(second / correction2, ess, prior_precision)
    return AdamState(loc, precision, momentum, second)


def check_perturb_options(rule: GaussianRule, perturb: bool, mc_samples, antithetic, ess) -> None:
    """Refuse the draw options of a rule that takes its gradient at the mean: they would be
    silently ignored."""
    given = {
        k: v
        for k, v, default in (
            ("mc_samples", mc_samples, 2),
            ("antithetic", antithetic, True),
            ("ess", ess, None),
        )
        if v != default
    }
    if not perturb and given:
        name = type(rule).__name__
        raise ValueError(
            f"{name}({', '.join(f'{k}={v!r}' for k, v in given.items())}) applies only to the "
            f"perturbed rule, which draws: pass perturb=True for Vadam's draws, or leave "
            f"{', '.join(given)} out for {name} at the mean (torch.optim.{name}'s steps)"
        )


class Adam(GaussianRule):
    r"""Adam as a BLR, or Vadam with ``perturb=True`` (:func:`adam_update`).

    ``perturb=False`` (the default): the delta method, the gradient at the mean and the
    guide's scale left as it is (the family's fixed covariance, as for
    :class:`~pyro_blr.blr.rules.sgd.SGD`): ``pb.BLR(model, guide, pb.Adam(lr, beta1=b1,
    beta2=b2, eps=e))`` takes the steps of ``torch.optim.Adam(params, lr, betas=(b1, b2),
    eps=e)`` on the model's negative log joint :math:`\ell` (the MAP loss; a Normal prior of
    scale :math:`s` is torch's coupled ``weight_decay`` of :math:`1/s^2`), to floating-point
    round-off (while the driver's step-back safeguard stays silent, see
    :class:`~pyro_blr.blr.rules.sgd.SGD`).

    ``perturb=True``: Vadam. Each step draws ``mc_samples`` particles from the guide, whose
    precision is :math:`v/N + \delta` (:func:`vadam_precision`; :math:`\delta` the diagonal of
    the prior's Hessian at the mean, exact: :math:`1/s^2` for a ``Normal(., s)`` prior, plus
    ``weight_decay``), and averages their gradients and squared gradients: the guide is then a
    posterior, which ``torch.optim.Adam`` lacks. A prior whose curvature is not positive at the
    mean (flat, improper) is refused naming its site.

    Args:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float``.
        beta1: the gradient's momentum (torch's ``betas[0]``).
        beta2: the squared gradients' momentum (torch's ``betas[1]``).
        eps: :math:`\epsilon` of the mean's step.
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2`
            (torch's coupled ``weight_decay``, not AdamW's).
        perturb: draw from the guide (Vadam) instead of taking the gradient at the mean.
        mc_samples: draws per step (``perturb=True`` only).
        antithetic: draw them in antithetic pairs (``perturb=True`` only).
        ess: the number of data :math:`N` of Vadam's precision, found from the model's plates
            when ``None`` (``perturb=True`` only).

    Note:
        Vadam's squared gradients stand for the per-datum squared gradients of the
        Gauss--Newton matrix (Khan et al. 2018, Section 3.3, the "gradient magnitude"
        approximation): the square of a minibatch's mean gradient is an unbiased stand-in
        only for minibatches of one datum, so Vadam's posterior is an approximation of an
        approximation; for the Gauss--Newton posterior itself use ``pb.VOGN``.
        In a distributed run each rank's squared gradients are averaged (not the square of the
        averaged gradient, which torch's DDP Adam takes). The rule does not drive latents
        local to a subsampled plate (its averages would be needed per datum).

    Example:
        >>> from pyro_blr.blr.rules.adam import Adam
        >>> Adam(lr=1e-3).perturb, Adam(lr=1e-3, perturb=True).at_mean
        (False, False)
    """

    name = "adam"
    curvature = "squared_gradient"
    full_covariance = False
    State = AdamState

    def __init__(
        self,
        lr: float | Callable[[int], float] = 1e-3,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
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
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            perturb=perturb,
            mc_samples=mc_samples,
            antithetic=antithetic,
            ess=ess,
        )

    def init(self, params: GaussianState) -> AdamState:
        """The mean and precision, with zero momentum and squared-gradient average."""
        loc, precision = params
        return AdamState(loc, precision, torch.zeros_like(loc), torch.zeros_like(loc))

    def gaussian_update(self, state: AdamState, estimates: Estimates, lr: float) -> AdamState:
        ess = estimates.ess if self.perturb else None
        delta = estimates.prior_precision if self.perturb else None
        return adam_update(
            state, estimates.grad, estimates.hess, lr, estimates.step, self.beta1, self.beta2,
            self.eps, ess, delta,
        )  # fmt: skip
