r"""The Jaakkola–Jordan bound on the logistic sigmoid, and the closed-form lower bound on the
evidence of a Bernoulli-logit model with a Gaussian prior that it gives: the pure maths.

For every :math:`\xi`, with :math:`\lambda(\xi) = \tanh(\xi/2) / (4\xi)`,

.. math::
    \log\sigma(z) \ge \log\sigma(\xi) + \frac{z - \xi}{2} - \lambda(\xi)\,(z^2 - \xi^2),

with equality at :math:`z = \pm\xi`. A Bernoulli observation :math:`y \in \{0, 1\}` with logit
:math:`a` has :math:`\log p(y \mid a) = \log\sigma(s a)`, :math:`s = 2y - 1`, so with logits
affine in the latents, :math:`a_n = j_n^\top\theta + c_n`, and the rest of the log joint an exact
quadratic :math:`r(\theta) = r_0 + g^\top\theta - \tfrac12\theta^\top P\theta` (the Gaussian prior
and any Gaussian observation), the bounded joint is an unnormalized Gaussian:

.. math::
    \log p(\mathcal D) \ge \mathcal L(\xi) = K + \tfrac12 b^\top A^{-1} b
    + \tfrac D2\log 2\pi - \tfrac12\log\lvert A\rvert,

    A = P + 2\sum_n \omega_n\lambda_n j_n j_n^\top, \quad
    b = g + \sum_n \omega_n\big(\tfrac{s_n}2 - 2\lambda_n c_n\big) j_n,

    K = r_0 + \sum_n \omega_n\big(\log\sigma(\xi_n) - \tfrac{\xi_n}2 + \lambda_n\xi_n^2
    + \tfrac{s_n c_n}2 - \lambda_n c_n^2\big),

where :math:`\omega_n \ge 0` is each term's weight (Pyro's scale and mask; the bound holds term by
term). The Gaussian :math:`q = \mathcal N(A^{-1}b, A^{-1})` is the bounded joint normalized, and
the EM fixed point :math:`\xi_n^2 = \mathbb E_q[a_n^2]` maximizes :math:`\mathcal L` step by step
(each update can only raise it). There :math:`\mathcal L = \mathbb E_q[r(\theta)] + \sum_n
\omega_n(\log\sigma(\xi_n) + (s_n\mathbb E_q a_n - \xi_n)/2) + \mathbb H[q]`.

References:
    | Bayesian parameter estimation via variational methods (Jaakkola & Jordan, Statistics and
      Computing 10, 2000) https://doi.org/10.1023/A:1008932416310
    | Pattern Recognition and Machine Learning, section 10.6 (Bishop, 2006)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

__all__ = ["LogitQuadratic", "jj_bound", "jj_fixed_point", "jj_lambda", "jj_xi"]


class LogitQuadratic(NamedTuple):
    r"""A log joint made of Bernoulli-logit terms affine in :math:`\theta` and an exact quadratic.

    Attributes:
        r0: :math:`r(0)`, a 0-d tensor.
        g: :math:`\nabla r(0)`, shape ``(D,)``.
        P: :math:`-\nabla^2 r`, shape ``(D, D)``, positive definite.
        J: the logits' Jacobian, rows :math:`j_n`, shape ``(N, D)``.
        c: the logits at :math:`\theta = 0`, shape ``(N,)``.
        s: :math:`2y - 1`, shape ``(N,)``.
        weight: :math:`\omega_n`, shape ``(N,)``.
    """

    r0: Tensor
    g: Tensor
    P: Tensor
    J: Tensor
    c: Tensor
    s: Tensor
    weight: Tensor


def jj_lambda(xi: Tensor) -> Tensor:
    r""":math:`\lambda(\xi) = \tanh(\xi/2)/(4\xi)`, even in :math:`\xi`, with its limit
    :math:`1/8` at 0 (the series :math:`1/8 - \xi^2/96` below :math:`10^{-4}`).

    Example:
        >>> import torch
        >>> xi = torch.tensor([0.0, 2.0], dtype=torch.float64)
        >>> [round(v, 12) for v in jj_lambda(xi).tolist()]
        [0.125, 0.095199269494]
    """
    xi = xi.abs()
    small = xi < 1e-4
    safe = torch.where(small, torch.ones_like(xi), xi)
    return torch.where(small, 0.125 - xi.square() / 96, torch.tanh(safe / 2) / (4 * safe))


def _gaussian(terms: LogitQuadratic, xi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A, b, K of the bounded joint at ``xi``, and the Cholesky factor of A."""
    lam = jj_lambda(xi) * terms.weight
    A = terms.P + 2 * (terms.J.mT * lam) @ terms.J
    b = terms.g + terms.J.mT @ (terms.weight * terms.s / 2 - 2 * lam * terms.c)
    K = (
        terms.r0
        + (
            terms.weight * (logsigmoid(xi) - xi / 2 + terms.s * terms.c / 2)
            + lam * (xi.square() - terms.c.square())
        ).sum()
    )
    factor, info = torch.linalg.cholesky_ex(A)
    if info != 0:
        raise ValueError("the bounded joint's precision is not positive definite")
    return A, b, K, factor


