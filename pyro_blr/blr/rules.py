r"""Bayesian learning rule updates of a Gaussian, as pure functions over explicit states.

For a Gaussian :math:`q = \mathcal N(m, S^{-1})` and the negative log joint :math:`\ell`, the
Bayesian learning rule (Khan & Rue 2023) with step size :math:`\rho` is the natural-gradient step

.. math::
    S \leftarrow (1-\rho) S + \rho\, \mathbb E_q[\nabla^2 \ell], \qquad
    m \leftarrow m - \rho\, S^{-1} \mathbb E_q[\nabla \ell].

The rules differ in how the expectations are estimated and how :math:`S` is kept positive definite:

* ``"von"`` -- variational online Newton: Monte Carlo expectations of the exact gradient and
  Hessian, and the improved (Riemannian) precision update of Lin, Schmidt & Khan (2020),
  :math:`S \leftarrow S + \rho G + \tfrac{\rho^2}2 G S^{-1} G` with :math:`G = \hat H - S`, which is
  positive definite whenever :math:`S` is, for any (even indefinite) :math:`\hat H`.
* ``"vogn"`` -- variational online Gauss--Newton (Khan et al. 2018; Osawa et al. 2019):
  ``"von"``'s update with the Hessian replaced by the Gauss--Newton (empirical Fisher) sum of
  the per-datum gradients' outer products :math:`\sum_i \nabla\ell_i \nabla\ell_i^\top` (its
  diagonal, the squared gradients, for a diagonal Gaussian), which is positive semi-definite
  and needs no second derivatives.
* ``"newton"`` -- the delta method: gradient and Hessian at the mean; with :math:`\rho = 1` on a
  quadratic :math:`\ell` it lands on the exact Gaussian posterior in one step.
* ``"ivon"`` -- improved variational online Newton (Shen et al. 2024) for diagonal Gaussians: the
  gradient-only Hessian estimate, momentum and a positivity-preserving curvature average.
* ``"expfamily"`` -- any exponential family through its natural parameters,
  :math:`\lambda \leftarrow (1-\rho)\lambda - \rho\nabla_\mu\mathbb E_q[\ell]`.
* ``"mixture"`` -- mixtures of Gaussians or of exponential families (Lin, Khan & Schmidt 2019):
  a natural-gradient step per component and on the weights.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
    | Fast and Scalable Bayesian Deep Learning by Weight-Perturbation in Adam (Khan et al., ICML
      2018) https://arxiv.org/abs/1806.04854
    | Practical Deep Learning with Bayesian Principles (Osawa et al., NeurIPS 2019)
      https://arxiv.org/abs/1906.02506
    | Handling the Positive-Definite Constraint in the Bayesian Learning Rule (Lin, Schmidt &
      Khan, ICML 2020) https://arxiv.org/abs/2002.10060
    | Variational Learning is Effective for Large Deep Networks (Shen et al., ICML 2024)
      https://arxiv.org/abs/2402.17641
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_blr.families import ExpFamily, gaussian_family, is_positive_definite

__all__ = [
    "RULES",
    "GaussianState",
    "IVONState",
    "MixtureState",
    "Rule",
    "expfamily_update",
    "ivon_update",
    "mixture_logits_update",
    "mixture_update",
    "newton_update",
    "riemannian_precision_update",
    "von_update",
]


class GaussianState(NamedTuple):
    """A Gaussian's mean and precision (a vector when diagonal, a matrix when full)."""

    loc: Tensor
    precision: Tensor


class IVONState(NamedTuple):
    """IVON's mean, Hessian estimate :math:`h` (which is the precision) and gradient momentum."""

    loc: Tensor
    precision: Tensor
    momentum: Tensor


class MixtureState(NamedTuple):
    """A mixture of Gaussians: weight logits ``(K,)``, means ``(K, D)`` and precisions ``(K, D)``
    (diagonal) or ``(K, D, D)`` (full)."""

    logits: Tensor
    locs: Tensor
    precisions: Tensor


