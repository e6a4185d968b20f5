r"""Pareto-smoothed importance sampling (PSIS) to judge, and correct, a variational fit.

With :math:`S` draws from the guide and log importance ratios
:math:`\log r_s = \log p(\mathcal D, z_s) - \log q(z_s)`, PSIS fits a generalized Pareto
distribution to the largest ratios; its shape :math:`\hat k` says how heavy the tail of
:math:`p/q` is (Yao, Vehtari, Simpson & Gelman 2018): :math:`\hat k < 0.5` the guide is good and
importance sampling converges fast, :math:`0.5 \le \hat k < 0.7` usable, :math:`\hat k \ge 0.7`
the approximation is not to be trusted. The fit is ArviZ's (``az.psislw``); the effective sample
size of the smoothed weights is :math:`1/\sum_s \bar w_s^2`.

References:
    | Yes, but Did It Work?: Evaluating Variational Inference (Yao et al., ICML 2018)
    | https://arxiv.org/abs/1802.02538
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from pyro_blr.core import guess_max_plate_nesting, log_weights

__all__ = ["PSISDiagnostic", "psis_diagnostic", "smoothed_log_weights"]


class PSISDiagnostic(NamedTuple):
    """Pareto :math:`\\hat k` of the importance ratios and the effective sample size (floats)."""

    khat: float
    ess: float


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.x announces its 1.0 refactor
        import arviz

    return arviz


def smoothed_log_weights(log_ratios: Tensor) -> tuple[np.ndarray, float]:
    """Normalized Pareto-smoothed log weights and :math:`\\hat k` of ``log_ratios`` (1-D).

    Ratios equal to rounding error (the guide is the posterior) have no tail to fit: their
    weights are uniform and :math:`\\hat k = -\\infty`.
    """
    ratios = log_ratios.detach().double().cpu().numpy()
    ratios = ratios - ratios.max()
    if -ratios.min() < 1e-9 * max(1.0, float(np.abs(log_ratios.detach().double()).max())):
        return np.full(len(ratios), -np.log(len(ratios))), -np.inf
    smoothed, khat = _arviz().psislw(ratios)
    return np.asarray(smoothed), float(khat)


@torch.no_grad()
def psis_diagnostic(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> PSISDiagnostic:
    r"""Pareto :math:`\hat k` and effective sample size of ``guide`` as a proposal for ``model``.

    Args:
        model: the Pyro model (full data: a minibatch ratio is not the posterior's).
        guide: any guide of ``model``.
        *args: the model's positional arguments.
        num_samples: draws from the guide (ArviZ needs a few hundred for a stable fit).
        max_plate_nesting: the model's plate nesting (found from a trace when not given).
        **kwargs: the model's keyword arguments.

    Returns:
        ``PSISDiagnostic(khat, ess)``.

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
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    weights = log_weights(
        model, guide, args, kwargs, num_samples, max_plate_nesting, require_rsample=False
    )
    if weights.subsampled:
        raise ValueError(
            f"psis_diagnostic needs the full data, but plate {list(weights.subsampled)} is "
            "subsampled: call the model without subsample_size"
        )
    smoothed, khat = smoothed_log_weights(weights.joint)
    return PSISDiagnostic(khat, float(1.0 / np.exp(2 * smoothed).sum()))
