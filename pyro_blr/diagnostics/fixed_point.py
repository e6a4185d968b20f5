r"""How far a Gaussian guide is from a fixed point of the learning rule, in its own units.

A diagnostic that reads a fitted posterior :math:`q = \mathcal N(m, S^{-1})` as the posterior
(the memory-perturbation equation of :func:`~pyro_blr.diagnostics.loo_sensitivity`) is only as
good as the fit. At a fixed point of the Bayesian learning rule (delta method), with
:math:`\ell = -\log p(\mathcal D, \theta)`,

.. math::
    \nabla\ell(m) = 0, \qquad S = \nabla^2\ell(m)
    \quad(\text{a diagonal guide: } S = \operatorname{diag}\nabla^2\ell(m)).

Two numbers measure the distance, both scale-free:

* the **mean gap** :math:`r = \sqrt{\nabla\ell(m)^\top S^{-1}\nabla\ell(m)}`, the length of
  a Newton step from :math:`m` in posterior standard deviations: every leave-one-out mean
  computed from :math:`m` inherits an error of about :math:`r` standard deviations;
* the **precision gap** :math:`\max_j |\log \lambda_j|`, :math:`\lambda_j` the eigenvalues of
  :math:`S^{-1}\nabla^2\ell(m)` (of :math:`\nabla^2\ell(m)_{jj}/S_{jj}` for a diagonal guide):
  the log of the factor by which the guide's precision misses the data's curvature.

A fit by ``pb.BLR(model, guide, pb.VON())`` or SVI sits where
:math:`\mathbb E_q[\nabla\ell] = 0` and :math:`S = \mathbb E_q[\nabla^2\ell]`, which differ from
the delta method's conditions by the
posterior's skew (on a nearly separable logistic regression by a Newton step of one standard
deviation and a factor 2.7 in precision): the same gaps are measured with the expectations,
estimated from antithetic draws of :math:`q` (exact for a quadratic :math:`\ell`), and the
guide is judged by the closer of the two fixed points.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "MEAN_GAP_ERROR",
    "MEAN_GAP_WARNING",
    "PRECISION_GAP_ERROR",
    "PRECISION_GAP_WARNING",
    "FixedPointGap",
    "check_fixed_point",
    "fixed_point_gap",
    "needs_second_opinion",
]

MEAN_GAP_WARNING = 0.1
"""A Newton step longer than this many posterior standard deviations is warned about."""
MEAN_GAP_ERROR = 1.0
"""... and longer than this one refused: the guide's mean is not the posterior's."""
PRECISION_GAP_WARNING = math.log(1.5)
"""A precision off the curvature by more than a factor 1.5 is warned about."""
PRECISION_GAP_ERROR = math.log(4.0)
"""... and by more than a factor 4 refused (standard deviations off by a factor 2)."""


class FixedPointGap(NamedTuple):
    """The distance of a Gaussian guide from the delta method's fixed point (floats).

    Attributes:
        mean: the Newton step's length in posterior standard deviations.
        precision: the largest absolute log-ratio of curvature to precision.
    """

    mean: float
    precision: float


def fixed_point_gap(grad: Tensor, hess: Tensor, precision: Tensor) -> FixedPointGap:
    r"""The mean and precision gaps of :math:`\mathcal N(m, S^{-1})` (see the module docstring).

    Args:
        grad: :math:`\nabla\ell(m)`, shape ``(D,)``.
        hess: :math:`\nabla^2\ell(m)`, shape ``(D, D)``.
        precision: :math:`S`, shape ``(D, D)``, or its diagonal ``(D,)`` for a diagonal guide.

    Example:
        >>> import torch
        >>> hess = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> gap = fixed_point_gap(torch.zeros(2, dtype=torch.float64), hess, hess)
        >>> round(gap.mean, 12), round(gap.precision, 12)
        (0.0, 0.0)
        >>> gap = fixed_point_gap(torch.tensor([2.0, 0.0]), torch.eye(2), 4 * torch.ones(2))
        >>> round(gap.mean, 6)  # a gradient of 2 where the standard deviation is 1/2
        1.0
    """
    if precision.dim() == 1:
        mean = (grad.square() / precision).sum().sqrt()
        ratios = hess.diagonal() / precision
    else:
        chol = torch.linalg.cholesky(precision)
        whitened = torch.linalg.solve_triangular(chol, grad[:, None], upper=False)
        mean = whitened.norm()
        left = torch.linalg.solve_triangular(chol, hess, upper=False)
        ratios = torch.linalg.eigvalsh(torch.linalg.solve_triangular(chol, left.mT, upper=False))
    if not bool((ratios > 0).all()):
        return FixedPointGap(float(mean), math.inf)  # curvature not positive: no fixed point
    return FixedPointGap(float(mean), float(ratios.log().abs().max()))


def _score(gap: FixedPointGap) -> float:
    return max(gap.mean / MEAN_GAP_ERROR, gap.precision / PRECISION_GAP_ERROR)


def _within_warning(gap: FixedPointGap) -> bool:
    return gap.mean <= MEAN_GAP_WARNING and gap.precision <= PRECISION_GAP_WARNING


def check_fixed_point(gaps: dict[str, FixedPointGap], entry: str) -> FixedPointGap:
    """Refuse a guide far from every fixed point offered, warn about one near but not at one.

    A guide is judged by the fixed point it is closest to: the delta method's (``pb.Newton``,
    derivatives at the mean) or the variational one (``pb.VON``, ``pb.IVON``, SVI:
    expected derivatives under :math:`q`).

    Args:
        gaps: the rule the fixed point belongs to (for the message) -> the guide's gaps to it.
        entry: the entry point, for the message.

    Returns:
        The smallest gaps.

    Raises:
        ValueError: a mean gap above :data:`MEAN_GAP_ERROR` or a precision gap above
            :data:`PRECISION_GAP_ERROR` to every fixed point (e.g. a guide never fitted).

    Warns:
        UserWarning: a gap above the warning level, with the error it implies.

    Example:
        >>> at_point = FixedPointGap(0.01, 0.02)
        >>> check_fixed_point({"newton": FixedPointGap(5.0, 3.0), "von": at_point}, "demo")
        FixedPointGap(mean=0.01, precision=0.02)
    """
    rule, gap = min(gaps.items(), key=lambda item: _score(item[1]))
    stated = (
        f"its mean is {gap.mean:.3g} posterior standard deviations from the closest fixed point "
        f"({rule}) and its precision misses the log joint's curvature there by a factor up to "
        f"{math.exp(min(gap.precision, 700)):.3g}"
    )
    fix = "fit it to convergence first, e.g. pb.BLR(model, guide, pb.Newton()).fit(...)"
    if _score(gap) > 1:
        raise ValueError(
            f"{entry}: the guide is not at a fixed point of the learning rule for this model "
            f"(was it fitted?): {stated}; {fix}"
        )
    if not _within_warning(gap):
        warnings.warn(
            f"{entry}: the guide is near but not at a fixed point of the learning rule: {stated}; "
            f"leave-one-out means carry an error of about {gap.mean:.2g} standard deviations "
            f"and predictive densities one of the same order; {fix}",
            UserWarning,
            stacklevel=3,
        )
    return gap


def needs_second_opinion(gap: FixedPointGap) -> bool:
    """Whether a gap is above the warning level (then another fixed point is worth measuring).

    Example:
        >>> near, far = FixedPointGap(0.01, 0.0), FixedPointGap(2.0, 0.0)
        >>> needs_second_opinion(near), needs_second_opinion(far)
        (False, True)
    """
    return not _within_warning(gap)