def riemannian_precision_update(precision: Tensor, hess: Tensor, lr: float) -> Tensor:
    r"""The improved precision update :math:`S + \rho G + \tfrac{\rho^2}{2} G S^{-1} G`.

    With :math:`G = \hat H - S`, this is :math:`\tfrac12 (S + \rho G) S^{-1} (S + \rho G) +
    \tfrac12 S`, a sum of a positive semi-definite and a positive definite matrix, so it stays
    positive definite for any symmetric :math:`\hat H`; it agrees with the plain BLR update to first
    order in :math:`\rho` (Lin, Schmidt & Khan 2020, Eq. 9).

    Example:
        >>> import torch
        >>> # an indefinite Hessian estimate still gives a positive precision
        >>> riemannian_precision_update(torch.tensor([1.0]), torch.tensor([-3.0]), 0.5)
        tensor([1.])
    """
    return _riemannian_step(precision, hess - precision, lr)


def _riemannian_step(precision: Tensor, g: Tensor, lr: float) -> Tensor:
    """:math:`S + \rho G + \tfrac{\rho^2}{2} G S^{-1} G` for a natural-gradient direction G."""
    if precision.dim() == 1:
        return precision + lr * g + 0.5 * lr**2 * g * (g / precision)  # no overflow of g^2
    chol = torch.linalg.cholesky(precision)
    correction = g @ torch.cholesky_solve(g, chol)
    updated = precision + lr * g + 0.5 * lr**2 * correction
    return 0.5 * (updated + updated.mT)


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


def ivon_update(
    state: IVONState,
    grad: Tensor,
    hess: Tensor,
    lr: float,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    clip_radius: float | Tensor | None = None,
) -> IVONState:
    r"""One improved variational online Newton (IVON) step on a diagonal Gaussian.

    .. math::
        g &\leftarrow \beta_1 g + (1-\beta_1)\hat g, \\
        h &\leftarrow \beta_2 h + (1-\beta_2)\hat h
            + \tfrac12 (1-\beta_2)^2 (h-\hat h)^2 / h, \\
        m &\leftarrow m - \alpha\, \frac{g / (1-\beta_1^t)}{h},

    and the new precision is :math:`h`. Writing :math:`a = (1-\beta_2)(\hat h - h)/h`, the new
    :math:`h` is :math:`h\,((1+a)^2 + 1)/2 > 0`: positivity is kept by the update itself.

    Units: here :math:`\ell` is the whole negative log joint (prior included, plates scaled to
    the full data), so :math:`g` and :math:`h` are the paper's per-datum averages times its
    effective sample size :math:`N`, its weight decay :math:`\delta` is the prior's curvature,
    and the paper's :math:`h_0` (``hess_init``) is a per-datum curvature: the driver starts
    :math:`h = N h_0` (see :class:`pyro_blr.BLR`). The step :math:`g/h` is the paper's
    :math:`(\bar g + \delta m)/(\bar h + \delta)` with both scaled by :math:`N`, unchanged.

    Args:
        state: mean, Hessian estimate and momentum.
        grad: the gradient estimate :math:`\hat g`, shape ``(D,)``.
        hess: the Hessian-diagonal estimate :math:`\hat h`, shape ``(D,)``.
        lr: the step size :math:`\alpha`.
        step: the 1-based step number :math:`t` for the bias correction.
        beta1: momentum of the gradient.
        beta2: momentum of the Hessian estimate.
        clip_radius: if given, clip each coordinate of the mean's update (before ``lr``) to
            this radius: a number, or one per coordinate (the driver passes ``clip_radius``
            times the prior's scale of each coordinate, so that the clip does not depend on the
            data's units; see :mod:`pyro_blr.blr.prior_scale`).

    References:
        | Variational Learning is Effective for Large Deep Networks (Shen et al., ICML 2024)
        | https://arxiv.org/abs/2402.17641 (Algorithm 1)

    Example:
        >>> import torch
        >>> state = IVONState(torch.zeros(1), torch.ones(1), torch.zeros(1))
        >>> state = ivon_update(state, torch.tensor([-1.0]), torch.tensor([3.0]), 0.1, step=1,
        ...                     beta1=0.9, beta2=0.5)
        >>> state.precision  # 0.5 + 1.5 + 0.125 * 4
        tensor([2.5000])
    """
    momentum = beta1 * state.momentum + (1 - beta1) * grad
    h = state.precision
    gap = h - hess
    h = beta2 * h + (1 - beta2) * hess + 0.5 * (1 - beta2) ** 2 * gap * (gap / h)
    direction = momentum / (1 - beta1**step) / h
    if clip_radius is not None:
        direction = direction.clamp(-clip_radius, clip_radius)
    return IVONState(state.loc - lr * direction, h, momentum)


