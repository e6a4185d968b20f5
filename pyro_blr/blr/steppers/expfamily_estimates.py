r"""The natural-parameter gradient :math:`\nabla_\lambda\mathbb E_q[\ell]` of an exponential
family, estimated from reparameterized draws with the family's own sufficient statistics as
control variate: exact whenever :math:`\ell` is linear in :math:`T` (a conjugate site), unbiased
always.

Plain reparameterization averages the per-draw gradients
:math:`d_s = \partial\ell(x_s)/\partial\lambda`; the natural gradient then multiplies their
Monte Carlo error by :math:`F^{-1}`, which is large where :math:`T`'s coordinates are nearly
collinear over the draws (a concentrated Gamma: :math:`\log x` and :math:`x`). With
:math:`D_s = \partial T(x_s)/\partial\lambda` (rows :math:`p`, columns :math:`j`) and any
coefficient vector :math:`c` independent of draw :math:`s`,

.. math::
    \nabla_\lambda\mathbb E_q[\ell]
        = \mathbb E\big[d_s - D_s^\top c\big] + F c,
    \qquad F = \nabla_\lambda\mathbb E_q[T] = \nabla^2 A(\lambda),

since :math:`\mathbb E[D_s] = F`. Here :math:`c = \hat c_{-s}` is the least-squares fit of
:math:`d_r \approx D_r^\top c` over the other draws :math:`r \ne s` (leave one out, so each term
is unbiased). On a conjugate site :math:`\ell = \langle c^*, T\rangle + \text{const}`, every
:math:`d_r = D_r^\top c^*`, the fit returns :math:`c^*` and the estimate is :math:`F c^*`
exactly: :math:`\nabla_\mu\mathbb E_q[\ell] = c^*`.

How many draws: the leave-one-out fit needs :math:`P` independent equations from the other
draws; a scalar site (Normal, Gamma, Beta, von Mises) gives one per draw, a Dirichlet over
:math:`d` categories :math:`d - 1`, so ``mc_samples >= 3`` suffices for every family here
(``P + 1`` for a scalar site). Where leaving one out is singular (``mc_samples <= 2``, the
driver's default is 2) :math:`c = 0`: the plain estimate, unbiased but not exact. A fit on all
the draws instead would be exact on a conjugate site but biased elsewhere: with 2 draws it is a
secant, and on :math:`\ell = x^4/4` under a Normal it makes :math:`\nabla_\mu` two thirds of
its value (:math:`\mathbb E[x_1^2 + x_1x_2 + x_2^2]` for :math:`\mathbb E[3x^2]`), a fixed point
with precision :math:`\sqrt2` for :math:`\sqrt3`.

This is the gradient form of the stochastic linear regression of Salimans & Knowles (2013),
used as a control variate so that non-conjugate sites keep an unbiased estimate.

References:
    | Fixed-Form Variational Posterior Approximation through Stochastic Linear Regression
      (Salimans & Knowles, Bayesian Analysis 2013) https://arxiv.org/abs/1206.6679
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyro_blr.families import ExpFamily

__all__ = [
    "controlled_gradient",
    "per_draw_leaves",
    "relaxed_gradient",
    "relaxed_simplex_gradient",
    "statistics_jacobian",
]


def per_draw_leaves(eta: Tensor, num: int) -> Tensor:
    """``num`` copies of natural parameters ``(*batch, P)`` as one leaf ``(num, *batch, P)``
    that requires grad: draw ``s`` built from copy ``s`` has its own gradient."""
    return eta.detach().expand(num, *eta.shape).clone().requires_grad_(True)


def statistics_jacobian(family: ExpFamily, draws: Tensor, leaves: Tensor) -> Tensor:
    r""":math:`D_s = \partial T(x_s)/\partial\lambda_s` for draws made from per-draw
    ``leaves`` (see :func:`per_draw_leaves`): shape ``(S, *batch, P, P)``, rows the statistics.
    The graph from ``leaves`` to ``draws`` is kept."""
    stats = family.sufficient_statistics(draws)
    rows = [
        torch.autograd.grad(stats[..., p].sum(), leaves, retain_graph=True)[0]
        for p in range(stats.shape[-1])
    ]
    return torch.stack(rows, -2)


def controlled_gradient(fisher: Tensor, grads: Tensor, jacobians: Tensor) -> Tensor:
    r"""The estimate of :math:`\nabla_\lambda\mathbb E_q[\ell]` in the module docstring.

    Args:
        fisher: :math:`F`, shape ``(*batch, P, P)``.
        grads: per-draw :math:`d_s = \partial\ell(x_s)/\partial\lambda`, ``(S, *batch, P)``.
        jacobians: per-draw :math:`D_s = \partial T(x_s)/\partial\lambda`,
            ``(S, *batch, P, P)``.

    Returns:
        The estimate, shape ``(*batch, P)``, in ``grads``' dtype.

    Example:
        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> jac = torch.randn(4, 2, 2, generator=gen, dtype=torch.float64)
        >>> c = torch.tensor([1.0, -2.0], dtype=torch.float64)
        >>> grads = (jac.transpose(-1, -2) @ c.unsqueeze(-1)).squeeze(-1)  # linear in T
        >>> fisher = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> torch.allclose(controlled_gradient(fisher, grads, jac), fisher @ c)
        True
    """
    d, jac = grads.double(), jacobians.double()
    # Fit in the Fisher information's eigenbasis, where T's coordinates vary independently: in
    # the standard basis a concentrated family's statistics are nearly collinear (a von Mises of
    # concentration k: condition number k^2 for the normal equations).
    basis = torch.linalg.eigh(fisher.double())[1]
    rotated = basis.transpose(-1, -2) @ jac  # rows: Q^T D_s, so D_s^T c = (Q^T D_s)^T (Q^T c)
    outer = rotated @ rotated.transpose(-1, -2)
    moment = (rotated @ d.unsqueeze(-1)).squeeze(-1)
    gram, rhs = outer.sum(0), moment.sum(0)
    coef = _fit(gram - outer, rhs - moment)  # leave draw s out: zero where that is singular
    coef = (basis @ coef.unsqueeze(-1)).squeeze(-1)
    fitted = (jac.transpose(-1, -2) @ coef.unsqueeze(-1)).squeeze(-1)  # D_s^T c
    exact = (fisher.double() @ coef.unsqueeze(-1)).squeeze(-1)  # F c
    return (d - fitted + exact).mean(0).to(grads.dtype)


_RANK_TOLERANCE = 1e-8
"""A fit's scaled normal equations count as singular below this eigenvalue ratio (about the
square root of float64's machine epsilon: one draw too few leaves round-off there)."""


