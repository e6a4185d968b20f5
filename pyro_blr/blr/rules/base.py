r"""What every rule object shares: its options, its explicit state and its pure update.

A rule is a small object in the place ``pyro.infer.SVI`` keeps its optimizer: it holds the
options it uses (and only those), builds its state from the guide's parameters (``init``) and
turns estimates into a new state (``update``), a pure function of its inputs. The driver
(:class:`pyro_blr.BLR`) draws, estimates, calls ``update`` and writes the guide; the wrappers
every rule gets (step-back, averaging, distributed reduction, Hessian reuse) sit around
``update`` in the driver's steppers.

The Gaussian rules share the natural-gradient step of the Bayesian learning rule (Khan & Rue
2023) on :math:`q = \mathcal N(m, S^{-1})`,

.. math::
    S \leftarrow (1-\rho) S + \rho\, \mathbb E_q[\nabla^2 \ell], \qquad
    m \leftarrow m - \rho\, S^{-1} \mathbb E_q[\nabla \ell],

and differ in how the expectations are estimated (the class attributes ``curvature`` and
``at_mean``) and how :math:`S` stays positive definite.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
    | Handling the Positive-Definite Constraint in the Bayesian Learning Rule (Lin, Schmidt &
      Khan, ICML 2020) https://arxiv.org/abs/2002.10060
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any, ClassVar, NamedTuple

import torch
from pyro.optim import PyroLRScheduler
from torch import Tensor

from pyro_blr.blr.numbers import check_lr, check_number, check_positive, check_positive_int

__all__ = [
    "KEPT",
    "Estimates",
    "GaussianRule",
    "GaussianState",
    "Rule",
    "UpdateInfo",
    "riemannian_precision_update",
]


KEPT = "the guide's parameters were left as they were before this step"
"""The end of every error raised by a failed step: nothing was written."""


class GaussianState(NamedTuple):
    """A Gaussian's mean and precision (a vector when diagonal, a matrix when full)."""

    loc: Tensor
    precision: Tensor


class Estimates(NamedTuple):
    r"""What a step estimated for the rule.

    Attributes:
        grad: the expected gradient of :math:`\ell` (a Gaussian rule: shape ``(D,)``; the
            exponential-family rules: site name -> gradient in the natural parameters).
        hess: the curvature the rule asked for, shaped like the precision (``None`` where the
            rule needs none).
        step: the 1-based number of the step these estimates are for.
        units: the prior's robust scale of each coordinate (see
            :mod:`pyro_blr.blr.prior_scale`; NaN where the prior gives none), in which IVON's
            clip is measured; ``None``: unit scale.
        values: the mixture rule's expected objective per component, shape ``(K,)``.
        ess: the effective sample size :math:`N` (the number of observed data, or the rule's
            ``ess``) where the rule reads it (Vadam's posterior precision); ``None`` elsewhere.
        prior_precision: the diagonal of the Hessian of the priors (and log-Jacobians, and
            ``weight_decay``) at the mean, shape ``(D,)``, where the rule reads it (Vadam's
            :math:`\delta`); ``None`` elsewhere.
    """

    grad: Any
    hess: Any = None
    step: int = 1
    units: Any = None
    values: Any = None
    ess: Any = None
    prior_precision: Any = None


class UpdateInfo(NamedTuple):
    """What an update reports: how often its step size was halved to keep the natural
    parameters valid (the exponential-family rules; never clamped)."""

    halvings: int = 0


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
    return riemannian_step(precision, hess - precision, lr)


def riemannian_step(precision: Tensor, g: Tensor, lr: float) -> Tensor:
    r""":math:`S + \rho G + \tfrac{\rho^2}{2} G S^{-1} G` for a natural-gradient direction
    :math:`G` (a vector for a diagonal :math:`S`, else a matrix)."""
    if precision.dim() == 1:
        return precision + lr * g + 0.5 * lr**2 * g * (g / precision)  # no overflow of g^2
    chol = torch.linalg.cholesky(precision)
    correction = g @ torch.cholesky_solve(g, chol)
    updated = precision + lr * g + 0.5 * lr**2 * correction
    return 0.5 * (updated + updated.mT)


def _check_hess_init(value: Any) -> float | str | None:
    if value is None or value == "auto":
        return value
    if isinstance(value, str):
        raise ValueError(f"hess_init must be 'auto', a number or None, got {value!r}")
    value = check_number("hess_init", value, 0.0, math.inf, closed_high=False)
    if value == 0:
        raise ValueError("hess_init must be positive, got 0 (or None to keep the guide's)")
    return value


