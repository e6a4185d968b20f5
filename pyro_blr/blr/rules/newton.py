r"""``Newton``: the Bayesian learning rule by the delta method.

The expectations are replaced by their values at the mean, :math:`\mathbb E_q[\nabla\ell]
\approx \nabla\ell(m)` and :math:`\mathbb E_q[\nabla^2\ell] \approx \nabla^2\ell(m)`
(Khan & Rue 2023, Section 4.1): with :math:`\rho = 1` on a quadratic :math:`\ell` the step
lands on the exact Gaussian posterior.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from pyro_blr.blr.rules.base import (
    Estimates,
    GaussianRule,
    GaussianState,
    riemannian_precision_update,
)
from pyro_blr.families import gaussian_family, is_positive_definite

__all__ = ["Newton", "newton_update"]


def newton_update(state: GaussianState, grad: Tensor, hess: Tensor, lr: float) -> GaussianState:
    r"""One delta-method BLR step from the gradient and Hessian at the mean.

    .. math::
        S \leftarrow (1-\rho) S + \rho \nabla^2\ell(m), \qquad m \leftarrow m - \rho S^{-1}
        \nabla\ell(m).

    With :math:`\rho = 1` and a quadratic :math:`\ell` (a conjugate Gaussian model) the result is
    the exact posterior. Where the plain update would leave the positive-definite cone (an
    indefinite Hessian at the mean), the step uses :func:`riemannian_precision_update` instead.

    Example:
        >>> import torch
        >>> # l(t) = (t - 3)^2: one step with lr=1 lands on N(3, 1/2)
        >>> s = newton_update(GaussianState(torch.zeros(1), torch.ones(1)),
        ...                   torch.tensor([-6.0]), torch.tensor([2.0]), lr=1.0)
        >>> s.loc, s.precision
        (tensor([3.]), tensor([2.]))
    """
    precision = (1 - lr) * state.precision + lr * hess
    if not is_positive_definite(precision):
        precision = riemannian_precision_update(state.precision, hess, lr)
    loc = state.loc - lr * gaussian_family(precision).solve(precision, grad)
    return GaussianState(loc, precision)


class Newton(GaussianRule):
    r"""Newton's method as a BLR: gradient and exact Hessian at the mean, :func:`newton_update`.

    Args:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float``.
        hessian_every: compute the Hessian at least every this many steps and reuse it in
            between (see :class:`VON`).
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2`.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> import pyro_blr as pb
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> guide = AutoMultivariateNormal(model)
        >>> loss = pb.BLR(model, guide, pb.Newton(lr=1.0)).step(torch.tensor([1.0, 2.0, 3.0]))
        >>> posterior = guide.get_posterior()  # exact: N(6/4, 1/4)
        >>> print(f"{posterior.mean.item():.4f} {posterior.variance.item():.4f}")
        1.5000 0.2500
    """

    name = "newton"
    curvature = "hessian"
    at_mean = True

    def __init__(
        self,
        lr: float | Callable[[int], float] = 0.1,
        *,
        hessian_every: int = 1,
        weight_decay: float = 0.0,
    ):
        self._set(lr, hessian_every=hessian_every, weight_decay=weight_decay)

    def gaussian_update(self, state: GaussianState, estimates: Estimates, lr: float):
        return newton_update(state, estimates.grad, estimates.hess, lr)