def _fit(gram: Tensor, rhs: Tensor) -> Tensor:
    """``gram^{-1} rhs`` after Jacobi scaling where ``gram`` is numerically of full rank (see
    :data:`_RANK_TOLERANCE`) and the solution finite; zero elsewhere."""
    scale = gram.diagonal(dim1=-2, dim2=-1).sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = gram / (scale.unsqueeze(-1) * scale.unsqueeze(-2))
    values, vectors = torch.linalg.eigh(scaled)
    full_rank = values[..., 0] > _RANK_TOLERANCE * values[..., -1]
    safe = torch.where(full_rank.unsqueeze(-1), values, torch.ones_like(values))
    projected = (vectors.transpose(-1, -2) @ (rhs / scale).unsqueeze(-1)).squeeze(-1)
    coef = (vectors @ (projected / safe).unsqueeze(-1)).squeeze(-1) / scale
    usable = (full_rank & torch.isfinite(coef).all(-1)).unsqueeze(-1)
    return torch.where(usable, coef, torch.zeros_like(coef))


def relaxed_gradient(fisher: Tensor, slopes: Tensor, log_weights: Tensor) -> Tensor:
    r""":math:`\nabla_\lambda\mathbb E_q[\ell]` of a binary site from relaxed draws
    :math:`x_s` (:meth:`pyro_blr.families.Bernoulli.relaxed_draws`), as :math:`F\hat g` with

    .. math::
        \hat g = \frac{\sum_s w_s\,\ell'(x_s)}{\sum_s w_s}, \qquad
        w_s = \frac{\partial x_s}{\partial\lambda} = \frac{x_s(1-x_s)}{\tau},

    the ratio :math:`\sum_s d_s / \sum_s D_s` of the per-draw gradients
    :math:`d_s = \partial\ell(x_s)/\partial\lambda = w_s\ell'(x_s)` and
    :math:`D_s = \partial x_s/\partial\lambda = w_s`: the gradient in the relaxation's own
    expectation parameter :math:`\mu_\tau = \mathbb E[x_\tau]`, its Fisher information
    estimated on the same draws. BayesBiNN's estimate (Meng et al. 2020, equation 11) divides
    :math:`\frac1S\sum_s d_s` by the exact :math:`F = p(1-p)` instead; both tend to the same
    limit as :math:`\tau \to 0`, but this one is

    * exact where :math:`\ell` is linear in the site, at every temperature;
    * bounded by the range of the slope :math:`\ell'` (BayesBiNN's is unbounded where :math:`p`
      is near 0 or 1: its draws are mostly zero and rarely huge, and at :math:`\tau = 0.03` the
      steps of a 4-indicator regression overflow in a few dozen steps);
    * as :math:`\tau \to 0`, the weights pick :math:`x_s` uniform on :math:`(0, 1)` (given
      :math:`w`, :math:`z = \operatorname{logit} x_s` is logistic), so
      :math:`\hat g \to \mathbb E_{q_{-j}}[\ell(1, x_{-j}) - \ell(0, x_{-j})]`, the exact
      :math:`\nabla_\mu\mathbb E_q[\ell]`, whatever the curvature of :math:`\ell` in the site.
      At :math:`\tau > 0` the bias is :math:`O(\tau)` times that curvature.

    The weights are normalized in log space (``log_weights``), so that saturated draws
    (:math:`x_s` rounded to 0 or 1) keep theirs and the ratio is always defined.

    Args:
        fisher: :math:`F`, shape ``(*batch, 1, 1)``.
        slopes: per-draw :math:`\ell'(x_s)`, ``(S, *batch)``.
        log_weights: per-draw :math:`\log w_s`, ``(S, *batch)``.

    Returns:
        :math:`F\hat g`, shape ``(*batch, 1)``, in ``slopes``' dtype.

    Example:
        >>> import torch
        >>> slopes = torch.tensor([[3.0], [3.0], [3.0]], dtype=torch.float64)  # linear in x
        >>> log_w = torch.tensor([[-1.0], [-40.0], [-2.0]], dtype=torch.float64)
        >>> relaxed_gradient(torch.tensor([[[0.25]]], dtype=torch.float64), slopes, log_w)
        tensor([[0.7500]], dtype=torch.float64)
    """
    weights = torch.softmax(log_weights.double(), 0)
    slope = (weights * slopes.double()).sum(0)
    return (fisher.double() @ slope.unsqueeze(-1).unsqueeze(-1)).squeeze(-1).to(slopes.dtype)


