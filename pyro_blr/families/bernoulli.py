r"""The Bernoulli family, for binary latent sites (BayesBiNN's mean-field factor).

.. math::
    q(x) = p^x (1-p)^{1-x}, \qquad T(x) = x, \qquad \lambda = \log\frac{p}{1-p}, \qquad
    A(\lambda) = \log(1 + e^\lambda), \qquad \mu = p, \qquad F = p(1-p),

every finite :math:`\lambda` valid, the inverse map :math:`\lambda = \operatorname{logit}\mu`
closed-form. (BayesBiNN writes the same family on :math:`\pm1`: its :math:`\lambda` is half this
one and its :math:`\mu = 2p - 1`; the rule's step is the same.)

Draws are discrete, so they have no reparameterization. The Bayesian learning rule's gradient
:math:`\nabla_\mu\mathbb E_q[\ell]` is estimated on the Gumbel-softmax (concrete) relaxation
(:meth:`Bernoulli.relaxed_draws`): with :math:`u \sim U(0, 1)` and temperature :math:`\tau`,

.. math::
    x_\tau = \sigma\big((\lambda + \log u - \log(1-u))/\tau\big) \in [0, 1],

whose rounding :math:`\mathbb 1[x_\tau > \tfrac12]` is an exact Bernoulli(:math:`p`) draw. The
relaxed draw is differentiable in :math:`\lambda`; BayesBiNN's estimate of
:math:`\nabla_\mu\mathbb E_q[\ell]` is :math:`F^{-1}\,\partial\ell(x_\tau)/\partial\lambda`
(their equation 11). The BLR here uses its self-normalized form, exact where :math:`\ell` is
linear in the site and bounded (:func:`pyro_blr.blr.steppers.expfamily_estimates.relaxed_gradient`);
both are biased by the relaxation, the bias vanishing as :math:`\tau \to 0`.

References:
    | Training Binary Neural Networks using the Bayesian Learning Rule (Meng, Bachmann & Khan,
      ICML 2020) https://arxiv.org/abs/2002.10778
    | The Concrete Distribution (Maddison, Mnih & Teh, ICLR 2017)
      https://arxiv.org/abs/1611.00712
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_blr.families.base import ExpFamily, clamp_unit
from pyro_blr.families.relaxation import is_binary_site

__all__ = ["Bernoulli"]


class Bernoulli(ExpFamily):
    r"""Bernoulli(:math:`p`), held by its logits :math:`\lambda = \operatorname{logit} p` (no
    probability rounds to 0 or 1 and becomes unrepresentable).

    It fits the latent Bernoulli sites that :class:`pyro_blr.AutoExpFamily` keeps as binary
    (see :mod:`pyro_blr.families.relaxation`).

    Example:
        >>> import torch
        >>> family = Bernoulli()
        >>> eta = family.natural_params(torch.tensor(0.0))
        >>> family.mean_params(eta), family.entropy(eta)
        (tensor([0.5000]), tensor(0.6931))
        >>> family.from_mean(torch.tensor([0.25]))
        tensor([-1.0986])
    """

    name = "bernoulli"
    distribution_class = dist.Bernoulli
    param_constraints: ClassVar[dict] = {"logits": constraints.real}
    discrete = True

    def natural_params(self, logits: Tensor) -> Tensor:
        return logits.unsqueeze(-1)

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"logits": eta[..., 0]}

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return torch.nn.functional.softplus(eta[..., 0])

    def in_domain(self, eta: Tensor) -> Tensor:
        return torch.isfinite(eta).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-1)

    def matches(self, fn: dist.Distribution) -> bool:
        """Latent Bernoulli sites kept binary (see :mod:`pyro_blr.families.relaxation`)."""
        return is_binary_site(fn)

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        """Probability ``value`` (the prior's, clamped by
        :func:`~pyro_blr.families.base.clamp_unit`); ``init_scale`` is not used: a Bernoulli's
        spread is fixed by its mean.

        Example:
            >>> import torch
            >>> Bernoulli().initial_params(torch.tensor(0.5), 0.1)
            {'logits': tensor(0.)}
        """
        return {"logits": torch.logit(clamp_unit(value))}

    def mean_params(self, eta: Tensor) -> Tensor:
        r""":math:`\mu = \sigma(\lambda)` (closed form)."""
        return torch.sigmoid(eta)

    def fisher(self, eta: Tensor) -> Tensor:
        r""":math:`F = p(1-p)`, shape ``(..., 1, 1)`` (closed form)."""
        return (torch.sigmoid(eta) * torch.sigmoid(-eta)).unsqueeze(-1)

    def from_mean(self, mu: Tensor, eta: Tensor | None = None, **_) -> Tensor:
        r"""Closed form: :math:`\lambda = \operatorname{logit}\mu`."""
        return torch.logit(mu)

    def relaxed_draws(self, eta: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        r"""Gumbel-softmax draws :math:`x_\tau = \sigma(z)`,
        :math:`z = (\lambda + \log u - \log(1-u))/\tau`, one per row of ``eta`` (shape
        ``(..., 1)``), and the log of their weights
        :math:`\log\partial x_\tau/\partial\lambda = \log\sigma(z) + \log\sigma(-z) - \log\tau`,
        computed in log space so that a saturated draw (:math:`x_\tau` rounded to 0 or 1) keeps
        its weight. ``x > 0.5`` is an exact Bernoulli draw.

        Example:
            >>> import torch
            >>> x, log_weight = Bernoulli().relaxed_draws(torch.zeros(1000, 1), 0.1)
            >>> inside = bool(((x >= 0) & (x <= 1)).all() and torch.isfinite(log_weight).all())
            >>> inside, round(float((x > 0.5).float().mean()), 1)
            (True, 0.5)
        """
        logits = eta[..., 0]
        u = torch.rand_like(logits)
        tiny = torch.finfo(logits.dtype).tiny
        z = (logits + torch.log(u.clamp_min(tiny)) - torch.log1p(-u)) / temperature
        log_weight = (
            torch.nn.functional.logsigmoid(z) + torch.nn.functional.logsigmoid(-z)
        ) - torch.log(logits.new_tensor(temperature))
        return torch.sigmoid(z), log_weight

    def check_resolved(self, eta: Tensor) -> None:
        r"""Raise ``FloatingPointError`` where :math:`p(1-p)` underflows in ``eta``'s dtype
        (:math:`|\lambda|` beyond about 103 in float32, 745 in float64): the natural-gradient
        step divides by it.

        Raises:
            FloatingPointError: naming the largest :math:`|\lambda|` and the dtype to use.
        """
        if not (self.fisher(eta) > 0).all():
            largest = float(eta.abs().max())
            raise FloatingPointError(
                f"a Bernoulli logit of magnitude {largest:.4g} is beyond what {eta.dtype} "
                "resolves (its probability's variance p(1-p) underflows to 0): "
                + (
                    "fit in float64"
                    if eta.dtype != torch.float64
                    else "the data fix the site beyond doubt; observe it at its value"
                )
            )

    def median(self, eta: Tensor) -> Tensor:
        r"""The median :math:`\mathbb 1[p > \tfrac12]` (0 at :math:`p = \tfrac12`)."""
        return (eta[..., 0] > 0).to(eta.dtype)

    def quantile(self, eta: Tensor, q: Tensor) -> Tensor:
        r"""Exact quantiles :math:`\inf\{x : P(X \le x) \ge q\} = \mathbb 1[q > 1 - p]`, shape
        ``(len(q), *batch)``.

        Example:
            >>> import torch
            >>> Bernoulli().quantile(torch.tensor([[0.0]]), torch.tensor([0.05, 0.5, 0.95]))
            tensor([[0.],
                    [0.],
                    [1.]])
        """
        p = torch.sigmoid(eta[..., 0])
        q = q.reshape(-1, *([1] * p.dim()))
        return (q > 1 - p).to(eta.dtype)
