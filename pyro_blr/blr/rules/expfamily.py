r"""``ExpFamilyRule``: the Bayesian learning rule on any exponential family's natural parameters.

.. math::
    \lambda \leftarrow (1-\rho)\lambda - \rho\, \nabla_\mu \mathbb E_q[\ell],

per site of a :class:`pyro_blr.AutoExpFamily` guide (Khan & Rue 2023, Section 3); a step that
would leave a family's domain is halved until it does not (never clamped). On a Bernoulli site
(a binary latent) it is BayesBiNN (Meng, Bachmann & Khan 2020), its gradient estimated on the
Gumbel-softmax relaxation at ``temperature``; on a OneHotCategorical site (a categorical
latent) the same, on the relaxation of the one-hot vector to the simplex (Jang et al. 2017;
Maddison et al. 2017).

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
    | Training Binary Neural Networks using the Bayesian Learning Rule (Meng, Bachmann & Khan,
      ICML 2020) https://arxiv.org/abs/2002.10778
    | Categorical Reparameterization with Gumbel-Softmax (Jang, Gu & Poole, ICLR 2017)
      https://arxiv.org/abs/1611.01144
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pyro_blr.blr.numbers import check_positive
from pyro_blr.blr.rules.base import KEPT, Estimates, Rule, UpdateInfo
from pyro_blr.families import ExpFamily

__all__ = ["ExpFamilyRule", "ExpFamilyState", "expfamily_update", "update_sites"]


class ExpFamilyState(NamedTuple):
    """Each site's natural parameters, and its family (static: the guide's structure)."""

    natural: dict[str, Tensor]
    families: dict[str, ExpFamily]


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


def update_sites(
    families: dict,
    etas: dict,
    grads: dict,
    lr: float,
    step_number: int,
    components: bool = False,
) -> tuple[dict[str, Tensor], int]:
    r""":func:`expfamily_update` on every site; returns the new natural parameters and the total
    number of step halvings.

    Args:
        families: site name -> its family.
        etas: site name -> natural parameters.
        grads: site name -> :math:`\nabla_\lambda\mathbb E_q[\ell]`.
        lr: the step size.
        step_number: the step, for error messages.
        components: whether the leading axis of every site's tensors is a mixture's component
            (errors then name the components at fault too).

    Raises:
        FloatingPointError: naming the site (and the components), where a gradient is not
            finite, the update fails, or the current or new natural parameters are beyond what
            their dtype resolves (:meth:`pyro_blr.families.ExpFamily.check_resolved`).
    """
    updates, total = {}, 0
    for name, family in families.items():
        try:
            updates[name], halvings = _site_update(family, etas[name], grads[name], lr)
        except FloatingPointError as error:
            where = f"site '{name}'"
            if components:
                where += f" in component(s) {_failing(family, etas[name], grads[name], lr)}"
            raise FloatingPointError(f"BLR step {step_number}: {where}: {error}; {KEPT}") from None
        total += halvings
    return updates, total


def _site_update(family: ExpFamily, eta: Tensor, grad: Tensor, lr: float) -> tuple[Tensor, int]:
    family.check_resolved(eta)
    if not torch.isfinite(grad).all():
        raise FloatingPointError("the gradient is not finite")
    new, halvings = expfamily_update(family, eta, grad, lr)
    family.check_resolved(new)
    return new, halvings


def _failing(family: ExpFamily, eta: Tensor, grad: Tensor, lr: float) -> list[int]:
    """The components (leading axis) whose own update fails (all of them if none does)."""
    bad = []
    for k in range(eta.shape[0]):
        try:
            _site_update(family, eta[k], grad[k], lr)
        except FloatingPointError:
            bad.append(k)
    return bad or list(range(eta.shape[0]))


class ExpFamilyRule(Rule):
    r"""The BLR on every site of a :class:`pyro_blr.AutoExpFamily`, in its natural parameters.

    The gradient :math:`\nabla_\mu \mathbb E_q[\ell]` is estimated from reparameterized draws
    (implicit reparameterization for Gamma, Beta, Dirichlet and von Mises) with a
    sufficient-statistics control variate from ``mc_samples=3`` on, which makes it exact on a
    conjugate site (see :mod:`pyro_blr.blr.steppers.expfamily_estimates`).

    On a Bernoulli site (a latent ``Bernoulli`` of :class:`pyro_blr.AutoExpFamily`) the draws
    are discrete: the gradient is taken on the Gumbel-softmax relaxation
    :math:`x_\tau = \sigma((\lambda + \log u - \log(1-u))/\tau)` (BayesBiNN, Meng, Bachmann &
    Khan 2020) and divided by the relaxation's Fisher information estimated on the same draws
    (BayesBiNN divides by :math:`p(1-p)`; see
    :func:`~pyro_blr.blr.steppers.expfamily_estimates.relaxed_gradient`: exact for a likelihood
    linear in the site, bounded, and the exact :math:`\nabla_\mu` as :math:`\tau \to 0`). The
    model runs at :math:`x_\tau \in [0, 1]`: it must be defined and differentiable there
    (``z * w``; not ``w[z.long()]``, ``z.bool()`` or ``if z:``), which the BLR checks before its
    first step, naming the site. The bias falls with the temperature and with ``mc_samples``
    (below 100 draws the fit warns; at few draws the probabilities are pulled toward 1/2).
    ``temperature=1`` is the default of the BayesBiNN authors' optimizer, stable but biased
    (0.07 in probability on a 4-indicator regression); for inference pass a small one, e.g.
    0.03 with 1000 draws (0.004 there). The paper's deep networks use :math:`10^{-10}`, where
    the relaxed draws are nearly always 0 or 1. The loss reported is the negative ELBO at the
    rounded, exact Bernoulli draws.

    On a OneHotCategorical site over :math:`K` outcomes (a latent ``OneHotCategorical`` of
    :class:`pyro_blr.AutoExpFamily`; a ``Categorical`` index site is refused: write it
    ``OneHotCategorical`` and use the value as a vector, ``z @ locs``) the draws are
    :math:`x_\tau = \operatorname{softmax}(((\lambda, 0) + g)/\tau)` with Gumbel noise
    :math:`g`, and the slope along each edge of the simplex is averaged as for a binary site
    (see :func:`~pyro_blr.blr.steppers.expfamily_estimates.relaxed_simplex_gradient`: exact for
    a likelihood linear in the site; on three one-hot choices of three outcomes at
    temperature 0.03 and 1000 draws, within 0.006 in probability of the enumerated mean-field
    fixed point on average, 0.13 at temperature 1). The loss is taken at the argmax draws (the
    Gumbel-max trick: exact Categorical draws).

    Args:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float``.
        mc_samples: draws per step.
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2` on
            the unconstrained values of the continuous sites.
        temperature: the relaxation's :math:`\tau > 0` for Bernoulli and OneHotCategorical
            sites (read by no other family).

    Example:
        >>> import pyro_blr as pb
        >>> pb.ExpFamilyRule(lr=0.5, mc_samples=4)
        ExpFamilyRule(lr=0.5, mc_samples=4, weight_decay=0.0, temperature=1.0)
    """

    name = "expfamily"
    kind = "expfamily"
    State = ExpFamilyState

    def __init__(
        self,
        lr: float | Callable[[int], float] = 0.1,
        *,
        mc_samples: int = 2,
        weight_decay: float = 0.0,
        temperature: float = 1.0,
    ):
        self._set(lr, mc_samples=mc_samples, weight_decay=weight_decay)
        self.temperature = check_positive("temperature", temperature, math.inf)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "temperature" and hasattr(self, "temperature"):
            raise AttributeError(
                f"{type(self).__name__}.temperature is fixed when the rule is built; build a new "
                f"rule (and driver) with temperature={value!r}. Only lr may change during a fit"
            )
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        # temperature is read by the expfamily stepper from the rule itself, not from the
        # driver's StepOptions (which has no field for it), so it is not in ``options``
        return f"{super().__repr__()[:-1]}, temperature={self.temperature!r})"

    def update(self, state: ExpFamilyState, estimates: Estimates, lr: float):
        """Every site's step: ``(new state, UpdateInfo(halvings))``; raises
        ``FloatingPointError`` naming the site where one fails."""
        natural, halvings = update_sites(
            state.families, state.natural, estimates.grad, lr, estimates.step
        )
        return state._replace(natural=natural), UpdateInfo(halvings)
