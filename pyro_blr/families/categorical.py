r"""The categorical family over :math:`K` outcomes, for mixture weights and one-hot latent sites.

.. math::
    T(k) = (\mathbb 1[k = 1], \dots, \mathbb 1[k = K-1]), \qquad
    \lambda_k = \log\frac{\pi_k}{\pi_K}, \qquad
    A(\lambda) = \log\Big(1 + \sum_{k<K} e^{\lambda_k}\Big),

so :math:`\mu_k = \pi_k` and the inverse map is closed-form,
:math:`\lambda_k = \log\mu_k - \log(1 - \sum_j \mu_j)`. Every finite :math:`\lambda` is valid. A
mixture's weights are this family: the Bayesian learning rule moves a mixture guide's logits
(:math:`\lambda` up to a shift) by it (Lin, Khan & Schmidt 2019).

A latent ``OneHotCategorical`` site gets the same family as :class:`OneHotCategorical`, held by
its logits, with one-hot draws. Its draws are discrete, so the Bayesian learning rule estimates
:math:`\nabla_\mu\mathbb E_q[\ell]` on the Gumbel-softmax (concrete) relaxation
(:meth:`OneHotCategorical.relaxed_draws`): with Gumbel noise :math:`g_k` and temperature
:math:`\tau`,

.. math::
    x_\tau = \operatorname{softmax}\big((\lambda_1, \dots, \lambda_{K-1}, 0) + g)/\tau\big)
    \in \Delta^{K-1},

whose :math:`\operatorname{argmax}` is an exact Categorical(:math:`\pi`) draw (the Gumbel-max
trick); the model then runs at points of the simplex
(:class:`~pyro_blr.families.relaxation.OneHotSite`). A ``Categorical`` site, whose value is an
integer index, cannot take relaxed values: it is refused, naming the fix (write it
``OneHotCategorical``, or enumerate it).

References:
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
    | Categorical Reparameterization with Gumbel-Softmax (Jang, Gu & Poole, ICLR 2017)
      https://arxiv.org/abs/1611.01144
    | The Concrete Distribution (Maddison, Mnih & Teh, ICLR 2017)
      https://arxiv.org/abs/1611.00712
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_blr.families.base import ExpFamily
from pyro_blr.families.relaxation import is_one_hot_site

__all__ = ["Categorical", "OneHotCategorical"]


class Categorical(ExpFamily):
    r"""Categorical(:math:`\pi`) over ``num_outcomes`` :math:`= K` outcomes.

    It matches no latent site: a mixture's weights are its use (a latent one-hot site takes
    :class:`OneHotCategorical`).

    Example:
        >>> import torch
        >>> family = Categorical(3)
        >>> eta = family.natural_params(torch.tensor([0.25, 0.25, 0.5]))
        >>> family.probs(eta)
        tensor([0.2500, 0.2500, 0.5000])
        >>> family.from_mean(family.mean_params(eta))
        tensor([-0.6931, -0.6931])
    """

    name = "categorical"
    distribution_class = dist.Categorical
    param_constraints: ClassVar[dict] = {"probs": constraints.simplex}
    param_event_dims: ClassVar[dict] = {"probs": 1}

    def __init__(self, num_outcomes: int):
        self.num_outcomes = num_outcomes

    def natural_params(self, probs: Tensor) -> Tensor:
        return probs[..., :-1].log() - probs[..., -1:].log()

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"probs": self.probs(eta)}

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return torch.nn.functional.softplus(torch.logsumexp(eta, -1))

    def in_domain(self, eta: Tensor) -> Tensor:
        return torch.isfinite(eta).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(x.long(), self.num_outcomes)[..., :-1]

    def matches(self, fn: dist.Distribution) -> bool:
        return False

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        """Uniform weights (``value`` gives only the batch shape and dtype).

        Example:
            >>> import torch
            >>> Categorical(4).initial_params(torch.zeros(()), 0.1)["probs"]
            tensor([0.2500, 0.2500, 0.2500, 0.2500])
        """
        return {"probs": value.new_full((*value.shape, self.num_outcomes), 1 / self.num_outcomes)}

    def probs(self, eta: Tensor) -> Tensor:
        r""":math:`\pi = \operatorname{softmax}(\lambda, 0)`."""
        return torch.softmax(torch.cat([eta, torch.zeros_like(eta[..., :1])], -1), -1)

    def from_mean(self, mu: Tensor, eta: Tensor | None = None, **_) -> Tensor:
        r"""Closed form: :math:`\lambda = \log\mu - \log(1 - \sum\mu)`."""
        return mu.log() - torch.log1p(-mu.sum(-1, keepdim=True))


class OneHotCategorical(ExpFamily):
    r"""OneHotCategorical(:math:`\pi`) over :math:`K` outcomes, held by its logits
    :math:`(\lambda_1, \dots, \lambda_{K-1}, 0)`, :math:`\lambda_k = \log\pi_k/\pi_K` (no
    probability rounds to 0 and becomes unrepresentable); :math:`K` is read from the parameters.

    .. math::
        T(x) = (x_1, \dots, x_{K-1}), \qquad \mu = (\pi_1, \dots, \pi_{K-1}), \qquad
        F = \operatorname{diag}(\mu) - \mu\mu^\top.

    It fits the latent ``OneHotCategorical`` sites that :class:`pyro_blr.AutoExpFamily` keeps
    discrete (see :mod:`pyro_blr.families.relaxation`).

    Example:
        >>> import torch
        >>> family = OneHotCategorical()
        >>> eta = family.natural_params(torch.tensor([0.0, 0.0, 0.0]))
        >>> family.mean_params(eta), family.entropy(eta)
        (tensor([0.3333, 0.3333]), tensor(1.0986))
        >>> family.median(torch.tensor([[2.0, -1.0], [-1.0, -2.0]]))
        tensor([[1., 0., 0.],
                [0., 0., 1.]])
    """

    name = "one_hot_categorical"
    distribution_class = dist.OneHotCategorical
    param_constraints: ClassVar[dict] = {"logits": constraints.real_vector}
    param_event_dims: ClassVar[dict] = {"logits": 1}
    discrete = True

    def natural_params(self, logits: Tensor) -> Tensor:
        return logits[..., :-1] - logits[..., -1:]

    def params(self, eta: Tensor) -> dict[str, Tensor]:
        return {"logits": torch.cat([eta, torch.zeros_like(eta[..., :1])], -1)}

    def log_normalizer(self, eta: Tensor) -> Tensor:
        return torch.logsumexp(self.params(eta)["logits"], -1)

    def in_domain(self, eta: Tensor) -> Tensor:
        return torch.isfinite(eta).all(-1)

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        return x[..., :-1]

    def matches(self, fn: dist.Distribution) -> bool:
        """Latent ``OneHotCategorical`` sites kept discrete (see
        :mod:`pyro_blr.families.relaxation`)."""
        return is_one_hot_site(fn)

    def initial_params(self, value: Tensor, init_scale: float) -> dict[str, Tensor]:
        """The probabilities ``value`` (the prior's), each clamped to at least the dtype's
        machine epsilon; ``init_scale`` is not used: a categorical's spread is fixed by its
        probabilities.

        Example:
            >>> import torch
            >>> OneHotCategorical().initial_params(torch.tensor([0.5, 0.25, 0.25]), 0.1)
            {'logits': tensor([0.6931, 0.0000, 0.0000])}
        """
        logits = value.clamp_min(torch.finfo(value.dtype).eps).log()
        return {"logits": logits - logits[..., -1:]}

    def mean_params(self, eta: Tensor) -> Tensor:
        r""":math:`\mu_k = \pi_k`, :math:`k < K` (closed form)."""
        return self.probs(eta)[..., :-1]

    def fisher(self, eta: Tensor) -> Tensor:
        r""":math:`F = \operatorname{diag}(\mu) - \mu\mu^\top`, shape ``(..., K-1, K-1)``
        (closed form; the diagonal as :math:`\pi_j\sum_{k \ne j}\pi_k`, so that it does not
        cancel to 0 where :math:`\pi_j` rounds to 1)."""
        probs = self.probs(eta)
        mu = probs[..., :-1]
        k = probs.shape[-1]
        others = ~torch.eye(k, dtype=torch.bool, device=eta.device)[:-1]  # (K-1, K): i != j
        rest = (probs.unsqueeze(-2) * others).sum(-1)  # 1 - pi_j, summed, not subtracted
        off = -mu.unsqueeze(-1) * mu.unsqueeze(-2)
        return off - torch.diag_embed(off.diagonal(dim1=-2, dim2=-1)) + torch.diag_embed(mu * rest)

    def from_mean(self, mu: Tensor, eta: Tensor | None = None, **_) -> Tensor:
        r"""Closed form: :math:`\lambda = \log\mu - \log(1 - \sum\mu)`."""
        return mu.log() - torch.log1p(-mu.sum(-1, keepdim=True))

    def probs(self, eta: Tensor) -> Tensor:
        r""":math:`\pi = \operatorname{softmax}(\lambda, 0)`, all :math:`K` of them."""
        return torch.softmax(self.params(eta)["logits"], -1)

    def relaxed_draws(self, eta: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        r"""Gumbel-softmax draws :math:`x_\tau = \operatorname{softmax}(z)`,
        :math:`z = ((\lambda, 0) + g)/\tau`, :math:`g_k = -\log(-\log u_k)`, one per row of
        ``eta`` (shape ``(..., K-1)``; draws ``(..., K)``), and their logarithm
        :math:`\log x_\tau` (``log_softmax``: a saturated draw, :math:`x_\tau` rounded to a
        vertex, keeps the weights
        :math:`\partial x_{\tau,j}/\partial\lambda_k = x_{\tau,j}(\delta_{jk} - x_{\tau,k})/\tau`
        that :func:`pyro_blr.blr.steppers.expfamily_estimates.relaxed_simplex_gradient` forms
        from it). The one-hot vector of :math:`\operatorname{argmax} z` is an exact draw.

        Example:
            >>> import torch
            >>> x, log_x = OneHotCategorical().relaxed_draws(torch.zeros(3000, 2), 0.1)
            >>> bool(torch.allclose(x.sum(-1), torch.ones(3000)) and torch.isfinite(log_x).all())
            True
            >>> exact = torch.nn.functional.one_hot(log_x.argmax(-1)).double()
            >>> [round(float(f), 1) for f in exact.mean(0)]
            [0.3, 0.3, 0.3]
        """
        logits = self.params(eta)["logits"]
        u = torch.rand_like(logits)
        tiny = torch.finfo(logits.dtype).tiny
        gumbel = -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))
        log_x = torch.log_softmax((logits + gumbel) / temperature, -1)
        return log_x.exp(), log_x

    def check_resolved(self, eta: Tensor) -> None:
        r"""Raise ``FloatingPointError`` where an outcome's probability underflows to 0 in
        ``eta``'s dtype (its Fisher information is then singular: the natural-gradient step
        divides by it).

        Raises:
            FloatingPointError: naming the smallest probability and the dtype to use.
        """
        probs = self.probs(eta)
        if not (probs > 0).all():
            raise FloatingPointError(
                f"a categorical probability underflows to 0 in {eta.dtype} (its logits differ by "
                f"{float(eta.abs().max()):.4g}): "
                + (
                    "fit in float64"
                    if eta.dtype != torch.float64
                    else "the data rule that outcome out beyond doubt; drop it from the model"
                )
            )

    def median(self, eta: Tensor) -> Tensor:
        r"""The mode: the one-hot vector of :math:`\operatorname{argmax}_k \pi_k` (a value the
        model takes; a categorical has no order, hence no median)."""
        logits = self.params(eta)["logits"]
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(eta.dtype)

    def quantile(self, eta: Tensor, q: Tensor) -> Tensor:
        r"""Exact quantiles of each indicator :math:`x_k \sim` Bernoulli(:math:`\pi_k`),
        :math:`\mathbb 1[q > 1 - \pi_k]`, shape ``(len(q), *batch, K)``: marginal, so a row
        need not be one-hot.

        Example:
            >>> import torch
            >>> eta = torch.tensor([[1.0, 0.0]])  # probabilities 0.58, 0.21, 0.21
            >>> OneHotCategorical().quantile(eta, torch.tensor([0.05, 0.5, 0.95]))
            tensor([[[0., 0., 0.]],
            <BLANKLINE>
                    [[1., 0., 0.]],
            <BLANKLINE>
                    [[1., 1., 1.]]])
        """
        p = self.probs(eta)
        q = q.reshape(-1, *([1] * p.dim()))
        return (q > 1 - p).to(eta.dtype)
