r"""``VOGN``: variational online Gauss--Newton.

VON's step (:func:`pyro_blr.blr.rules.von.von_update`) with the Hessian replaced by the
Gauss--Newton (empirical Fisher) sum of the per-datum gradients' outer products,
:math:`\sum_i \nabla\ell_i \nabla\ell_i^\top` (its diagonal, the squared gradients, for a
diagonal Gaussian), plus the curvature of the rest of :math:`\ell` (priors, log-Jacobians),
at draws from the guide. It is positive semi-definite and needs no second derivatives of the
likelihood.

References:
    | Fast and Scalable Bayesian Deep Learning by Weight-Perturbation in Adam (Khan et al., ICML
      2018) https://arxiv.org/abs/1806.04854
    | Practical Deep Learning with Bayesian Principles (Osawa et al., NeurIPS 2019)
      https://arxiv.org/abs/1906.02506
"""

from __future__ import annotations

from collections.abc import Callable

from pyro_blr.blr.rules.base import Estimates, GaussianRule, GaussianState
from pyro_blr.blr.rules.von import von_update

__all__ = ["VOGN"]


class VOGN(GaussianRule):
    r"""Variational online Gauss--Newton at draws from the guide.

    Args:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float``.
        mc_samples: draws per step.
        antithetic: draw them in antithetic pairs (needs an even ``mc_samples``).
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2`.

    Example:
        >>> import pyro_blr as pb
        >>> pb.VOGN(lr=0.2)
        VOGN(lr=0.2, mc_samples=2, antithetic=True, weight_decay=0.0)
    """

    name = "vogn"
    curvature = "ggn"
    vectorizes = False  # one run per particle, each reading per-datum gradients

    def __init__(
        self,
        lr: float | Callable[[int], float] = 0.1,
        *,
        mc_samples: int = 2,
        antithetic: bool = True,
        weight_decay: float = 0.0,
    ):
        self._set(lr, mc_samples=mc_samples, antithetic=antithetic, weight_decay=weight_decay)

    def gaussian_update(self, state: GaussianState, estimates: Estimates, lr: float):
        return von_update(state, estimates.grad, estimates.hess, lr)
