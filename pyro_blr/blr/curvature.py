r"""IVON's gradient-only (reparameterization) estimate of the Hessian diagonal.

.. math::
    \hat h = \nabla\ell(\theta) \odot (\theta - m) \odot s,
    \qquad \theta = m + \epsilon / \sqrt{s},

unbiased for :math:`\mathbb E_q[\operatorname{diag}\nabla^2\ell]` by Stein's lemma (Shen et al.
2024, https://arxiv.org/abs/2402.17641, Eq. 7). Its noise, :math:`\sum_j H_{ij}\epsilon_i
\epsilon_j \sqrt{s_i/s_j}` on a quadratic, is of the same kind as that of Hutchinson's
estimate :math:`v \odot Hv` (Rademacher :math:`v`, noise :math:`\sum_{j\ne i} H_{ij} v_i v_j`),
which :func:`pyro_blr.core.autodiff.derivatives` gives for ``"diag"`` curvature above
:data:`~pyro_blr.core.autodiff.EXACT_DIAGONAL_MAX` coordinates at the cost of one
Hessian-vector product; exact Hessians and diagonals come from the same function.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["reparam_hessian_diagonal"]


def reparam_hessian_diagonal(grad: Tensor, theta: Tensor, loc: Tensor, precision: Tensor) -> Tensor:
    """IVON's gradient-only estimate of the Hessian diagonal, one per particle.

    Args:
        grad: gradients at the particles, shape ``(S, D)``.
        theta: the particles, drawn from :math:`\\mathcal N(m, \\operatorname{diag}(s)^{-1})`.
        loc: the mean :math:`m`.
        precision: the diagonal precision :math:`s`.

    Example:
        >>> import torch
        >>> # on l(t) = 2 t^2 the estimate is 4 t^2, unbiased for the Hessian 4 under N(0, 1)
        >>> theta = torch.tensor([[0.5], [-1.5]])
        >>> reparam_hessian_diagonal(4 * theta, theta, torch.zeros(1), torch.ones(1)).squeeze(-1)
        tensor([1., 9.])
    """
    return grad * (theta - loc) * precision
