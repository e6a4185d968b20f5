r"""Exponential families beyond the Gaussian, described once through their log normalizer.

A family :math:`q(x) = h(x)\exp(\langle\lambda, T(x)\rangle - A(\lambda))` is given here by its
sufficient statistics :math:`T`, its log normalizer :math:`A` and the domain of :math:`\lambda`.
Everything else follows: the expectation parameters :math:`\mu = \nabla A(\lambda)` (autograd),
their inverse :math:`\lambda(\mu)` (Newton's method on the convex :math:`A(\lambda) -
\langle\lambda, \mu\rangle`, with step halving that keeps :math:`\lambda` in the domain), and the
entropy :math:`\mathbb H = A(\lambda) - \langle\lambda, \mu\rangle - \mathbb E[\log h]`
(only the LogNormal, a Normal over :math:`\log x`, has a base measure, :math:`h(x) = 1/x`).
The natural gradient of an expectation :math:`\mathbb E_q[f]` in
:math:`\lambda` is its gradient in :math:`\mu` (Khan & Rue 2023, Section 2), which is what the
Bayesian learning rule :math:`\lambda \leftarrow (1-\rho)\lambda - \rho\nabla_\mu\mathbb E_q[\ell]`
needs.

| family | :math:`T(x)` | :math:`\lambda` | :math:`A(\lambda)` |
|---|---|---|---|
| Normal(m, σ) | (x, x²) | (m/σ², −1/(2σ²)) | −λ₁²/(4λ₂) − ½ log(−2λ₂) + ½ log 2π |
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

__all__ = [
    "FAMILIES",
    "Beta",
    "Categorical",
    "Dirichlet",
    "ExpFamily",
    "Gamma",
    "LogNormal",
    "Normal",
    "VonMisesFamily",
]


class ExpFamily:
    """An exponential family through its log normalizer; ``eta`` has the natural parameters in
    its last dimension."""

    name = "expfamily"
    param_names: tuple[str, ...] = ()

    def natural_params(self, *params: Tensor) -> Tensor:
        """Natural parameters from the distribution's own parameters (as ``params`` names them)."""
        raise NotImplementedError

    def natural_from(self, distribution: dist.Distribution) -> Tensor:
        """Natural parameters of a distribution of this family."""
        return self.natural_params(*(getattr(distribution, n) for n in self.param_names))

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

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        """The distribution's own parameters (as ``distribution`` names them)."""
        raise NotImplementedError

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

    def entropy(self, eta: Tensor) -> Tensor:
        r""":math:`A(\lambda) - \langle \lambda, \mu \rangle - \mathbb E_q[\log h(x)]`."""
        mean = (eta * self.mean_params(eta)).sum(-1)
        return self.log_normalizer(eta) - mean - self.expected_log_base_measure(eta)

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
            objective = self.log_normalizer(eta) - (eta * mu).sum(-1)
            grad = self.mean_params(eta) - mu
            if grad.abs().max() < tol:
                break
            step = torch.linalg.solve(self.fisher(eta), grad.unsqueeze(-1)).squeeze(-1)
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


class Normal(ExpFamily):
    """Normal(loc m, scale σ): λ = (m/σ², −1/(2σ²)), T(x) = (x, x²)."""

    name = "normal"
    param_names = ("loc", "scale")

    def natural_params(self, loc: Tensor, scale: Tensor) -> Tensor:
        precision = scale.pow(-2)
        return torch.stack([loc * precision, -0.5 * precision], -1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        e1, e2 = eta[..., 0], eta[..., 1]
        return -0.25 * e1.square() / e2 - 0.5 * torch.log(-2 * e2) + 0.5 * math.log(2 * math.pi)

    def in_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 1] < 0

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x, x.square()], -1)

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        precision = -2 * eta[..., 1]
        return {"loc": eta[..., 0] / precision, "scale": precision.rsqrt()}

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return dist.Normal(**self.params(eta))


