r"""Exponential families beyond the Gaussian, described once through their log normalizer.

A family :math:`q(x) = h(x)\exp(\langle\lambda, T(x)\rangle - A(\lambda))` is given here by its
sufficient statistics :math:`T`, its log normalizer :math:`A` and the domain of :math:`\lambda`.
Everything else follows: the expectation parameters :math:`\mu = \nabla A(\lambda)` (autograd),
their inverse :math:`\lambda(\mu)` (Newton's method on the convex :math:`A(\lambda) -
\langle\lambda, \mu\rangle`, with step halving that keeps :math:`\lambda` in the domain), and the
entropy :math:`\mathbb H = A(\lambda) - \langle\lambda, \mu\rangle - \mathbb E[\log h]` (every
family here has :math:`h = 1`). The natural gradient of an expectation :math:`\mathbb E_q[f]` in
:math:`\lambda` is its gradient in :math:`\mu` (Khan & Rue 2023, Section 2), which is what the
Bayesian learning rule :math:`\lambda \leftarrow (1-\rho)\lambda - \rho\nabla_\mu\mathbb E_q[\ell]`
needs.

| family | :math:`T(x)` | :math:`\lambda` | :math:`A(\lambda)` |
|---|---|---|---|
| Gamma(α, β) | (log x, x) | (α − 1, −β) | log Γ(λ₁+1) − (λ₁+1) log(−λ₂) |
| Beta(a, b) | (log x, log(1 − x)) | (a − 1, b − 1) | log B(λ₁+1, λ₂+1) |
| Dirichlet(α) | log x | α − 1 | Σ log Γ(λᵢ+1) − log Γ(Σ(λᵢ+1)) |
| von Mises(m, κ) | (cos x, sin x) | κ(cos m, sin m) | log 2π I₀(‖λ‖) |
| Categorical(π) | one-hot of the first K − 1 | log(πₖ/π_K) | log(1 + Σ exp λₖ) |

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023) https://arxiv.org/abs/2107.04562
    | Estimating a Dirichlet distribution (Minka, 2000)
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor

from pyro_blr.distributions import VonMises

__all__ = ["FAMILIES", "Beta", "Categorical", "Dirichlet", "ExpFamily", "Gamma", "VonMisesFamily"]


class ExpFamily:
    """An exponential family through its log normalizer; ``eta`` has the natural parameters in
    its last dimension."""

    name = "expfamily"

    def log_normalizer(self, eta: Tensor) -> Tensor:
        raise NotImplementedError

    def in_domain(self, eta: Tensor) -> Tensor:
        """Whether each natural parameter vector is valid (a normalizable density)."""
        raise NotImplementedError

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def distribution(self, eta: Tensor) -> dist.Distribution:
        """The Pyro distribution with these natural parameters (reparameterized sampling)."""
        raise NotImplementedError

    def mean_params(self, eta: Tensor) -> Tensor:
        r""":math:`\mu = \nabla A(\lambda) = \mathbb E_q[T(x)]`, by autograd."""
        with torch.enable_grad():
            eta = eta.detach().requires_grad_(True)
            (mu,) = torch.autograd.grad(self.log_normalizer(eta).sum(), eta)
        return mu

    def entropy(self, eta: Tensor) -> Tensor:
        r""":math:`A(\lambda) - \langle \lambda, \mu \rangle` (the base measure is 1)."""
        return self.log_normalizer(eta) - (eta * self.mean_params(eta)).sum(-1)

    def from_mean(
        self, mu: Tensor, eta: Tensor, num_steps: int = 100, tol: float = 1e-12
    ) -> Tensor:
        r"""The natural parameters with expectation ``mu``, by Newton's method from ``eta``.

        Minimizes the convex :math:`A(\lambda) - \langle\lambda, \mu\rangle`; each step is halved
        until it stays in the domain and does not increase the objective.

        Raises:
            ValueError: ``mu`` is not reached (it lies outside the family's mean space).
        """
        eta = eta.detach().clone()
        for _ in range(num_steps):
            with torch.enable_grad():
                x = eta.requires_grad_(True)
                objective = self.log_normalizer(x) - (x * mu).sum(-1)
                (grad,) = torch.autograd.grad(objective.sum(), x, create_graph=True)
                rows = [
                    torch.autograd.grad(grad[..., i].sum(), x, retain_graph=True)[0]
                    for i in range(eta.shape[-1])
                ]
            hess = torch.stack(rows, -2).detach()
            grad, objective = grad.detach(), objective.detach()
            if grad.abs().max() < tol:
                break
            step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
            eta = eta.detach()
            scale = torch.ones_like(objective)
            for _ in range(60):  # halve each step until it stays in the domain and descends
                trial = eta - scale.unsqueeze(-1) * step
                ok = self.in_domain(trial)
                safe = torch.where(ok.unsqueeze(-1), trial, eta)
                value = self.log_normalizer(safe) - (safe * mu).sum(-1)
                accept = ok & (value <= objective + 1e-12 * (1 + objective.abs()))
                if accept.all():
                    break
                scale = torch.where(accept, scale, scale / 2)
            eta = eta - scale.unsqueeze(-1) * step
        if not torch.allclose(self.mean_params(eta), mu, rtol=1e-8, atol=1e-10):
            raise ValueError(f"{self.name}: expectation parameters {mu} are not reached")
        return eta


class Gamma(ExpFamily):
    """Gamma(concentration α, rate β): λ = (α − 1, −β)."""

    name = "gamma"

    def natural_params(self, concentration: Tensor, rate: Tensor) -> Tensor:
        return torch.stack([concentration - 1, -rate], -1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        alpha, rate = eta[..., 0] + 1, -eta[..., 1]
        return torch.lgamma(alpha) - alpha * torch.log(rate)

    def in_domain(self, eta: Tensor) -> Tensor:
        return (eta[..., 0] > -1) & (eta[..., 1] < 0)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x.log(), x], -1)

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return dist.Gamma(eta[..., 0] + 1, -eta[..., 1])


class Beta(ExpFamily):
    """Beta(a, b): λ = (a − 1, b − 1)."""

    name = "beta"

    def natural_params(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.stack([a - 1, b - 1], -1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        a, b = eta[..., 0] + 1, eta[..., 1] + 1
        return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)

    def in_domain(self, eta: Tensor) -> Tensor:
        return (eta > -1).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x.log(), torch.log1p(-x)], -1)

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return dist.Beta(eta[..., 0] + 1, eta[..., 1] + 1)


class Dirichlet(ExpFamily):
    """Dirichlet(α): λ = α − 1."""

    name = "dirichlet"

    def natural_params(self, concentration: Tensor) -> Tensor:
        return concentration - 1

    def log_normalizer(self, eta: Tensor) -> Tensor:
        alpha = eta + 1
        return torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha.sum(-1))

    def in_domain(self, eta: Tensor) -> Tensor:
        return (eta > -1).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x.log()

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return dist.Dirichlet(eta + 1)


class VonMisesFamily(ExpFamily):
    """von Mises(loc m, concentration κ): λ = κ (cos m, sin m)."""

    name = "von_mises"

    def natural_params(self, loc: Tensor, concentration: Tensor) -> Tensor:
        return concentration.unsqueeze(-1) * torch.stack([torch.cos(loc), torch.sin(loc)], -1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        kappa = eta.norm(dim=-1)
        return math.log(2 * math.pi) + torch.log(torch.special.i0e(kappa)) + kappa

    def in_domain(self, eta: Tensor) -> Tensor:
        return eta.norm(dim=-1) > 0

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([torch.cos(x), torch.sin(x)], -1)

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return VonMises(torch.atan2(eta[..., 1], eta[..., 0]), eta.norm(dim=-1))


class Categorical(ExpFamily):
    """Categorical(π) over ``num_outcomes`` = K outcomes: λ = log(π_k / π_K), k < K."""

    name = "categorical"

    def __init__(self, num_outcomes: int):
        self.num_outcomes = num_outcomes

    def natural_params(self, probs: Tensor) -> Tensor:
        return probs[..., :-1].log() - probs[..., -1:].log()

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return torch.nn.functional.softplus(torch.logsumexp(eta, -1))

    def in_domain(self, eta: Tensor) -> Tensor:
        return torch.isfinite(eta).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(x.long(), self.num_outcomes)[..., :-1]

    def probs(self, eta: Tensor) -> Tensor:
        return torch.softmax(torch.cat([eta, torch.zeros_like(eta[..., :1])], -1), -1)

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return dist.Categorical(probs=self.probs(eta))

    def from_mean(self, mu: Tensor, eta: Tensor | None = None, **_) -> Tensor:
        """Closed form: λ = log μ − log(1 − Σ μ)."""
        return mu.log() - torch.log1p(-mu.sum(-1, keepdim=True))


FAMILIES = {f.name: f for f in (Gamma(), Beta(), Dirichlet(), VonMisesFamily())}
"""The families of continuous sites, by name (the categorical of mixture weights takes K)."""
