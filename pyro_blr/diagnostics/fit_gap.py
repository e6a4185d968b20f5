r"""How far a Gaussian guide's mean is from a fixed point, judged against the shifts estimated
from it (the memory-perturbation estimates of
:func:`~pyro_blr.diagnostics.sensitivity.loo_sensitivity` and
:func:`~pyro_blr.diagnostics.group_removal.removal_sensitivity`).

A shift :math:`\delta_i = m_{\setminus i} - m` is one Newton step from the guide's mean
:math:`m`. When :math:`m` is a mean gap :math:`r` (a Newton step of the whole log joint, in
posterior standard deviations, see :mod:`pyro_blr.diagnostics.fixed_point`) from the fixed
point, every estimate inherits an error of about :math:`r`: a shift smaller than :math:`r` is
the fit's error more than the data's effect. An absolute threshold on :math:`r` would refuse
every stochastic fit of a network (IVON, SGD-like BLR steps): the gap is a norm over :math:`D`
coordinates and grows like :math:`\sqrt D` with the fit's per-coordinate noise, while the shifts
of single data or groups stay what they are. So the gap is judged against the shifts
(:func:`check_mean_gap`), and the precision gap, a factor per coordinate that does not grow
with :math:`D`, against the absolute levels of :mod:`~pyro_blr.diagnostics.fixed_point`
(:func:`check_precision_gap`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from pyro_blr.core import LatentLayout, Target, choose_vectorization
from pyro_blr.diagnostics.fixed_point import (
    PRECISION_GAP_ERROR,
    PRECISION_GAP_WARNING,
    FixedPointGap,
    fixed_point_gap,
)

__all__ = [
    "FIT_FIX",
    "FIXED_POINT_DRAWS",
    "RESOLVED_FACTOR",
    "check_mean_gap",
    "check_precision_gap",
    "newton_step",
    "variational_gap",
]

RESOLVED_FACTOR = 10.0
"""A shift less than this many times the mean gap is warned about: it carries an error of more
than a tenth of itself."""

FIT_FIX = "fit it to convergence first, e.g. pb.BLR(model, guide, pb.Newton()).fit(...)"
"""What a refusal tells the user to do."""


def newton_step(grad: Tensor, precision: Tensor) -> Tensor:
    r"""The Newton step :math:`\delta = S^{-1} g` from the guide's mean to the fixed point, for a
    gradient :math:`g` of the negative log joint there (its length
    :math:`r = \lVert\delta\rVert_S = \sqrt{g^\top S^{-1} g}` is the mean gap).

    Args:
        grad: :math:`g`, shape ``(D,)``.
        precision: :math:`S`, ``(D, D)``, or its diagonal ``(D,)``.

    Example:
        >>> import torch
        >>> newton_step(torch.tensor([2.0, 1.0]), torch.tensor([4.0, 1.0]))
        tensor([0.5000, 1.0000])
    """
    grad = grad.to(precision.dtype)
    if precision.dim() == 1:
        return grad / precision
    return torch.cholesky_solve(grad[:, None], torch.linalg.cholesky(precision))[:, 0]


def _inner(a: Tensor, b: Tensor, precision: Tensor) -> Tensor:
    """:math:`a^\\top S b` over the last dimension (``S`` a matrix or its diagonal)."""
    if precision.dim() == 1:
        return (a * precision * b).sum(-1)
    return (a * (b @ precision)).sum(-1)


def check_precision_gap(gaps: Mapping[str, FixedPointGap], entry: str) -> float:
    """Refuse a guide whose precision misses the curvature at every fixed point offered by
    more than :data:`~pyro_blr.diagnostics.fixed_point.PRECISION_GAP_ERROR` (a factor 4),
    warn above :data:`~pyro_blr.diagnostics.fixed_point.PRECISION_GAP_WARNING` (1.5); the
    closest fixed point is the one of the smallest precision gap.

    Args:
        gaps: the rule the fixed point belongs to (for the message) -> the guide's gaps to it.
        entry: the entry point, for the message.

    Returns:
        The smallest precision gap.

    Example:
        >>> gaps = {"newton": FixedPointGap(5.0, 3.0), "von": FixedPointGap(0.1, 0.02)}
        >>> check_precision_gap(gaps, "demo")
        0.02
    """
    rule, gap = min(gaps.items(), key=lambda item: item[1].precision)
    factor = math.exp(min(gap.precision, 700))
    stated = (
        f"its precision misses the log joint's curvature at the closest fixed point ({rule}) "
        f"by a factor up to {factor:.3g}"
    )
    if gap.precision > PRECISION_GAP_ERROR:
        raise ValueError(
            f"{entry}: the guide is not at a fixed point of the learning rule for this model "
            f"(was it fitted?): {stated}; {FIT_FIX}"
        )
    if gap.precision > PRECISION_GAP_WARNING:
        warnings.warn(
            f"{entry}: the guide is near but not at a fixed point of the learning rule: {stated}; "
            f"its spreads are off by a factor up to {math.sqrt(factor):.3g}; {FIT_FIX}",
            UserWarning,
            stacklevel=3,
        )
    return gap.precision


def check_mean_gap(
    steps: Mapping[str, Tensor],
    precision: Tensor,
    entry: str,
    *,
    error: Callable[[Tensor, float], float],
    reference: float,
    compared: str,
    fix: str = FIT_FIX,
    reference_name: str = "it",
    refuse_above: float = 0.0,
    warn_above: float | None = None,
    stacklevel: int = 3,
) -> float:
    r"""Refuse or warn about a guide whose mean is too far from a fixed point *for what is
    estimated from it*.

    With :math:`\delta` the Newton step to the closest fixed point offered (the smallest mean
    gap :math:`r = \lVert\delta\rVert_S`), ``error(delta, r)`` is the error that the estimates
    inherit and ``reference`` the size it is judged against:

    * the groups of :func:`~pyro_blr.diagnostics.group_removal.removal_sensitivity` (each a
      question of its own, read at :math:`m + \delta_G`): the error is :math:`r` in every
      shift, against the smallest shift;
    * :func:`~pyro_blr.diagnostics.sensitivity.loo_sensitivity` (the data read together, as
      :math:`\mathrm{elpd}_{\mathrm{loo}}`): each datum's predictive density moves with the mean
      by :math:`\nabla\ell_i^\top\delta` to first order, so the estimate moves by
      :math:`|\sum_i \nabla\ell_i^\top\delta|` nats, against its own standard error. A fit far
      from its fixed point is off along the data's gradients (an error near :math:`r^2`, far
      above the standard error); a stochastic fit's noise, a gap :math:`r = \varepsilon\sqrt D`
      for :math:`\varepsilon` standard deviations a coordinate (a network fitted by
      ``pb.IVON``), moves it by about :math:`\varepsilon^2 D`, small against a standard error
      that grows like :math:`\sqrt N`.

    Refused where :math:`r` > ``refuse_above`` and the error exceeds the reference (the fit's
    own error is larger than what is estimated); warned where :math:`r` > ``warn_above``, or
    with ``warn_above=None`` where the error exceeds :math:`1/`:data:`RESOLVED_FACTOR` of the
    reference.

    Args:
        steps: the rule the fixed point belongs to (for the message) -> the Newton step
            :math:`\delta` to it (:func:`newton_step`), ``(D,)``.
        precision: the guide's precision :math:`S`, ``(D, D)``, or its diagonal ``(D,)``.
        entry: the entry point, for the message.
        error: ``(delta, r) -> float``, the estimates' error.
        reference: the size the error is judged against.
        compared: what the error and the reference are, for the message.
        fix: what to do, for the message.
        reference_name: what the reference is, for the message.
        refuse_above: a gap at or below it is never refused.
        warn_above: an absolute warning level for the gap (``None``: relative, above).
        stacklevel: the warning's, as for ``warnings.warn`` from the caller.

    Returns:
        The smallest mean gap :math:`r`.

    Raises:
        ValueError: the error above the reference (and :math:`r` above ``refuse_above``).

    Warns:
        UserWarning: as above, with the error it implies.

    Example:
        A stochastic fit's noise across 400 coordinates: a gap of 2 standard deviations, but
        an error of 0.1 along the direction an estimate reads.

        >>> import torch
        >>> noise = 0.1 * torch.randn(400, generator=torch.Generator().manual_seed(0))
        >>> along = lambda delta, r: float(delta[0].abs())  # an estimate along one coordinate
        >>> r = check_mean_gap({"ivon": noise}, torch.ones(400), "demo", error=along,
        ...                    reference=1.0, compared="the shift is 1", refuse_above=1.0)
        >>> round(r, 1)
        2.0
    """
    lengths = {
        rule: float(_inner(step, step, precision).clamp(min=0).sqrt())
        for rule, step in steps.items()
    }
    rule, gap = min(lengths.items(), key=lambda item: item[1])
    found = error(steps[rule], gap)
    stated = (
        f"the guide's mean is {gap:.3g} posterior standard deviations from the closest fixed "
        f"point ({rule}), and {compared}"
    )
    if gap > refuse_above and found > reference:
        raise ValueError(
            f"{entry}: the guide is not at a fixed point of the learning rule for this model: "
            f"{stated}: the fit's own error exceeds {reference_name} (an error of about "
            f"{found:.3g}); {fix}"
        )
    if gap > warn_above if warn_above is not None else found > reference / RESOLVED_FACTOR:
        warnings.warn(
            f"{entry}: {stated}: the estimates carry an error of about {found:.3g}; {fix}",
            UserWarning,
            stacklevel=stacklevel,
        )
    return gap


FIXED_POINT_DRAWS = 32
"""Antithetic pairs of draws from the guide that estimate its expected gradient and Hessian."""


def variational_gap(
    model: Callable,
    layout: LatentLayout,
    loc: Tensor,
    precision: Tensor,
    precision_matrix: Tensor,
    args: tuple,
    kwargs: dict,
) -> tuple[FixedPointGap, Tensor]:
    r"""The guide's gaps to the variational fixed point, :math:`\mathbb E_q[\nabla\ell] = 0`,
    :math:`S = \mathbb E_q[\nabla^2\ell]`, from :data:`FIXED_POINT_DRAWS` antithetic pairs
    :math:`m \pm C^{-\top}\varepsilon` (their gradients' linear part cancels exactly; seeded,
    so the check is the same on every call and leaves the RNG alone).

    Args:
        model: the model (full data).
        layout: the guide's latent layout.
        loc: the guide's mean :math:`m`, ``(D,)``.
        precision: its precision :math:`S`, ``(D, D)``, or its diagonal ``(D,)``.
        precision_matrix: :math:`S` as a ``(D, D)`` matrix.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.

    Returns:
        The gaps, and the expected gradient :math:`\mathbb E_q[\nabla\ell]` ``(D,)``.
    """
    generator = torch.Generator(device=loc.device).manual_seed(0)
    noise = torch.randn(
        (FIXED_POINT_DRAWS, loc.shape[0]), generator=generator, dtype=loc.dtype, device=loc.device
    )
    chol = torch.linalg.cholesky(precision_matrix)
    offsets = torch.linalg.solve_triangular(chol.mT, torch.cat([noise, -noise]).T, upper=True).T
    theta = loc + offsets
    mode = choose_vectorization(model, layout, theta[:2], args, kwargs)
    expected = Target.build(model, args, kwargs, layout, mode).derivatives(theta, "hessian")
    grad = expected.grad.mean(0).to(loc.dtype)
    return fixed_point_gap(grad, expected.hess.mean(0).to(loc.dtype), precision), grad
