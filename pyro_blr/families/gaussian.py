r"""The Gaussian family in natural and expectation parameters.

A Gaussian :math:`q(\theta) = \mathcal N(m, S^{-1})` with precision :math:`S` is an exponential
family with sufficient statistics :math:`T(\theta) = (\theta, \theta\theta^\top)` and

.. math::
    \lambda = (S m,\; -\tfrac12 S), \qquad
    \mu = \mathbb E_q[T(\theta)] = (m,\; m m^\top + S^{-1}),

    A(\lambda) = -\tfrac14 \lambda_1^\top \lambda_2^{-1} \lambda_1
        - \tfrac12 \log\det(-2\lambda_2) + \tfrac D2 \log 2\pi,
    \qquad \mu = \nabla A(\lambda).

Two variants share one interface: :data:`DIAGONAL` (precision is a vector, the statistics are
:math:`(\theta, \theta^2)`) and :data:`FULL` (precision is a positive-definite matrix). All
functions are pure and act on the trailing dimensions, so they follow the device and dtype of
their inputs.

References:
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023), Section 2
    | https://arxiv.org/abs/2107.04562
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DIAGONAL",
    "FULL",
    "GaussianFamily",
    "gaussian_family",
    "is_positive_definite",
    "precision_from_scale_tril",
    "scale_tril_from_precision",
]


def _diag_natural_params(loc: Tensor, precision: Tensor) -> tuple[Tensor, Tensor]:
    return precision * loc, -0.5 * precision


def _diag_from_natural(eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
    precision = -2.0 * eta2
    return eta1 / precision, precision


def _diag_mean_params(loc: Tensor, precision: Tensor) -> tuple[Tensor, Tensor]:
    return loc, loc.square() + precision.reciprocal()


def _diag_from_mean(mu1: Tensor, mu2: Tensor) -> tuple[Tensor, Tensor]:
    return mu1, (mu2 - mu1.square()).reciprocal()


def _diag_log_normalizer(eta1: Tensor, eta2: Tensor) -> Tensor:
    d = eta1.shape[-1]
    quad = -0.25 * (eta1.square() / eta2).sum(-1)
    return quad - 0.5 * torch.log(-2.0 * eta2).sum(-1) + 0.5 * d * math.log(2 * math.pi)


def _diag_log_det_precision(precision: Tensor) -> Tensor:
    return precision.log().sum(-1)


def _diag_sample(loc: Tensor, precision: Tensor, noise: Tensor) -> Tensor:
    return loc + noise * precision.rsqrt()


def _diag_solve(precision: Tensor, vector: Tensor) -> Tensor:
    return vector / precision


def _full_natural_params(loc: Tensor, precision: Tensor) -> tuple[Tensor, Tensor]:
    return (precision @ loc.unsqueeze(-1)).squeeze(-1), -0.5 * precision


def _full_from_natural(eta1: Tensor, eta2: Tensor) -> tuple[Tensor, Tensor]:
    precision = -2.0 * eta2
    chol = torch.linalg.cholesky(precision)
    return torch.cholesky_solve(eta1.unsqueeze(-1), chol).squeeze(-1), precision


def _full_mean_params(loc: Tensor, precision: Tensor) -> tuple[Tensor, Tensor]:
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    return loc, loc.unsqueeze(-1) * loc.unsqueeze(-2) + covariance


def _full_from_mean(mu1: Tensor, mu2: Tensor) -> tuple[Tensor, Tensor]:
    covariance = mu2 - mu1.unsqueeze(-1) * mu1.unsqueeze(-2)
    return mu1, torch.cholesky_inverse(torch.linalg.cholesky(covariance))


def _full_log_normalizer(eta1: Tensor, eta2: Tensor) -> Tensor:
    d = eta1.shape[-1]
    precision = -2.0 * eta2
    chol = torch.linalg.cholesky(precision)
    loc = torch.cholesky_solve(eta1.unsqueeze(-1), chol).squeeze(-1)
    quad = 0.5 * (eta1 * loc).sum(-1)
    log_det = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return quad - 0.5 * log_det + 0.5 * d * math.log(2 * math.pi)


def _full_log_det_precision(precision: Tensor) -> Tensor:
    return 2.0 * torch.linalg.cholesky(precision).diagonal(dim1=-2, dim2=-1).log().sum(-1)


def _full_sample(loc: Tensor, precision: Tensor, noise: Tensor) -> Tensor:
    # theta = m + L^{-T} eps with S = L L^T, so Cov(theta) = L^{-T} L^{-1} = S^{-1}.
    chol = torch.linalg.cholesky(precision)
    offset = torch.linalg.solve_triangular(chol.mT, noise.unsqueeze(-1), upper=True)
    return loc + offset.squeeze(-1)


def _full_solve(precision: Tensor, vector: Tensor) -> Tensor:
    chol = torch.linalg.cholesky(precision)
    return torch.cholesky_solve(vector.unsqueeze(-1), chol).squeeze(-1)


class GaussianFamily(NamedTuple):
    """The maps of one Gaussian variant (see the module docstring for the maths).

    Every function takes ``(loc, precision)`` with ``precision`` a vector (diagonal) or a matrix
    (full) and acts on the trailing dimensions.

    Attributes:
        diagonal: whether the precision is a vector of its diagonal.
        natural_params: ``(loc, precision) -> (eta1, eta2)``.
        from_natural: ``(eta1, eta2) -> (loc, precision)``.
        mean_params: ``(loc, precision) -> (mu1, mu2)``.
        from_mean: ``(mu1, mu2) -> (loc, precision)``.
        log_normalizer: ``(eta1, eta2) -> A``.
        log_det_precision: ``precision -> log det S``.
        sample: ``(loc, precision, noise) -> theta``, reparameterized by standard normal ``noise``.
        solve: ``(precision, v) -> S^{-1} v`` for vectors ``v``.
    """

    diagonal: bool
    natural_params: object
    from_natural: object
    mean_params: object
    from_mean: object
    log_normalizer: object
    log_det_precision: object
    sample: object
    solve: object

    def entropy(self, precision: Tensor) -> Tensor:
        r"""Differential entropy :math:`\tfrac D2 (1 + \log 2\pi) - \tfrac12 \log\det S`.

        Example:
            >>> import torch
            >>> round(float(DIAGONAL.entropy(torch.ones(2))), 4)
            2.8379
        """
        d = precision.shape[-1]
        return 0.5 * d * (1.0 + math.log(2 * math.pi)) - 0.5 * self.log_det_precision(precision)


DIAGONAL = GaussianFamily(
    True,
    _diag_natural_params,
    _diag_from_natural,
    _diag_mean_params,
    _diag_from_mean,
    _diag_log_normalizer,
    _diag_log_det_precision,
    _diag_sample,
    _diag_solve,
)
FULL = GaussianFamily(
    False,
    _full_natural_params,
    _full_from_natural,
    _full_mean_params,
    _full_from_mean,
    _full_log_normalizer,
    _full_log_det_precision,
    _full_sample,
    _full_solve,
)


def gaussian_family(precision: Tensor) -> GaussianFamily:
    """The variant matching a precision: :data:`DIAGONAL` for a vector, :data:`FULL` for a matrix.

    Example:
        >>> import torch
        >>> gaussian_family(torch.eye(3)).diagonal
        False
    """
    return DIAGONAL if precision.dim() == 1 else FULL


def is_positive_definite(precision: Tensor) -> bool:
    r"""Whether a precision is positive definite as its dtype can factorize it: every entry
    positive for a diagonal (a vector), a Cholesky factorization :math:`S = LL^\top` that
    completes for a matrix (checked by ``cholesky_ex``, never by an exception of the solver).

    Example:
        >>> import torch
        >>> is_positive_definite(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))  # eigenvalues 3, -1
        False
        >>> is_positive_definite(torch.tensor([1.0, 0.5]))
        True
    """
    if precision.dim() == 1:
        return bool((precision > 0).all())
    return bool(torch.linalg.cholesky_ex(precision).info == 0)


def scale_tril_from_precision(precision: Tensor) -> Tensor:
    r"""The lower Cholesky factor :math:`L` of the covariance :math:`S^{-1} = LL^\top`.

    Example:
        >>> import torch
        >>> scale_tril_from_precision(torch.tensor([[4.0, 0.0], [0.0, 0.25]])).diagonal()
        tensor([0.5000, 2.0000])
    """
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    return torch.linalg.cholesky(covariance)


def precision_from_scale_tril(scale_tril: Tensor) -> Tensor:
    r"""The precision :math:`S = (LL^\top)^{-1}` of a covariance given by its Cholesky factor.

    Example:
        >>> import torch
        >>> precision_from_scale_tril(torch.tensor([[0.5, 0.0], [0.0, 2.0]])).diagonal()
        tensor([4.0000, 0.2500])
    """
    return torch.cholesky_inverse(scale_tril)