def jj_bound(terms: LogitQuadratic, xi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The bound :math:`\mathcal L(\xi)` and the Gaussian :math:`q` it normalizes.

    Returns:
        ``(bound, loc, covariance)``: a 0-d tensor, :math:`A^{-1}b` and :math:`A^{-1}`.

    Example:
        >>> import torch
        >>> # one observation y = 1 with logit a = theta, prior N(0, 1); xi = 0: L = log(1/2)
        >>> one = torch.ones(1, dtype=torch.float64)
        >>> terms = LogitQuadratic(-0.5 * torch.tensor(2 * math.pi, dtype=torch.float64).log(),
        ...                        0 * one, one[:, None], one[:, None], 0 * one, one, one)
        >>> bound, loc, cov = jj_bound(terms, 0 * one)
        >>> round(float(bound), 12) == round(math.log(0.5) + 0.5 * 0.25 / 1.25
        ...                                  - 0.5 * math.log(1.25), 12)
        True
    """
    _, b, K, factor = _gaussian(terms, xi)
    covariance = torch.cholesky_inverse(factor)
    loc = covariance @ b
    dim = b.shape[-1]
    log_det = 2 * factor.diagonal().log().sum()
    bound = K + 0.5 * (b @ loc) + 0.5 * dim * math.log(2 * math.pi) - 0.5 * log_det
    return bound, loc, covariance


def jj_xi(terms: LogitQuadratic, loc: Tensor, covariance: Tensor) -> Tensor:
    r"""The EM update :math:`\xi_n = \sqrt{\mathbb E_q[a_n^2]} = \sqrt{(j_n^\top m + c_n)^2 +
    j_n^\top S j_n}` for :math:`q = \mathcal N(m, S)`."""
    mean = terms.J @ loc + terms.c
    variance = ((terms.J @ covariance) * terms.J).sum(-1)
    return (mean.square() + variance.clamp_min(0)).sqrt()


def jj_fixed_point(
    terms: LogitQuadratic, xi: Tensor, num_iterations: int, tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Alternate :func:`jj_bound` and :func:`jj_xi` from ``xi`` until the bound rises by less
    than ``tol`` (absolute) or ``num_iterations`` updates were made.

    Returns:
        ``(history, xi, loc, covariance)``: the bound before each update and after the last
        (non-decreasing), the last :math:`\xi` and the :math:`q` it gives.
    """
    bound, loc, covariance = jj_bound(terms, xi)
    history = [bound]
    for _ in range(num_iterations):
        new_xi = jj_xi(terms, loc, covariance)
        new_bound, new_loc, new_cov = jj_bound(terms, new_xi)
        history.append(new_bound)
        xi, loc, covariance = new_xi, new_loc, new_cov
        if float(new_bound - bound) < tol:
            break
        bound = new_bound
    return torch.stack(history), xi, loc, covariance
