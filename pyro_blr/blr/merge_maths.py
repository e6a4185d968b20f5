r"""Gaussian posteriors in natural parameters, and their merge: the pure maths of
:func:`pyro_blr.blr.merge.merge`.

A Gaussian :math:`\mathcal N(m, S^{-1})` has natural parameters :math:`\lambda = (Sm, S)` (up to
the factor :math:`-\tfrac12` on :math:`S` that does not matter here). Bayes' rule adds them: a
posterior from a Gaussian prior :math:`\lambda_0` and a likelihood that is Gaussian in
:math:`\theta` has :math:`\lambda_k = \lambda_0 + \lambda(\text{likelihood}_k)`. Posteriors of
:math:`K` disjoint data sets fitted from one prior therefore merge into the posterior of all the
data by

.. math::
    \lambda = \lambda_0 + \sum_{k=1}^K \alpha_k (\lambda_k - \lambda_0)
    = \sum_k \lambda_k - (K - 1)\lambda_0 \quad (\alpha_k = 1),

exactly for conjugate Gaussian models. Its mean is the uncertainty-weighted average
:math:`m = S^{-1}\big(\sum_k S_k m_k - (K-1) S_0 m_0\big)`, :math:`S = \sum_k S_k - (K-1) S_0`,
which is how Daheim et al. (2024) merge models fine-tuned from one pretrained model (the
pretrained posterior as :math:`\lambda_0`, the scales :math:`\alpha_k` weighting the tasks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["GaussianNaturals", "merge_naturals", "not_positive_definite"]


class GaussianNaturals(NamedTuple):
    r"""A Gaussian over the flat latent vector by its natural parameters.

    Attributes:
        eta: :math:`S m`, shape ``(D,)``.
        precision: :math:`S`, ``(D,)`` for a diagonal Gaussian or ``(D, D)``.

    Example:
        >>> import torch
        >>> q = GaussianNaturals.from_moments(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.5]))
        >>> q.eta, q.mean()
        (tensor([ 4., -1.]), tensor([ 1., -2.]))
    """

    eta: Tensor
    precision: Tensor

    @classmethod
    def from_moments(cls, loc: Tensor, precision: Tensor) -> GaussianNaturals:
        """The natural parameters of :math:`\\mathcal N(m, S^{-1})` from ``loc`` :math:`m` and
        ``precision`` :math:`S` (a vector for a diagonal Gaussian, else a matrix)."""
        eta = precision * loc if precision.dim() == 1 else precision @ loc
        return cls(eta, precision)

    @property
    def diagonal(self) -> bool:
        """Whether the precision is diagonal (held as a vector)."""
        return self.precision.dim() == 1

    def mean(self) -> Tensor:
        """:math:`m = S^{-1}\\eta` (the precision must be positive definite)."""
        if self.diagonal:
            return self.eta / self.precision
        return torch.cholesky_solve(self.eta[:, None], torch.linalg.cholesky(self.precision))[:, 0]

    def to_diagonal(self) -> GaussianNaturals:
        r"""The closest diagonal Gaussian in :math:`\mathrm{KL}(q \,\|\, \cdot\,)` from a
        mean-field :math:`q`: the same mean, the precision's diagonal (what a mean-field fit of
        this Gaussian converges to)."""
        if self.diagonal:
            return self
        precision = self.precision.diagonal()
        return GaussianNaturals(precision * self.mean(), precision)


def not_positive_definite(precision: Tensor) -> int | None:
    """The first coordinate where ``precision`` fails to be positive definite, or ``None``.

    For a diagonal precision (a vector): the first entry that is not positive (or not finite).
    For a matrix: the last row of the smallest leading block that is not positive definite.

    Example:
        >>> import torch
        >>> not_positive_definite(torch.tensor([1.0, -1.0])), not_positive_definite(torch.eye(2))
        (1, None)
    """
    if precision.dim() == 1:
        bad = torch.nonzero(~(precision > 0) | ~torch.isfinite(precision)).flatten()
        return int(bad[0]) if len(bad) else None
    if not bool(torch.isfinite(precision).all()):
        return int(torch.nonzero(~torch.isfinite(precision))[0, 0])
    _, info = torch.linalg.cholesky_ex(precision)
    return int(info) - 1 if int(info) > 0 else None


def merge_naturals(
    posteriors: Sequence[GaussianNaturals],
    prior: GaussianNaturals,
    weights: Sequence[float] | Tensor | None = None,
) -> GaussianNaturals:
    r"""Merge Gaussian posteriors fitted from one Gaussian prior, in natural parameters.

    .. math::
        \lambda = \lambda_0 + \sum_{k=1}^K \alpha_k (\lambda_k - \lambda_0),

    the posterior of all the data when each :math:`\lambda_k` is the posterior of a disjoint
    part from the prior :math:`\lambda_0` and each likelihood is Gaussian in :math:`\theta`
    (:math:`\alpha_k = 1`), and otherwise the natural-parameter form of the
    uncertainty-weighted merge of Daheim et al. (2024).

    References:
        | Model Merging by Uncertainty-Based Gradient Matching
        | (Daheim, Möllenhoff, Ponti, Gurevych & Khan, ICLR 2024)
        | https://arxiv.org/abs/2310.12808

    Args:
        posteriors: the :math:`K` posteriors, all diagonal or all full, of one shape.
        prior: the prior they share, of the same kind and shape.
        weights: the scales :math:`\alpha_k` (default 1 each: the Bayesian merge).

    Returns:
        The merged :class:`GaussianNaturals` (its precision is not checked: see
        :func:`not_positive_definite`).

    Raises:
        ValueError: no posterior, a posterior or the prior of another kind (diagonal or full)
            or shape, or not one weight per posterior.

    Example:
        Two halves of the data of :math:`y_j \sim \mathcal N(\theta, 1)`,
        :math:`\theta \sim \mathcal N(0, 1)`: each half adds its count to the precision and its
        sum to :math:`\eta`.

        >>> import torch
        >>> prior = GaussianNaturals(torch.zeros(1), torch.ones(1))
        >>> first = GaussianNaturals(torch.tensor([3.0]), torch.tensor([3.0]))  # y = 1, 2
        >>> second = GaussianNaturals(torch.tensor([4.0]), torch.tensor([2.0]))  # y = 4
        >>> merge_naturals([first, second], prior)  # all three data: eta 7, precision 4
        GaussianNaturals(eta=tensor([7.]), precision=tensor([4.]))
    """
    if not posteriors:
        raise ValueError("merge_naturals needs at least one posterior")
    for k, posterior in enumerate(posteriors):
        if posterior.precision.shape != prior.precision.shape:
            what = "diagonal" if posterior.diagonal else "full"
            prior_what = "diagonal" if prior.diagonal else "full"
            raise ValueError(
                f"posterior {k} has a {what} precision of shape "
                f"{tuple(posterior.precision.shape)}, the prior a {prior_what} one of shape "
                f"{tuple(prior.precision.shape)}: merge Gaussians of one kind over one latent "
                "vector (GaussianNaturals.to_diagonal() projects a full one)"
            )
        if posterior.eta.shape != prior.eta.shape:
            raise ValueError(
                f"posterior {k} has eta of shape {tuple(posterior.eta.shape)}, the prior "
                f"{tuple(prior.eta.shape)}"
            )
    like = prior.eta
    if weights is None:
        alphas = torch.ones(len(posteriors), dtype=like.dtype, device=like.device)
    else:
        alphas = torch.as_tensor(weights, dtype=like.dtype, device=like.device).reshape(-1)
        if alphas.shape[0] != len(posteriors):
            raise ValueError(
                f"weights has {alphas.shape[0]} entries for {len(posteriors)} posteriors: give "
                "one scale per posterior"
            )
    eta, precision = prior.eta.clone(), prior.precision.clone()
    for alpha, posterior in zip(alphas, posteriors, strict=True):
        eta = eta + alpha * (posterior.eta - prior.eta)
        precision = precision + alpha * (posterior.precision - prior.precision)
    if not precision.dim() == 1:
        precision = 0.5 * (precision + precision.mT)
    return GaussianNaturals(eta, precision)