def _check_weight_decay(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < math.inf:
        raise ValueError(f"weight_decay must be non-negative and finite, got {value!r}")
    return float(value)


def _check_unit_interval(name: str) -> Callable[[Any], float]:
    return lambda v: check_number(name, v, 0.0, 1.0, closed_high=False)


def _check_non_negative(name: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be non-negative and finite, got {value!r}")
        return float(value)

    return check


def _check_flag(name: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
        return value

    return check


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "mc_samples": lambda v: check_positive_int("mc_samples", v),
    "antithetic": bool,
    "beta1": lambda v: check_number("beta1", v, 0.0, 1.0, closed_high=False),
    "beta2": lambda v: check_number("beta2", v, 0.0, 1.0, closed_high=False),
    "clip_radius": lambda v: None if v is None else check_positive("clip_radius", v, math.inf),
    "weight_decay": _check_weight_decay,
    "ess": lambda v: None if v is None else check_positive("ess", v),
    "hess_init": _check_hess_init,
    "hessian_every": lambda v: check_positive_int("hessian_every", v),
    "momentum": _check_unit_interval("momentum"),
    "dampening": _check_unit_interval("dampening"),
    "nesterov": _check_flag("nesterov"),
    "alpha": _check_unit_interval("alpha"),
    "eps": _check_non_negative("eps"),
    "perturb": _check_flag("perturb"),
}
"""Each option's check: a bad value raises ``ValueError`` naming the option and its range."""


class Rule:
    r"""A rule's options and its pure update.

    Subclasses set :attr:`name` (the string shorthand), :attr:`kind` (the guides it drives),
    :attr:`curvature`, :attr:`at_mean` and :attr:`State`, take their options as keyword
    arguments of ``__init__`` (passing them to :meth:`_set`, which checks each), and implement
    :meth:`init` and :meth:`update`.

    Attributes:
        lr: the step size :math:`\rho`, a float or a schedule ``step -> float`` (``step``
            counts the steps taken so far, from 0).
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "gaussian"
    """The guides the rule drives: ``"gaussian"`` (Pyro's Gaussian autoguides),
    ``"expfamily"`` (:class:`pyro_blr.AutoExpFamily`) or ``"mixture"``
    (:class:`pyro_blr.AutoMixture`)."""
    curvature: ClassVar[str] = "none"
    r"""``"hessian"`` (exact, by autograd), ``"reparam"`` (IVON's gradient-only estimate),
    ``"ggn"`` (the Gauss--Newton sum over per-datum gradients), ``"squared_gradient"`` (the
    particles' squared gradients :math:`\mathbb E_q[\nabla\ell \circ \nabla\ell]`, from which
    RMSprop and Adam build their scale) or ``"none"`` (the gradient only: SGD)."""
    at_mean: ClassVar[bool] = False
    """Whether the estimates are taken at the mean (the delta method) instead of at draws."""
    full_covariance: ClassVar[bool] = True
    """Whether the rule drives a full-covariance Gaussian."""
    vectorizes: ClassVar[bool] = True
    """Whether the particles' model runs follow the driver's ``vectorize_particles``."""
    State: ClassVar[type] = GaussianState

    def _set(self, lr: float | Callable[[int], float], **options: Any) -> None:
        if isinstance(lr, (PyroLRScheduler, torch.optim.lr_scheduler.LRScheduler)):
            raise TypeError(
                f"{type(self).__name__}(lr=...) takes a number or a schedule step -> number, got "
                f"the optimizer scheduler {type(lr).__name__}: write the schedule as a function, "
                "e.g. lr=lambda t: 0.5 * 0.99**t"
            )
        self.lr = lr if callable(lr) else check_lr(lr)
        for option, value in options.items():
            setattr(self, option, _CHECKS[option](value))
        self._options = tuple(options)
        if self.at_mean is False and options.get("antithetic") and self.mc_samples % 2:
            raise ValueError(
                f"{type(self).__name__}: antithetic sampling draws pairs, so mc_samples must be "
                f"even, got {self.mc_samples} (or pass antithetic=False)"
            )

    def __setattr__(self, name: str, value: Any) -> None:
        # The driver reads lr at every step; the other options are read when the driver is
        # built, so changing one afterwards would be silently ignored.
        if name in getattr(self, "_options", ()):
            raise AttributeError(
                f"{type(self).__name__}.{name} is fixed when the rule is built; build a new rule "
                f"(and driver) with {name}={value!r}. Only lr may change during a fit"
            )
        if name == "lr" and hasattr(self, "lr") and not callable(value):
            value = check_lr(value)
        super().__setattr__(name, value)

    @property
    def drives_local(self) -> bool:
        """Whether the rule drives latents local to a subsampled plate: only where its state is
        a Gaussian's mean and precision. A rule whose state keeps more (IVON's, SGD's, RMSprop's
        and Adam's momentum and averages) keeps a history per coordinate, which would be needed
        per datum."""
        return len(self.State._fields) <= 2

    @property
    def options(self) -> dict[str, Any]:
        """The rule's options (``lr`` included), by name."""
        return {"lr": self.lr, **{name: getattr(self, name) for name in self._options}}

    def option(self, name: str, default: Any = None) -> Any:
        """An option's value, or ``default`` for an option this rule does not have."""
        return getattr(self, name) if name in self._options else default

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({shown})"

    def init(self, params: GaussianState) -> NamedTuple:
        """The rule's state for the guide's parameters (zero momentum)."""
        return self.State(*params)

    def update(self, state: NamedTuple, estimates: Estimates, lr: float):
        """``(state, estimates, lr) -> (new state, UpdateInfo)``: pure, no guide, no model."""
        raise NotImplementedError


class GaussianRule(Rule):
    """A rule on a Gaussian guide: its state's first two fields are ``loc`` and ``precision``.

    Subclasses implement :meth:`gaussian_update`; :meth:`update` wraps it.
    """

    def gaussian_update(self, state: NamedTuple, estimates: Estimates, lr: float) -> NamedTuple:
        raise NotImplementedError

    def update(self, state: NamedTuple, estimates: Estimates, lr: float):
        """One step: ``(new state, UpdateInfo())`` (a Gaussian step is never halved)."""
        return self.gaussian_update(state, estimates, lr), UpdateInfo()