def relaxed_simplex_gradient(probs: Tensor, slopes: Tensor, log_draws: Tensor) -> Tensor:
    r""":math:`\nabla_\lambda\mathbb E_q[\ell]` of a one-hot site over :math:`K` outcomes from
    Gumbel-softmax draws :math:`x_s` on the simplex
    (:meth:`pyro_blr.families.OneHotCategorical.relaxed_draws`): :func:`relaxed_gradient` on
    every edge of the simplex.

    With :math:`T(x) = (x_1, \dots, x_{K-1})` and :math:`u_{jk} = e_j - e_k` (its :math:`K`-th
    coordinate dropped), the Jacobian of a relaxed draw is a sum over the edges,

    .. math::
        D_s = \frac{\partial T(x_s)}{\partial\lambda}
            = \frac1\tau\big(\operatorname{diag}(x_s) - x_s x_s^\top\big)_{<K}
            = \sum_{j<k} w_{s,jk}\,u_{jk}u_{jk}^\top, \qquad
        w_{s,jk} = \frac{x_{s,j}x_{s,k}}{\tau},

    and the per-draw gradient is :math:`d_s = D_s g_s = \sum_{j<k} w_{s,jk}\,
    \ell'_{s,jk}\,u_{jk}`, :math:`\ell'_{s,jk} = \partial_j\ell(x_s) - \partial_k\ell(x_s)`
    the slope along the edge. On each edge, as for a binary site, the slope is averaged with
    the self-normalized weights, :math:`c_{jk} = \sum_s w_{s,jk}\ell'_{s,jk} / \sum_s w_{s,jk}`
    (an estimate of the chord :math:`\ell(e_j) - \ell(e_k)`), and the edges are weighed by
    their weights' expectation as :math:`\tau \to 0`,
    :math:`\mathbb E[w_{s,jk}] \to \pi_j\pi_k`, whose sum
    :math:`\sum_{j<k}\pi_j\pi_k u_{jk}u_{jk}^\top` is the Fisher information :math:`F`:

    .. math::
        \widehat{\nabla_\lambda\mathbb E_q[\ell]} = \sum_{j<k}\pi_j\pi_k\,c_{jk}\,u_{jk}.

    (The plain ratio :math:`(\sum_s D_s)^{-1}\sum_s d_s` weighs the edges by their draws'
    :math:`\sum_s w_{s,jk}`, which span hundreds of orders of magnitude at a low temperature, so
    that a few draws near one edge make the system singular.) Where :math:`\ell` is linear in
    the site, :math:`\ell(x) = \langle a, x\rangle`, every :math:`c_{jk} = a_j - a_k` and the
    estimate is :math:`F(a_{<K} - a_K)`, the exact :math:`F\nabla_\mu\mathbb E_q[\ell]`, at
    every temperature; bounded by the range of the slopes; :math:`K = 2` is
    :func:`relaxed_gradient`. The weights are normalized in log space (from ``log_draws``), so
    that saturated draws keep theirs.

    Args:
        probs: the site's probabilities :math:`\pi`, shape ``(*batch, K)``.
        slopes: per-draw :math:`\partial\ell(x_s)/\partial x`, all :math:`K` coordinates,
            ``(S, *batch, K)``.
        log_draws: per-draw :math:`\log x_s`, ``(S, *batch, K)``.

    Returns:
        The estimate, shape ``(*batch, K-1)``, in ``slopes``' dtype.

    Example:
        >>> import torch
        >>> a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)  # l(x) = <a, x>
        >>> gen = torch.Generator().manual_seed(0)
        >>> z = 30 * torch.randn(5, 3, generator=gen, dtype=torch.float64)  # saturated draws
        >>> log_x = torch.log_softmax(z, -1)
        >>> probs = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
        >>> fisher = torch.diag(probs[:2]) - probs[:2, None] * probs[:2]
        >>> torch.allclose(relaxed_simplex_gradient(probs, a.expand(5, 3), log_x),
        ...                fisher @ torch.tensor([0.5, -2.5], dtype=torch.float64))
        True
    """
    log_x, g, p = log_draws.double(), slopes.double(), probs.double()
    along = g.unsqueeze(-1) - g.unsqueeze(-2)  # (S, *batch, K, K): the slope from k to j
    weights = torch.softmax(log_x.unsqueeze(-1) + log_x.unsqueeze(-2), 0)
    chords = (weights * along).sum(0)  # (*batch, K, K), antisymmetric, zero diagonal
    edges = p.unsqueeze(-1) * p.unsqueeze(-2)  # pi_j pi_k
    return (edges * chords).sum(-1)[..., :-1].to(slopes.dtype)
