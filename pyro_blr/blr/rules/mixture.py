r"""``MixtureRule``: the Bayesian learning rule on mixtures (Lin, Khan & Schmidt 2019).

With :math:`h = \log q - \log p(\mathcal D, \cdot)`, each component takes a natural-gradient
step on its own stratified expectations (:func:`mixture_update` for Gaussian components, the
exponential-family step per site for :class:`pyro_blr.AutoExpFamily` components) and the
weights move by :func:`mixture_logits_update`.

References:
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_blr.blr.rules.base import KEPT, Estimates, Rule, UpdateInfo, riemannian_step
from pyro_blr.blr.rules.expfamily import update_sites
from pyro_blr.families import ExpFamily, gaussian_family

__all__ = [
    "ExpFamilyMixtureState",
    "MixtureRule",
    "MixtureState",
    "mixture_logits_update",
    "mixture_update",
]


class MixtureState(NamedTuple):
    """A mixture of Gaussians: weight logits ``(K,)``, means ``(K, D)`` and precisions ``(K, D)``
    (diagonal) or ``(K, D, D)`` (full)."""

    logits: Tensor
    locs: Tensor
    precisions: Tensor


class ExpFamilyMixtureState(NamedTuple):
    """A mixture of exponential-family components: weight logits ``(K,)``, each site's natural
    parameters ``(K, ..., P)`` and its family (static: the guide's structure)."""

    logits: Tensor
    natural: dict[str, Tensor]
    families: dict[str, ExpFamily]


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
        precision = riemannian_step(precision, g, lr)
        precisions.append(precision)
        locs.append(loc - lr * gaussian_family(precision).solve(precision, grad))
    logits = mixture_logits_update(state.logits, expected, lr)
    return MixtureState(logits, torch.stack(locs), torch.stack(precisions))


class MixtureRule(Rule):
    r"""The mixture rule on :class:`pyro_blr.AutoMixture` guides.

    Every component draws its own particles (stratified expectations: every component sampled,
    weighted by its weight), never score-function gradients on the component index.

    Args:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float``.
        mc_samples: draws per component and step.
        antithetic: draw a Gaussian component's particles in antithetic pairs (needs an even
            ``mc_samples``); ``None`` (the default): pairs for Gaussian components, plain draws
            for exponential-family ones, which have no antithetic pairs (``True`` with them
            raises).
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2`.

    Example:
        >>> import pyro_blr as pb
        >>> pb.MixtureRule(lr=0.2, mc_samples=4)
        MixtureRule(lr=0.2, mc_samples=4, antithetic=None, weight_decay=0.0)
    """

    name = "mixture"
    kind = "mixture"
    State = MixtureState

    def __init__(
        self,
        lr: float | Callable[[int], float] = 0.1,
        *,
        mc_samples: int = 2,
        antithetic: bool | None = None,
        weight_decay: float = 0.0,
    ):
        self._set(lr, mc_samples=mc_samples, weight_decay=weight_decay)
        self.antithetic = None if antithetic is None else bool(antithetic)
        self._options = ("mc_samples", "antithetic", "weight_decay")
        if self.antithetic and self.mc_samples % 2:
            raise ValueError(
                "MixtureRule: antithetic sampling draws pairs, so mc_samples must be even, got "
                f"{self.mc_samples} (or pass antithetic=False)"
            )

    def update(self, state, estimates: Estimates, lr: float):
        r"""One step of every component and of the weights: ``(new state, UpdateInfo)``.

        For :class:`MixtureState`, ``estimates`` holds :math:`\mathbb E_{q_k}[\nabla h]`
        (``grad``), :math:`\mathbb E_{q_k}[\nabla^2 h]` (``hess``) and
        :math:`\mathbb E_{q_k}[h]` (``values``); for :class:`ExpFamilyMixtureState`, each site's
        gradient in its natural parameters (``grad``, a dict) and ``values``.
        """
        bad = (~torch.isfinite(estimates.values)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(
                f"BLR step {estimates.step}: the expected objective of component(s) {bad} is "
                f"not finite; {KEPT}"
            )
        if isinstance(state, MixtureState):
            new = mixture_update(state, estimates.grad, estimates.hess, estimates.values, lr)
            return new, UpdateInfo()
        natural, halvings = update_sites(
            state.families, state.natural, estimates.grad, lr, estimates.step, components=True
        )
        logits = mixture_logits_update(state.logits, estimates.values, lr)
        return state._replace(logits=logits, natural=natural), UpdateInfo(halvings)
