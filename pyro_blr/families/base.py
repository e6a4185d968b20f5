r"""The exponential-family interface shared by every family except the Gaussian's closed forms.

A family :math:`q(x) = h(x)\exp(\langle\lambda, T(x)\rangle - A(\lambda))` is given by its
sufficient statistics :math:`T`, its log normalizer :math:`A` and the domain of :math:`\lambda`.
Everything else follows: the expectation parameters :math:`\mu = \nabla A(\lambda)` (autograd),
the Fisher information :math:`F = \nabla^2 A(\lambda)`, their inverse :math:`\lambda(\mu)`
(Newton's method on the convex :math:`A(\lambda) - \langle\lambda, \mu\rangle`) and the entropy
:math:`\mathbb H = A(\lambda) - \langle\lambda, \mu\rangle - \mathbb E[\log h]`. The natural
gradient of :math:`\mathbb E_q[f]` in :math:`\lambda` is its gradient in :math:`\mu` (Khan & Rue
2023, Section 2), which is what the Bayesian learning rule
:math:`\lambda \leftarrow (1-\rho)\lambda - \rho\nabla_\mu\mathbb E_q[\ell]` needs.

A family also says how a guide holds it: the Pyro distribution it builds, its parameters' names
and constraints (positive ones log-parameterized, so Adam moves them by ratios), their event
dimensions, which sites it fits (:meth:`ExpFamily.matches`) and where it starts
(:meth:`ExpFamily.initial_params`).

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

__all__ = [
    "POSITIVE",
    "ExpFamily",
    "clamp_positive",
    "clamp_unit",
    "is_positive",
    "is_unit_interval",
    "site_support",
]

POSITIVE = constraints.positive
"""The constraint of positive parameters: ``biject_to`` maps it by ``exp`` (log-parameterized)."""


def site_support(fn: dist.Distribution) -> constraints.Constraint:
    """The support of a site's distribution with ``independent`` wrappers removed.

    Example:
        >>> import pyro.distributions as dist, torch
        >>> site_support(dist.Exponential(torch.ones(3)).to_event(1))
        GreaterThanEq(lower_bound=0.0)
    """
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def is_positive(support: constraints.Constraint) -> bool:
    """Whether a support is the positive half-line (``positive`` or ``nonnegative``).

    Example:
        >>> from pyro.distributions import constraints
        >>> is_positive(constraints.positive), is_positive(constraints.greater_than(1.0))
        (True, False)
    """
    bounded = isinstance(support, constraints.greater_than | constraints.greater_than_eq)
    return bounded and support.lower_bound == 0


def is_unit_interval(support: constraints.Constraint) -> bool:
    """Whether a support is the unit interval (closed or half-open).

    Example:
        >>> from pyro.distributions import constraints
        >>> is_unit_interval(constraints.unit_interval)
        True
        >>> is_unit_interval(constraints.interval(0.0, 2.0))
        False
    """
    bounded = isinstance(support, constraints.interval | constraints.half_open_interval)
    return bounded and (support.lower_bound, support.upper_bound) == (0, 1)


def clamp_positive(value: Tensor) -> Tensor:
    r"""``value`` clamped into :math:`[\epsilon, 1/\epsilon]`, :math:`\epsilon` the dtype's
    machine epsilon.

    :meth:`ExpFamily.initial_params` of positive families starts from it, so that a starting
    value which underflowed (the median of a Gamma(0.01, 1) prior is about :math:`10^{-30}`)
    still gives finite, moderate parameters (a rate of at most :math:`\alpha_0/\epsilon`).

    Example:
        >>> import torch
        >>> float(clamp_positive(torch.tensor(1e-30)))  # float32 machine epsilon
        1.1920928955078125e-07
    """
    eps = torch.finfo(value.dtype).eps
    return value.clamp(eps, 1 / eps)


def clamp_unit(value: Tensor) -> Tensor:
    r"""``value`` clamped into :math:`[\epsilon, 1 - \epsilon]` (see :func:`clamp_positive`).

    Example:
        >>> import torch
        >>> float(clamp_unit(torch.tensor(1.0, dtype=torch.float64)))
        0.9999999999999998
    """
    eps = torch.finfo(value.dtype).eps
    return value.clamp(eps, 1 - eps)


class ExpFamily:
    r"""An exponential family through its log normalizer.

    ``eta`` holds the natural parameters in its last dimension (a Dirichlet's last dimension is
    its categories). Subclasses set the class attributes and the methods that raise here.

    Attributes:
        name: the family's name in :data:`pyro_blr.families.FAMILIES`.
        distribution_class: the Pyro distribution, built from the parameters by name.
        param_constraints: ``{parameter: constraint}`` in the distribution's order.
        param_event_dims: ``{parameter: event dims}`` (0 unless a parameter is a vector per draw).
    """

    name = "expfamily"
    distribution_class: type = dist.Distribution
    param_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    param_event_dims: ClassVar[dict[str, int]] = {}
    discrete: ClassVar[bool] = False
    """Whether draws are discrete: the BLR then estimates its gradient on the relaxed draws of
    :meth:`relaxed_draws`, and a guide reports :meth:`median` and the family's exact quantiles."""

    @property
    def param_names(self) -> tuple[str, ...]:
        """The distribution's parameters, in order."""
        return tuple(self.param_constraints)

    def event_dim(self, param: str) -> int:
        """How many rightmost dimensions of ``param`` belong to one draw (not to plates)."""
        return self.param_event_dims.get(param, 0)

    def natural_params(self, *params: Tensor) -> Tensor:
        """Natural parameters from the distribution's own parameters (in ``param_names`` order)."""
        raise NotImplementedError

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        """The distribution's own parameters from natural parameters."""
        raise NotImplementedError

    def log_normalizer(self, eta: Tensor) -> Tensor:
        raise NotImplementedError

    def in_domain(self, eta: Tensor) -> Tensor:
        """Whether each natural parameter vector is valid (a normalizable density)."""
        raise NotImplementedError

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def matches(self, fn: dist.Distribution) -> bool:
        """Whether a site with distribution ``fn`` lives where this family does."""
        raise NotImplementedError

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        """Parameters of a distribution centred on ``value`` with relative spread ``init_scale``."""
        raise NotImplementedError

    def natural_from(self, distribution: dist.Distribution) -> Tensor:
        """Natural parameters of a distribution of this family."""
        return self.natural_params(*(getattr(distribution, n) for n in self.param_names))

    def distribution(self, eta: Tensor) -> dist.Distribution:
        """The Pyro distribution with these natural parameters (reparameterized sampling)."""
        return self.distribution_class(**self.params(eta))

    def relaxed_draws(self, eta: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        """A discrete family's relaxed draws, one per row of ``eta``, and the log of their
        weights (see :meth:`pyro_blr.families.Bernoulli.relaxed_draws`); continuous families
        are drawn by ``distribution(eta).rsample()`` instead."""
        raise NotImplementedError(f"the {self.name} family is not discrete")

    def median(self, eta: Tensor) -> Tensor:
        """The point a guide's ``median()`` reports: the distribution's mean (a discrete
        family's median)."""
        return self.distribution(eta).mean

    def check_resolved(self, eta: Tensor) -> None:
        """Raise ``FloatingPointError`` where ``eta``'s dtype cannot resolve a natural-gradient
        step of this family (its Fisher information too ill-conditioned for the dtype); the
        families here other than the von Mises never raise.

        Raises:
            FloatingPointError: saying what is out of reach and which dtype would resolve it.
        """

    def expected_log_base_measure(self, eta: Tensor) -> Tensor:
        r""":math:`\mathbb E_q[\log h(x)]` (zero unless the family has a base measure)."""
        return torch.zeros_like(eta[..., 0])

    def log_base_measure(self, x: Tensor) -> Tensor:
        r""":math:`\log h(x)` (a scalar zero for families without a base measure)."""
        return x.new_zeros(())

    def mean_params(self, eta: Tensor) -> Tensor:
        r""":math:`\mu = \nabla A(\lambda) = \mathbb E_q[T(x)]`, by autograd."""
        with torch.enable_grad():
            eta = eta.detach().requires_grad_(True)
            (mu,) = torch.autograd.grad(self.log_normalizer(eta).sum(), eta)
        return mu

    def fisher(self, eta: Tensor) -> Tensor:
        r"""The Fisher information :math:`\nabla^2 A(\lambda)`, shape ``(..., P, P)``."""
        with torch.enable_grad():
            eta = eta.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_normalizer(eta).sum(), eta, create_graph=True)
            rows = [
                torch.autograd.grad(grad[..., i].sum(), eta, retain_graph=True)[0]
                for i in range(eta.shape[-1])
            ]
        return torch.stack(rows, -2).detach()

    def entropy(self, eta: Tensor) -> Tensor:
        r""":math:`A(\lambda) - \langle \lambda, \mu \rangle - \mathbb E_q[\log h(x)]`."""
        mean = (eta * self.mean_params(eta)).sum(-1)
        return self.log_normalizer(eta) - mean - self.expected_log_base_measure(eta)

    def from_mean(
        self, mu: Tensor, eta: Tensor, num_steps: int = 100, tol: float = 1e-12
    ) -> Tensor:
        r"""The natural parameters with expectation ``mu``, by Newton's method from ``eta``.

        Minimizes the convex :math:`g(\lambda) = A(\lambda) - \langle\lambda, \mu\rangle`, whose
        gradient is :math:`\nabla A(\lambda) - \mu`; each step
        :math:`F(\lambda)^{-1}\nabla g` is halved until it stays in the domain and does not
        increase :math:`g`. When ``mu`` lies outside the mean space, :math:`g` is unbounded
        below and the iterates drift off; that is detected (a non-finite iterate, objective or
        Fisher information, or a Fisher information that is not numerically positive definite)
        before any linear solve, and reported as the error below.

        Raises:
            ValueError: ``mu`` is not reached (it lies outside the family's mean space).

        Example:
            >>> import torch
            >>> from pyro_blr.families import Gamma
            >>> family = Gamma()
            >>> one = torch.tensor(1.0, dtype=torch.float64)
            >>> eta = family.natural_params(3 * one, 2 * one)
            >>> found = family.from_mean(family.mean_params(eta), family.natural_params(one, one))
            >>> round(family.params(found)["rate"].item(), 12)
            2.0
        """
        eta = eta.detach().clone()
        for _ in range(num_steps):
            objective = self.log_normalizer(eta) - (eta * mu).sum(-1)
            grad = self.mean_params(eta) - mu
            if not (torch.isfinite(objective).all() and torch.isfinite(grad).all()):
                break  # drifted off: reported below
            if grad.abs().max() < tol:
                break
            fisher = self.fisher(eta)
            if not torch.isfinite(fisher).all():
                break
            chol, info = torch.linalg.cholesky_ex(fisher)
            if (info != 0).any():  # numerically singular: the iterates have drifted off
                break
            step = torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
            if not torch.isfinite(step).all():
                break
            scale = torch.ones_like(objective)
            for _ in range(60):  # halve each step until it stays in the domain and descends
                trial = eta - scale.unsqueeze(-1) * step
                ok = self.in_domain(trial) & torch.isfinite(trial).all(-1)
                safe = torch.where(ok.unsqueeze(-1), trial, eta)
                value = self.log_normalizer(safe) - (safe * mu).sum(-1)
                accept = ok & (value <= objective + 1e-12 * (1 + objective.abs()))
                if accept.all():
                    break
                scale = torch.where(accept, scale, scale / 2)
            eta = eta - scale.unsqueeze(-1) * step
        reached = torch.isfinite(eta).all() and self.in_domain(eta).all()
        if not (reached and torch.allclose(self.mean_params(eta), mu, rtol=1e-8, atol=1e-10)):
            raise ValueError(f"{self.name}: expectation parameters {mu} are not reached")
        return eta
