r"""``VON``: variational online Newton, the BLR with exact curvature.

.. math::
    S \leftarrow S + \rho G + \tfrac{\rho^2}2 G S^{-1} G,\quad G = \mathbb E_q[\nabla^2\ell] - S,
    \qquad m \leftarrow m - \rho S^{-1} \mathbb E_q[\nabla \ell],

the improved (Riemannian) precision update of Lin, Schmidt & Khan (2020), positive definite
whenever :math:`S` is, for any (even indefinite) Hessian estimate.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
    | Handling the Positive-Definite Constraint in the Bayesian Learning Rule (Lin, Schmidt &
      Khan, ICML 2020) https://arxiv.org/abs/2002.10060
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
from pyro_blr.families import gaussian_family

__all__ = ["VON", "von_update"]


def von_update(state: GaussianState, grad: Tensor, hess: Tensor, lr: float) -> GaussianState:
    r"""One variational online Newton step.

    .. math::
        S \leftarrow S + \rho G + \tfrac{\rho^2}2 G S^{-1} G,\quad G = \hat H - S, \qquad
        m \leftarrow m - \rho S^{-1} \hat g,

    where :math:`\hat g, \hat H` are Monte Carlo estimates of :math:`\mathbb E_q[\nabla\ell]` and
    :math:`\mathbb E_q[\nabla^2\ell]` (the Hessian's diagonal for a diagonal Gaussian).

    Args:
        state: the current mean and precision.
        grad: the expected gradient, shape ``(D,)``.
        hess: the expected Hessian, shaped like the precision.
        lr: the step size :math:`\rho \in (0, 1]`.

    Example:
        >>> import torch
        >>> s = von_update(GaussianState(torch.zeros(1), torch.ones(1)),
        ...                torch.tensor([-2.0]), torch.tensor([2.0]), lr=1.0)
        >>> s.precision, s.loc
        (tensor([2.5000]), tensor([0.8000]))
    """
    precision = riemannian_precision_update(state.precision, hess, lr)
    loc = state.loc - lr * gaussian_family(precision).solve(precision, grad)
    return GaussianState(loc, precision)


class VON(GaussianRule):
    r"""Variational online Newton: Monte Carlo expectations of the exact gradient and Hessian
    at draws from the guide, and the positive-definite precision step :func:`von_update`.

    On a diagonal guide the curvature is the Hessian's diagonal (see
    :mod:`pyro_blr.core.autodiff`): exact up to 64 coordinates, above that Hutchinson's unbiased
    estimate, whose noise the precision update's quadratic term turns into a bias towards
    larger precisions of about :math:`\tfrac\rho2 \operatorname{Var}(\hat h_i)/h_i^2`: on a
    conjugate regression with :math:`D = 100, N = 400` the variances came out 3.5% low (median)
    at ``lr=0.5`` and unbiased at ``lr=0.1``, 7% low at :math:`D = 200`, 1.6% with
    ``mc_samples=8``. For variances to a few percent above 64 coordinates, take ``lr`` at most
    0.1 near the end of the fit (a decaying schedule) or more ``mc_samples``. On
    ``AutoMultivariateNormal`` the whole Hessian, exactly.

    Args:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float``.
        mc_samples: draws per step.
        antithetic: draw them in antithetic pairs :math:`m \pm S^{-1/2}\epsilon` (exact
            expected gradients on a quadratic :math:`\ell`; needs an even ``mc_samples``).
        ess: the effective sample size of the automatic start (see :class:`IVON`).
        hess_init: where the precision starts at the first step (see :class:`IVON`):
            ``"auto"``, a per-datum curvature, or ``None`` to keep the guide's.
        hessian_every: compute the exact Hessian at least every this many steps and reuse
            the last one in between, sooner when the gradients show it is off by more than a
            factor of two (see :mod:`pyro_blr.blr.reused_hessian`); the fixed point is
            unchanged.
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2`
            on :math:`\ell`.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> import pyro_blr as pb
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> pyro.set_rng_seed(0)
        >>> guide = AutoMultivariateNormal(model)
        >>> blr = pb.BLR(model, guide, pb.VON(lr=0.5))
        >>> _ = blr.fit(torch.tensor([1.0, 2.0, 3.0]), num_steps=30, progress=False)
        >>> round(guide.get_posterior().mean.item(), 2)  # exact: 1.5
        1.5
    """

    name = "von"
    curvature = "hessian"

    def __init__(
        self,
        lr: float | Callable[[int], float] = 0.1,
        *,
        mc_samples: int = 2,
        antithetic: bool = True,
        ess: float | None = None,
        hess_init: float | str | None = "auto",
        hessian_every: int = 1,
        weight_decay: float = 0.0,
    ):
        self._set(
            lr,
            mc_samples=mc_samples,
            antithetic=antithetic,
            ess=ess,
            hess_init=hess_init,
            hessian_every=hessian_every,
            weight_decay=weight_decay,
        )

    def gaussian_update(self, state: GaussianState, estimates: Estimates, lr: float):
        return von_update(state, estimates.grad, estimates.hess, lr)