class LogNormal(Normal):
    """LogNormal: a Normal over log x, with base measure h(x) = 1/x."""

    name = "lognormal"

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return super().sufficient_statistics(x.log())

    def log_base_measure(self, x: Tensor) -> Tensor:
        return -x.log()

    def expected_log_base_measure(self, eta: Tensor) -> Tensor:
        return -self.params(eta)["loc"]

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return dist.LogNormal(**self.params(eta))


class Gamma(ExpFamily):
    """Gamma(concentration α, rate β): λ = (α − 1, −β)."""

    name = "gamma"
    param_names = ("concentration", "rate")

    def natural_params(self, concentration: Tensor, rate: Tensor) -> Tensor:
        return torch.stack([concentration - 1, -rate], -1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        alpha, rate = eta[..., 0] + 1, -eta[..., 1]
        return torch.lgamma(alpha) - alpha * torch.log(rate)

    def in_domain(self, eta: Tensor) -> Tensor:
        return (eta[..., 0] > -1) & (eta[..., 1] < 0)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x.log(), x], -1)

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"concentration": eta[..., 0] + 1, "rate": -eta[..., 1]}

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return dist.Gamma(**self.params(eta))


class Beta(ExpFamily):
    """Beta(a, b): λ = (a − 1, b − 1)."""

    name = "beta"
    param_names = ("concentration1", "concentration0")

    def natural_params(self, concentration1: Tensor, concentration0: Tensor) -> Tensor:
        return torch.stack([concentration1 - 1, concentration0 - 1], -1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        a, b = eta[..., 0] + 1, eta[..., 1] + 1
        return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)

    def in_domain(self, eta: Tensor) -> Tensor:
        return (eta > -1).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([x.log(), torch.log1p(-x)], -1)

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"concentration1": eta[..., 0] + 1, "concentration0": eta[..., 1] + 1}

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return dist.Beta(**self.params(eta))


class Dirichlet(ExpFamily):
    """Dirichlet(α): λ = α − 1."""

    name = "dirichlet"
    param_names = ("concentration",)

    def natural_params(self, concentration: Tensor) -> Tensor:
        return concentration - 1

    def log_normalizer(self, eta: Tensor) -> Tensor:
        alpha = eta + 1
        return torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha.sum(-1))

    def in_domain(self, eta: Tensor) -> Tensor:
        return (eta > -1).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x.log()

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"concentration": eta + 1}

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return dist.Dirichlet(**self.params(eta))


class VonMisesFamily(ExpFamily):
    """von Mises(loc m, concentration κ): λ = κ (cos m, sin m)."""

    name = "von_mises"
    param_names = ("loc", "concentration")

    def natural_params(self, loc: Tensor, concentration: Tensor) -> Tensor:
        return concentration.unsqueeze(-1) * torch.stack([torch.cos(loc), torch.sin(loc)], -1)

    def log_normalizer(self, eta: Tensor) -> Tensor:
        kappa = eta.norm(dim=-1)
        return math.log(2 * math.pi) + torch.log(torch.special.i0e(kappa)) + kappa

    def in_domain(self, eta: Tensor) -> Tensor:
        return eta.norm(dim=-1) > 0

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.stack([torch.cos(x), torch.sin(x)], -1)

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"loc": torch.atan2(eta[..., 1], eta[..., 0]), "concentration": eta.norm(dim=-1)}

    def distribution(self, eta: Tensor) -> dist.Distribution:
        return VonMises(**self.params(eta))


class Categorical(ExpFamily):
    """Categorical(π) over ``num_outcomes`` = K outcomes: λ = log(π_k / π_K), k < K."""

    name = "categorical"
    param_names = ("probs",)

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


FAMILIES = {
    f.name: f for f in (Normal(), LogNormal(), Gamma(), Beta(), Dirichlet(), VonMisesFamily())
}
"""The families of continuous sites, by name (the categorical of mixture weights takes K)."""
