r"""``OGN``: online Gauss--Newton, VOGN's curvature at the mean.

The delta method (:class:`~pyro_blr.blr.rules.newton.Newton`'s update,
:func:`~pyro_blr.blr.rules.newton.newton_update`) with the Hessian of the likelihood replaced by
the Gauss--Newton sum of the per-datum gradients' outer products at the mean,

.. math::
    S \leftarrow (1-\rho) S + \rho \Big(\sum_i \nabla\ell_i(m)\nabla\ell_i(m)^\top
        + \nabla^2 r(m)\Big), \qquad m \leftarrow m - \rho S^{-1}\nabla\ell(m),

with :math:`r` the rest of :math:`\ell` (priors, log-Jacobians), whose Hessian is exact
(Khan & Rue 2023, Section 4.2, "online Gauss--Newton"). The curvature is positive
semi-definite; no draws, no second derivatives of the likelihood.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
"""

from __future__ import annotations

from collections.abc import Callable

from pyro_blr.blr.rules.base import Estimates, GaussianRule, GaussianState
from pyro_blr.blr.rules.newton import newton_update

__all__ = ["OGN"]


class OGN(GaussianRule):
    r"""Online Gauss--Newton: VOGN's curvature, at the mean.

    Args:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float``.
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2`.

    Example:
        >>> import pyro_blr as pb
        >>> pb.OGN(lr=0.5)
        OGN(lr=0.5, weight_decay=0.0)
    """

    name = "ogn"
    curvature = "ggn"
    at_mean = True
    vectorizes = False

    def __init__(self, lr: float | Callable[[int], float] = 0.1, *, weight_decay: float = 0.0):
        self._set(lr, weight_decay=weight_decay)

    def gaussian_update(self, state: GaussianState, estimates: Estimates, lr: float):
        return newton_update(state, estimates.grad, estimates.hess, lr)
