r"""The categorical family over :math:`K` outcomes, for mixture weights.

.. math::
    T(k) = (\mathbb 1[k = 1], \dots, \mathbb 1[k = K-1]), \qquad
    \lambda_k = \log\frac{\pi_k}{\pi_K}, \qquad
    A(\lambda) = \log\Big(1 + \sum_{k<K} e^{\lambda_k}\Big),

so :math:`\mu_k = \pi_k` and the inverse map is closed-form,
:math:`\lambda_k = \log\mu_k - \log(1 - \sum_j \mu_j)`. Every finite :math:`\lambda` is valid. A
mixture's weights are this family: the Bayesian learning rule moves a mixture guide's logits
(:math:`\lambda` up to a shift) by it (Lin, Khan & Schmidt 2019).

References:
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from pyro_blr.families.base import ExpFamily

__all__ = ["Categorical"]


class Categorical(ExpFamily):
    r"""Categorical(:math:`\pi`) over ``num_outcomes`` :math:`= K` outcomes.

    It matches no latent site (discrete sites are enumerated, not guided).

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
