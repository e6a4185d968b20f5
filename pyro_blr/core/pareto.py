r"""Pareto :math:`\hat k` of a guide's importance ratios, for checks inside the fitting layers.

The ratios :math:`\log r_s = \log p(\mathcal D, z_s) - \log q(z_s)`, :math:`z_s \sim q`, have a
right tail whose Pareto shape :math:`\hat k` says whether :math:`q` covers the posterior:
:math:`\hat k < 0.7` and PSIS estimates are usable, above it the guide misses mass the posterior
has (Yao et al. 2018; Vehtari et al. 2024). The tail fit is ArviZ's (``az.psislw`` in ArviZ 0.x,
``arviz_stats`` in 1.x), as in :mod:`pyro_blr.diagnostics.arviz_compat`, which the layers below
``diagnostics`` may not import; this module is the small part of it they need.

References:
    | Yes, but Did It Work?: Evaluating Variational Inference (Yao et al., ICML 2018)
    | https://arxiv.org/abs/1802.02538
    | Pareto Smoothed Importance Sampling (Vehtari et al., JMLR 2024)
    | https://arxiv.org/abs/1507.02646
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from pyro_blr.core.weights import log_weights

__all__ = ["KHAT_THRESHOLD", "ParetoCheck", "pareto_check", "pareto_khat"]

KHAT_THRESHOLD = 0.7
r"""Above this :math:`\hat k` the importance ratios' tail is too heavy for the guide to be
trusted as the posterior (Yao et al. 2018)."""


def _psislw() -> Callable[[np.ndarray], tuple[np.ndarray, float]]:
    """``(log_ratios) -> (log_weights, khat)`` from whichever ArviZ is installed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.x announces its 1.0 refactor
        import arviz as az
    legacy = getattr(az, "psislw", None)
    if legacy is not None and next(iter(inspect.signature(legacy).parameters), None) == (
        "log_weights"
    ):
        return legacy  # ArviZ 0.x: log importance ratios in
    from arviz_stats.base import array_stats

    return lambda log_ratios: array_stats.psislw(-log_ratios)  # 1.x negates a log-likelihood


def pareto_khat(log_ratios: Tensor) -> float:
    r"""The Pareto shape :math:`\hat k` of the right tail of 1-D log importance ratios.

    Ratios equal up to rounding (the guide is the posterior up to a constant) have no tail:
    :math:`\hat k = 0`. Ratios of :math:`-\infty` (draws the model rules out) are left out;
    NaN or :math:`+\infty` give :math:`\hat k = \infty`, as does a tail ArviZ cannot fit.

    Args:
        log_ratios: at least 30 log ratios :math:`\log p(\mathcal D, z_s) - \log q(z_s)`.

    Example:
        >>> import torch
        >>> light = 0.3 * torch.randn(1000, generator=torch.Generator().manual_seed(0))
        >>> pareto_khat(light) < 0.5, pareto_khat(torch.full((100,), 3.0))
        (True, 0.0)
    """
    ratios = log_ratios.detach().to("cpu", torch.float64).numpy()
    if ratios.ndim != 1 or len(ratios) < 30:
        raise ValueError(f"pareto_khat needs 1-D log ratios, at least 30, got {ratios.shape}")
    if np.isnan(ratios).any() or np.isposinf(ratios).any():
        return float("inf")
    ratios = ratios[np.isfinite(ratios)]
    if len(ratios) < 30:
        return float("inf")
    eps = float(torch.finfo(log_ratios.dtype).eps) if log_ratios.is_floating_point() else 0.0
    if np.ptp(ratios) <= max(1e-9, 64 * eps) * max(1.0, float(np.abs(ratios).max())):
        return 0.0
    with warnings.catch_warnings():  # ArviZ warns of a large k-hat: the caller decides on it
        warnings.simplefilter("ignore")
        khat = float(_psislw()(ratios - ratios.max())[1])
    return float("inf") if np.isnan(khat) else khat


class ParetoCheck(NamedTuple):
    r"""The result of :func:`pareto_check`.

    Attributes:
        khat: :math:`\hat k` of the guide's importance ratios.
        num_samples: the draws it was estimated on.
        subsampled: the model's subsampled plates (then the ratios are a minibatch's and
            ``khat`` is ``nan``: no check).
    """

    khat: float
    num_samples: int
    subsampled: tuple[str, ...]

    @property
    def usable(self) -> bool:
        """Whether :math:`\\hat k` is below :data:`KHAT_THRESHOLD` (or was not computed)."""
        return not self.khat > KHAT_THRESHOLD


def pareto_check(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    max_plate_nesting: int,
) -> ParetoCheck:
    r""":math:`\hat k` of ``guide`` as a proposal for ``model``'s posterior, on ``num_samples``
    draws evaluated as :func:`pyro_blr.core.log_weights` evaluates them (vectorized where the
    model allows). A model with a subsampled plate gets no check (``khat`` NaN): a minibatch's
    ratios are not the posterior's. Leaves the random generators where they were.
    """
    like = next(iter(guide.parameters()), None) if hasattr(guide, "parameters") else None
    devices = [like.device] if like is not None and like.is_cuda else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        weights = log_weights(model, guide, args, kwargs, num_samples, max_plate_nesting, False)
    if weights.subsampled:
        return ParetoCheck(float("nan"), num_samples, weights.subsampled)
    return ParetoCheck(pareto_khat(weights.joint), num_samples, ())