def expfamily_update(
    family: ExpFamily, eta: Tensor, grad_eta: Tensor, lr: float
) -> tuple[Tensor, int]:
    r"""One BLR step on an exponential family's natural parameters.

    .. math::
        \lambda \leftarrow (1-\rho)\lambda - \rho\, F(\lambda)^{-1}
            \nabla_\lambda \mathbb E_q[\ell],

    where :math:`F = \nabla^2 A(\lambda)` is the Fisher information, so that
    :math:`F^{-1}\nabla_\lambda = \nabla_\mu` (Khan & Rue 2023, Section 3). A step that would
    leave the family's domain is halved until it does not (never clamped).

    Args:
        family: a :class:`pyro_blr.families.ExpFamily`.
        eta: natural parameters :math:`\lambda`, shape ``(..., P)``.
        grad_eta: :math:`\nabla_\lambda\mathbb E_q[\ell]`, shaped like ``eta``.
        lr: the step size :math:`\rho`.

    Returns:
        The new natural parameters and how many times :math:`\rho` was halved.

    Raises:
        FloatingPointError: the Fisher system is singular or no step size stays in the domain.

    Example:
        >>> import torch
        >>> from pyro_blr.families import Beta
        >>> family = Beta()
        >>> target = family.natural_params(torch.tensor(3.0), torch.tensor(5.0))
        >>> eta = family.natural_params(torch.tensor(1.0), torch.tensor(1.0))
        >>> grad = -family.fisher(eta) @ target  # E[l] = -<target, mu>: its lambda-gradient
        >>> new, halvings = expfamily_update(family, eta, grad, lr=1.0)
        >>> family.params(new)["concentration1"].item(), halvings
        (3.0, 0)
    """
    step, info = torch.linalg.solve_ex(family.fisher(eta), grad_eta.unsqueeze(-1))
    step = step.squeeze(-1)
    if (info != 0).any() or not torch.isfinite(step).all():
        raise FloatingPointError(
            f"{family.name}: the Fisher information is singular or the natural-gradient step is "
            "not finite"
        )
    for halvings in range(60):
        new = (1 - lr) * eta - lr * step
        if family.in_domain(new).all():
            return new, halvings
        lr = lr / 2
    raise FloatingPointError(f"{family.name}: no step size keeps the natural parameters valid")


def mixture_logits_update(logits: Tensor, expected: Tensor, lr: float) -> Tensor:
    r"""The natural-gradient step on mixture weights (Lin, Khan & Schmidt 2019, Eq. 11).

    With :math:`h = \log q - \log p(\mathcal D, \cdot)` and the last component as reference,

    .. math::
        \log\frac{\pi_k}{\pi_K} \leftarrow \log\frac{\pi_k}{\pi_K}
            - \rho\,\big(\mathbb E_{q_k}[h] - \mathbb E_{q_K}[h]\big).

    Example:
        >>> import torch
        >>> mixture_logits_update(torch.zeros(2), torch.tensor([1.0, 3.0]), lr=0.5)
        tensor([1., 0.])
    """
    return logits - logits[-1] - lr * (expected - expected[-1])


