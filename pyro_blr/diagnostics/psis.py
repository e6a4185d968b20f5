r"""Pareto-smoothed importance sampling (PSIS) to judge, and correct, a variational fit.

With :math:`S` draws from the guide and log importance ratios
:math:`\log r_s = \log p(\mathcal D, z_s) - \log q(z_s)`, PSIS fits a generalized Pareto
distribution to the largest ratios; its shape :math:`\hat k` says how heavy the tail of
:math:`p/q` is (Yao, Vehtari, Simpson & Gelman 2018): :math:`\hat k < 0.5` the guide is good and
importance sampling converges fast, :math:`0.5 \le \hat k < 0.7` usable, :math:`\hat k \ge 0.7`
the approximation is not to be trusted. The fit is ArviZ's (``az.psislw`` in ArviZ 0.x,
``arviz_stats`` in 1.x, see :mod:`pyro_blr.diagnostics.arviz_compat`); the effective sample size
of the smoothed weights is :math:`1/\sum_s \bar w_s^2`. A Pareto fit needs a tail: at least
:data:`~pyro_blr.diagnostics.arviz_compat.MIN_PSIS_SAMPLES` draws.

References:
    | Yes, but Did It Work?: Evaluating Variational Inference (Yao et al., ICML 2018)
    | https://arxiv.org/abs/1802.02538
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from pyro_blr.core import (
    check_finite_weights,
    check_model_and_guide,
    check_model_full_data,
    guess_max_plate_nesting,
    log_weights,
    model_keywords,
    rng_state,
)
from pyro_blr.core.checks import initialized_cuda_devices
from pyro_blr.core.pareto import tied_tail_khat
from pyro_blr.diagnostics.arviz_compat import MIN_PSIS_SAMPLES, import_arviz, psis_smooth
from pyro_blr.diagnostics.mistakes import check_call

__all__ = ["PSISDiagnostic", "check_num_samples", "psis_diagnostic"]

# examples/eight_schools.py imported this private name before arviz_compat existed; it stays an
# alias of the public import_arviz until the example imports that instead.
_arviz = import_arviz


class PSISDiagnostic(NamedTuple):
    """Pareto :math:`\\hat k` of the importance ratios and the effective sample size (floats)."""

    khat: float
    ess: float


def check_num_samples(num_samples: Any, minimum: int = 1) -> int:
    """``num_samples`` as an int, or a ``ValueError`` naming it.

    Example:
        >>> check_num_samples(30, minimum=25)
        30
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
        raise ValueError(f"num_samples must be an integer, got {num_samples!r}")
    if num_samples < minimum:
        why = " (PSIS fits a Pareto tail to the largest draws)" if minimum > 1 else ""
        raise ValueError(f"num_samples must be at least {minimum}{why}, got {num_samples}")
    return int(num_samples)


@torch.no_grad()
def psis_diagnostic(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    max_plate_nesting: int | None = None,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> PSISDiagnostic:
    r"""Pareto :math:`\hat k` and effective sample size of ``guide`` as a proposal for ``model``.

    Args:
        model: the Pyro model (full data: a minibatch ratio is not the posterior's).
        guide: any guide of ``model`` that samples every continuous latent site; discrete
            sites marked ``infer={"enumerate": "parallel"}`` and left out of the guide are
            summed out exactly (the ratios are :math:`p(\mathcal D, z)/q(z)` with them summed).
        *args: the model's positional arguments.
        num_samples: draws from the guide, at least
            :data:`~pyro_blr.diagnostics.arviz_compat.MIN_PSIS_SAMPLES` (the Pareto fit uses the
            largest :math:`\min(S/5, 3\sqrt S)` ratios; a few hundred give a stable
            :math:`\hat k`).
        max_plate_nesting: the model's plate nesting (found from a trace when not given).
        model_kwargs: the model's keyword arguments, given as a dict; required when the model
            has an argument named like an option of this function (``num_samples``,
            ``max_plate_nesting``), which would otherwise be taken for the option.
        **kwargs: the model's keyword arguments.

    Returns:
        ``PSISDiagnostic(khat, ess)``. When every ratio is equal up to rounding (the guide is the
        posterior), :math:`\hat k = 0` and ``ess = num_samples`` (see
        :func:`~pyro_blr.diagnostics.arviz_compat.psis_smooth`). When the largest ratios tie
        (every latent site discrete, e.g. Bernoulli sites of :class:`pyro_blr.AutoExpFamily`:
        the ratios are those of a few atoms), a Pareto fit is meaningless: :math:`\hat k` is
        then :func:`pyro_blr.core.pareto.tied_tail_khat` (the largest ratio against the mean,
        near 0 for a guide near the posterior, above 0.7 when one draw dominates) and ``ess``
        that of the raw weights, which are bounded and need no smoothing.

    Raises:
        TypeError: a model argument named like an option without ``model_kwargs=``.
        ValueError: ``num_samples`` below the minimum, a subsampled plate (vectorized or
            sequential, ``for i in pyro.plate(..., subsample_size=B)``), a discrete latent
            site the guide does not sample and the model does not mark for enumeration, or a
            log density that is NaN or :math:`+\infty` (naming the site).

    References:
        | Yes, but Did It Work?: Evaluating Variational Inference (Yao et al., ICML 2018)
        | https://arxiv.org/abs/1802.02538

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro_blr as pb
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> too_narrow = AutoNormal(model, init_scale=0.2)
        >>> pb.psis_diagnostic(model, too_narrow, num_samples=2000).khat > 0.7
        True
    """
    options = ("num_samples", "max_plate_nesting")
    kwargs = model_keywords(model, "psis_diagnostic", options, kwargs, model_kwargs)
    num_samples = check_num_samples(num_samples, MIN_PSIS_SAMPLES)
    check_call(model, guide, args, kwargs, "psis_diagnostic")  # swapped, or data left out
    check_model_full_data(model, guide, args, kwargs, "psis_diagnostic")
    enumerated = check_model_and_guide(model, guide, args, kwargs, summed=True)
    if max_plate_nesting is None:  # a run that leaves the draws as they were
        with torch.random.fork_rng(devices=initialized_cuda_devices()):
            max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    state = rng_state()
    weights = log_weights(
        model,
        guide,
        args,
        kwargs,
        num_samples,
        max_plate_nesting,
        require_rsample=False,
        enumerated=enumerated,
    )
    joint = weights.joint
    if torch.isnan(joint).any() or torch.isposinf(joint).any():  # -inf is a zero weight: fine
        check_finite_weights(
            model, guide, args, kwargs, num_samples, max_plate_nesting, state, enumerated
        )
    tied = tied_tail_khat(joint)
    if tied is not None:  # a few atoms: bounded ratios, nothing to smooth (see tied_tail_khat)
        ratios = joint.detach().to("cpu", torch.float64).numpy()
        weights = np.exp(ratios - ratios.max())
        return PSISDiagnostic(tied, float(weights.sum() ** 2 / np.square(weights).sum()))
    smoothed, khat = psis_smooth(joint)
    return PSISDiagnostic(khat, float(1.0 / np.exp(2 * smoothed).sum()))
