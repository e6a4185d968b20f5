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

__all__ = [
    "KHAT_THRESHOLD",
    "ParetoCheck",
    "pareto_check",
    "pareto_khat",
    "tail_length",
    "tied_tail_khat",
]

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


def _no_spread(ratios: np.ndarray, eps: float) -> bool:
    """Whether finite log ratios are equal up to rounding in a dtype of epsilon ``eps``."""
    return np.ptp(ratios) <= max(1e-9, 64 * eps) * max(1.0, float(np.abs(ratios).max()))


def tail_length(num_samples: int) -> int:
    r"""The number :math:`M = \lceil\min(S/5, 3\sqrt S)\rceil` of largest ratios a Pareto fit
    uses on :math:`S` draws (ArviZ's, with relative efficiency 1; Vehtari et al. 2024).

    Example:
        >>> tail_length(500), tail_length(100)
        (68, 20)
    """
    return int(np.ceil(min(0.2 * num_samples, 3 * np.sqrt(num_samples))))


def tied_tail_khat(log_ratios: Tensor | np.ndarray) -> float | None:
    r""":math:`\hat k` of log importance ratios whose tail ties, or ``None`` when it does not.

    A generalized Pareto fit models a continuous tail, where two equal ratios have probability
    zero. When the :math:`M + 1` largest finite ratios (the tail and its threshold, see
    :func:`tail_length`) hold fewer than :math:`(M + 1)/2` distinct values, the ratios are
    those of a few atoms (every latent site discrete, e.g. binary sites of
    :class:`pyro_blr.AutoExpFamily`): the fit degenerates (:math:`\pm\infty` or a meaningless
    negative value) and says nothing. The ratios are then bounded on the atoms drawn, and the
    question :math:`\hat k` answers -- do :math:`S` draws suffice, or does the largest weight
    dominate -- is answered by the largest ratio against the mean:

    .. math::
        \tilde k = \log\bigl(r_{(S)} / \bar r\bigr) \big/ \log S,
        \qquad \bar r = \tfrac1S \textstyle\sum_s r_s .

    For a Pareto-type tail of shape :math:`k < 1` the largest of :math:`S` ratios grows like
    :math:`S^k` while their mean stays finite, so :math:`\tilde k \to k` (the log-maximum
    estimate of a tail index; Embrechts, Klüppelberg & Mikosch 1997); for bounded ratios it
    tends to 0, never below. At a finite :math:`S` it reads as the largest normalized weight
    :math:`\bar w_{(S)} = S^{\tilde k - 1}`, near :math:`1/S` (:math:`\tilde k` near 0) for a
    guide near the posterior. On atoms the largest ratio may be drawn several times, which
    splits its weight and makes :math:`\tilde k` read low; the effective sample size
    :math:`\mathrm{ESS} = 1/\sum_s \bar w_s^2` does not split. For :math:`1/2 < k < 1`,
    :math:`\sum_s r_s^2` grows like :math:`S^{2k}` and :math:`\mathrm{ESS}` like
    :math:`S^{2 - 2k}`, a second reading of the shape,

    .. math::
        k_{\mathrm{ESS}} = 1 - \log \mathrm{ESS} \big/ (2 \log S),

    which below :math:`k = 1/2` tends to :math:`1/2` whatever :math:`k` (the ESS is then
    linear in :math:`S`) and says nothing more. The result is :math:`\tilde k`, or
    :math:`k_{\mathrm{ESS}}` where that is larger and above :data:`KHAT_THRESHOLD`, i.e.
    where the ESS is below :math:`S^{0.6}` (42 of 500 draws): the guide is far from the
    posterior.

    Args:
        log_ratios: 1-D log ratios :math:`\log p(\mathcal D, z_s) - \log q(z_s)`, finite or
            :math:`-\infty` (a zero weight, counted in :math:`S`). Ratios equal up to
            rounding (the guide is the posterior) have no tail: 0.

    References:
        | Modelling Extremal Events (Embrechts, Klüppelberg & Mikosch, Springer 1997)
        | Pareto Smoothed Importance Sampling (Vehtari et al., JMLR 2024)
        | https://arxiv.org/abs/1507.02646

    Example:
        >>> import torch
        >>> atoms = torch.tensor([0.0, 0.1, 0.2]).repeat(100)  # three atoms, nearly equal
        >>> round(tied_tail_khat(atoms), 3), tied_tail_khat(torch.randn(300)) is None
        (0.017, True)
    """
    if torch.is_tensor(log_ratios):
        log_ratios = log_ratios.detach().cpu().numpy()
    ratios = np.asarray(log_ratios)
    eps = float(np.finfo(ratios.dtype).eps) if np.issubdtype(ratios.dtype, np.floating) else 0.0
    ratios = ratios.astype(np.float64)
    finite = ratios[np.isfinite(ratios)]
    size = min(tail_length(len(ratios)) + 1, len(finite))
    if size < 2:
        return None
    if _no_spread(finite, eps):  # equal up to rounding: no tail, as pareto_khat reports it
        return 0.0
    tail = np.sort(finite)[-size:]
    if 2 * len(np.unique(tail)) >= size:
        return None
    weights = np.exp(finite - finite.max())  # r_s / r_max
    log_size = np.log(len(ratios))
    largest = -np.log(weights.sum() / len(ratios)) / log_size  # log(r_max / r-bar) / log S
    ess = weights.sum() ** 2 / np.square(weights).sum()
    spread = 1 - np.log(ess) / (2 * log_size)
    return float(max(0.0, largest, spread if spread > KHAT_THRESHOLD else 0.0))


def pareto_khat(log_ratios: Tensor) -> float:
    r"""The Pareto shape :math:`\hat k` of the right tail of 1-D log importance ratios.

    Ratios equal up to rounding (the guide is the posterior up to a constant) have no tail:
    :math:`\hat k = 0`. Ratios whose tail ties (a few atoms: every latent discrete) get
    :func:`tied_tail_khat`, as a Pareto fit to them degenerates. Ratios of :math:`-\infty`
    (draws the model rules out) are left out; NaN or :math:`+\infty` give
    :math:`\hat k = \infty`, as does a tail ArviZ cannot fit.

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
    if _no_spread(ratios, eps):
        return 0.0
    tied = tied_tail_khat(log_ratios)
    if tied is not None:
        return tied
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
        ess: the effective sample size :math:`1/\sum_s \bar w_s^2` of the raw normalized
            weights (``nan`` when not computed). A :math:`\hat k` above the threshold with
            ``ess`` near ``num_samples`` means the ratios' tail *shape* is heavy while no draw
            dominates yet: :math:`\hat k` does not depend on the spread of
            :math:`\log r` (as that spread shrinks, it tends to the tail shape of
            :math:`\log r` itself), so nearly equal weights whose log ratios rise faster than
            quadratically in a tail of :math:`q` (mass between two modes, a second small bump)
            read :math:`\hat k > 0.7`.
    """

    khat: float
    num_samples: int
    subsampled: tuple[str, ...]
    ess: float = float("nan")

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
    ratios = weights.joint.detach().to("cpu", torch.float64)
    finite = ratios[torch.isfinite(ratios)]
    ess = float("nan")
    if len(finite):
        normalized = torch.softmax(finite, 0)
        ess = float(1.0 / normalized.square().sum())
    return ParetoCheck(pareto_khat(weights.joint), num_samples, (), ess)