def mixture_update(
    state: MixtureState, grads: Tensor, hess: Tensor, expected: Tensor, lr: float
) -> MixtureState:
    r"""One BLR step on a mixture of Gaussians (Lin, Khan & Schmidt 2019, Eqs. 9--11).

    With :math:`h = \log q - \log p(\mathcal D, \cdot)` and :math:`G_k = \mathbb
    E_{q_k}[\nabla^2 h]` (the curvature of the whole objective, so no :math:`-S_k` term appears),
    each component takes the positive-definite step of Lin, Schmidt & Khan (2020),

    .. math::
        S_k \leftarrow S_k + \rho G_k + \tfrac{\rho^2}2 G_k S_k^{-1} G_k, \qquad
        m_k \leftarrow m_k - \rho\, S_k^{-1} \mathbb E_{q_k}[\nabla h],

    and the weights move by :func:`mixture_logits_update`.

    Args:
        state: the mixture's logits, means and precisions.
        grads: :math:`\mathbb E_{q_k}[\nabla h]`, shape ``(K, D)``.
        hess: :math:`\mathbb E_{q_k}[\nabla^2 h]`, shaped like the precisions.
        expected: :math:`\mathbb E_{q_k}[h]`, shape ``(K,)``.
        lr: the step size :math:`\rho`.

    Example:
        >>> import torch
        >>> # h = x^2 (a unit-precision target times two): one full step lands on precision 2
        >>> state = MixtureState(torch.zeros(1), torch.ones(1, 1), torch.ones(1, 1))
        >>> new = mixture_update(state, torch.tensor([[2.0]]), torch.tensor([[1.0]]),
        ...                      torch.zeros(1), lr=1.0)
        >>> new.precisions, new.locs
        (tensor([[2.5000]]), tensor([[0.2000]]))
    """
    locs, precisions = [], []
    for loc, precision, grad, g in zip(state.locs, state.precisions, grads, hess, strict=True):
        precision = _riemannian_step(precision, g, lr)
        precisions.append(precision)
        locs.append(loc - lr * gaussian_family(precision).solve(precision, grad))
    logits = mixture_logits_update(state.logits, expected, lr)
    return MixtureState(logits, torch.stack(locs), torch.stack(precisions))


@dataclass(frozen=True)
class Rule:
    """How the driver feeds one rule.

    Attributes:
        name: the rule's name.
        curvature: ``"hessian"`` (exact, by autograd), ``"reparam"`` (IVON's estimate) or
            ``"ggn"`` (the Gauss--Newton sum of the per-datum gradients' outer products, or of
            their squares for a diagonal Gaussian).
        at_mean: evaluate at the mean (delta method) instead of at samples from the guide.
        full_covariance: whether the rule can drive a full-covariance Gaussian.
        state_type: the rule's state; its first two fields are ``loc`` and ``precision``.
        update: ``(state, grad, hess, lr, step, **options) -> state``.
    """

    name: str
    curvature: str
    at_mean: bool
    full_covariance: bool
    state_type: type
    update: Callable

    def init(self, loc: Tensor, precision: Tensor) -> NamedTuple:
        """The rule's state for a Gaussian with this mean and precision (zero momentum)."""
        extra = [torch.zeros_like(loc)] * (len(self.state_type._fields) - 2)
        return self.state_type(loc, precision, *extra)


RULES = {
    "ivon": Rule("ivon", "reparam", False, False, IVONState, ivon_update),
    "von": Rule(
        "von",
        "hessian",
        False,
        True,
        GaussianState,
        lambda state, grad, hess, lr, step: von_update(state, grad, hess, lr),
    ),
    "vogn": Rule(
        "vogn",
        "ggn",
        False,
        True,
        GaussianState,
        lambda state, grad, hess, lr, step: von_update(state, grad, hess, lr),
    ),
    "newton": Rule(
        "newton",
        "hessian",
        True,
        True,
        GaussianState,
        lambda state, grad, hess, lr, step: newton_update(state, grad, hess, lr),
    ),
}
