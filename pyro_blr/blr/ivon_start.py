r"""Where IVON's precision starts: on the model's own scale, not at the guide's ``init_scale``.

IVON's curvature estimate :math:`h` moves toward its target by the fraction :math:`1-\beta_2`
(0.1% at the default) a step, so a start that is off by a factor takes thousands of steps to
forget. IVON's own start (Shen et al. 2024) is :math:`N_i h_0`: a per-datum curvature
:math:`h_0` (``hess_init``) times the effective sample size :math:`N_i` that coordinate sees
(``ess``, divided by the size of the plates its site lies in: a latent per datum sees one
datum). By default ``ess`` counts each datum with the scale its log density carries
(:func:`pyro_blr.core.num_observations`): ``poutine.scale(model, 2)`` counts each datum twice, as
duplicated data would, so two models with the same log joint start alike. With
:math:`h_0 = 1` it suits standardized data, and it is wrong on data in other units: on eight
schools it starts :math:`\log\tau` at :math:`N_i = 8`, several times more precise than the
mean-field optimum (the docs' concept page, "IVON's hyperparameters in the data's units").

The BLR's fixed point for a Gaussian (Khan & Rue 2023) is
:math:`S = \mathbb E_q[\nabla^2 \ell(\theta)]`. With ``hess_init="auto"`` (the default, for
``"ivon"`` and ``"von"``) the start is its diagonal at the guide as initialized, :math:`q_0`,
bounded below by the prior's precision and above by the Newton-or-IVON start, both in the units
of the prior's robust scale :math:`s_i` (:mod:`pyro_blr.blr.prior_scale`):

.. math::
    h_{0,i} = \min\Big(\max\Big(\frac1K \sum_{k=1}^{K} \big[\nabla^2 \ell(\theta_k)\big]_{ii},
        \frac1{s_i^2}\Big),\; \max\big(\tfrac{N_i}{s_i^2},\, [\nabla^2\ell(m)]_{ii}\big)\Big),
        \qquad \theta_k \sim q_0,

where the average is positive (elsewhere the cap alone). The expectation matters for networks:
at a symmetric start (all weights zero) the hidden layers have no likelihood curvature at the
mean, but at draws from :math:`q_0` they have the data's. The cap keeps a broad guide on a
nonlinear model (an exponential link at ``init_scale=1``) from starting far above the
curvature near its mean, an overestimate that would fade only at :math:`1-\beta_2` a step. The
floor keeps a start far in a heavy-tailed prior's tail, where the log joint is nearly linear,
from starting broader than the prior itself: eight schools' :math:`\log\tau_j` at
:math:`\tau_j = 1`, far in a half-Cauchy(25) prior's left tail, has an expected curvature far
below its prior's precision, and a start at that curvature drew :math:`\tau` many orders of
magnitude from 1 with an astronomical first loss (Pyro's eight-schools SVI example, kept as a
test of this floor).
Measured in :math:`s_i`, the start does not depend on the data's units (with
:math:`s_i = 1`, a standard Normal prior, it is the earlier :math:`\max(N_i, H_{ii}(m))` cap).
The Hessians cost :math:`D` Hessian-vector products at each of :math:`K + 1` points, once. Above
:data:`EXACT_START_MAX_DIM` coordinates the average is measured per site instead
(:func:`site_curvature_at_start`: Hutchinson's estimate at the same draws, averaged over each
site's coordinates, a fixed number of products whatever :math:`D`), with the same floor and the
cap :math:`N_i/s_i^2` alone. Until 2026-12-07 the start there was the cap itself: on a network
whose weights have priors of sd :math:`1/\sqrt{\text{fan-in}}` that is fan-in times
:math:`N_i`, 26 to 320 times IVON's reference start :math:`N_i h_0` (:math:`h_0 = 1`) on the
diamonds MLP of ``benchmarks/deep.py``, whose steps it made as many times shorter; its test RMSE
fell behind MAP's. A number passed as ``hess_init`` always gives :math:`N_i h_0`, in the data's
units.

Where the average is behind :math:`N_i`: a network whose first layers have almost no curvature
at its start and few data to find it. The UCI benchmark's one-layer BNN, started at zero weights,
is such a network: its first layer starts near the prior's precision, far below :math:`N_i`
(``python -m benchmarks.uci_bnn --ivon-only --ivon-hess-init 1`` fits it from both starts).

References:
    | Variational Learning is Effective for Large Deep Networks (Shen et al., ICML 2024)
    | https://arxiv.org/abs/2402.17641 (Algorithm 1, ``hess_init``)
    | The Bayesian Learning Rule (Khan & Rue, JMLR 2023)
    | https://arxiv.org/abs/2107.04562
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.poutine import Trace
from torch import Tensor

from pyro_blr.core import LatentLayout, derivatives, full_size

__all__ = [
    "AUTO_HESS_INIT",
    "EXACT_START_MAX_DIM",
    "START_DRAWS",
    "START_PROBES",
    "auto_start",
    "curvature_at_start",
    "per_datum_start",
    "site_curvature_at_start",
    "starting_precision",
]

EXACT_START_MAX_DIM = 2048
"""``hess_init="auto"`` takes Hessian diagonals up to this many coordinates (each point's cost
grows as :math:`D` times a backward pass, itself growing with :math:`D` in a network)."""

START_DRAWS = 4
"""Draws from the guide that ``hess_init="auto"`` averages the Hessian diagonal over."""

START_PROBES = 16
r"""Rademacher probes per draw of :func:`site_curvature_at_start` (above
:data:`EXACT_START_MAX_DIM` coordinates): a site's mean of :math:`v \odot Hv` is
:math:`v^\top H v / n` over its :math:`n` coordinates, whose relative standard deviation is
:math:`\sqrt2\,\mathrm{rms}(H_{ij})/\overline{H_{ii}}` per probe whatever :math:`n` (the
off-diagonal mass); 16 probes at each of :data:`START_DRAWS` draws divide it by 8, for 64
Hessian-vector products once per fit."""

AUTO_HESS_INIT = 1.0
"""The per-datum curvature :math:`h_0` in ``hess_init="auto"``'s cap (standardized data's)."""


def per_datum_start(
    layout: LatentLayout, prototype_trace: Trace, ess: float, hess_init: float, like: Tensor
) -> Tensor:
    r"""IVON's start :math:`N_i h_0` per coordinate: ``ess`` divided by the full size of the
    plates a site lies in (vectorized or sequential: each site of ``for i in pyro.plate(...)`` is
    one of its copies; at least one datum), times ``hess_init``, on ``like``'s dtype and device.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_blr.core import latent_layout
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         z = pyro.sample("z", dist.Normal(mu, 1.0))
        ...         pyro.sample("y", dist.Normal(z, 1.0), obs=y)
        >>> guide = AutoNormal(model)
        >>> _ = guide(torch.zeros(3))
        >>> layout = latent_layout(guide.prototype_trace)
        >>> per_datum_start(layout, guide.prototype_trace, 3.0, 2.0, like=torch.zeros(()))
        tensor([6., 2., 2., 2.])
    """
    start = like.new_empty(layout.dim)
    for site in layout.sites:
        stack = prototype_trace.nodes[site.name]["cond_indep_stack"]
        copies = math.prod(full_size(f) for f in stack)  # a sequential plate's sites too
        start[site.block] = max(ess / copies, 1.0) * hess_init
    return start


def curvature_at_start(
    neg_log_joint: Callable[[Tensor], Tensor],
    loc: Tensor,
    precision: Tensor,
    draws: int = START_DRAWS,
) -> tuple[Tensor, Tensor]:
    r"""The Hessian diagonal of :math:`\ell` at the mean :math:`m` and its average over
    ``draws`` draws from :math:`q = \mathcal N(m, \operatorname{diag}(s)^{-1})`, from a private
    generator (every process of a distributed run draws the same points). NaN where a
    Hessian is not finite.

    Args:
        neg_log_joint: maps particles ``(S, D)`` to :math:`\ell` per particle ``(S,)``.
        loc: the mean :math:`m`, shape ``(D,)``.
        precision: the diagonal precision :math:`s`, shape ``(D,)``.
        draws: how many draws to average over.

    Example:
        >>> import torch
        >>> ell = lambda t: t.exp().sum(-1)  # Hessian diagonal exp(theta): E_q = exp(m + 1/(2s))
        >>> at_mean, expected = curvature_at_start(ell, torch.zeros(2, dtype=torch.float64),
        ...                                        torch.full((2,), 1e6, dtype=torch.float64))
        >>> at_mean.tolist(), torch.allclose(expected, at_mean, rtol=1e-2)
        ([1.0, 1.0], True)
    """
    generator = torch.Generator(device=loc.device).manual_seed(0)
    noise = torch.randn(draws, loc.shape[-1], generator=generator, dtype=loc.dtype,
                        device=loc.device)  # fmt: skip
    points = torch.cat([loc[None], loc + noise * precision.rsqrt()])
    groups = torch.arange(loc.shape[-1], device=loc.device)  # one product per coordinate
    diagonal = derivatives(neg_log_joint, points, hessian=True, groups=groups).hess
    diagonal = torch.where(torch.isfinite(diagonal), diagonal, torch.nan)
    return diagonal[0], diagonal[1:].mean(0)


def site_curvature_at_start(
    neg_log_joint: Callable[[Tensor], Tensor],
    layout: LatentLayout,
    loc: Tensor,
    precision: Tensor,
    draws: int = START_DRAWS,
    probes: int = START_PROBES,
) -> Tensor:
    r"""Each site's mean expected Hessian diagonal at the start, for any :math:`D`:
    Hutchinson's unbiased estimate :math:`v \odot Hv` (``probes`` Rademacher probes,
    :func:`pyro_blr.core.autodiff.hessian_diagonal_estimate`) at ``draws`` draws from
    :math:`q = \mathcal N(m, \operatorname{diag}(s)^{-1})`, averaged over the draws and over
    the site's coordinates,

    .. math::
        \bar h_{\text{site}} = \frac{1}{K\,|\text{site}|} \sum_{k=1}^K \sum_{i \in \text{site}}
            \frac1P \sum_{p=1}^P v_{kp,i} \big[\nabla^2\ell(\theta_k)\, v_{kp}\big]_i,

    given to every coordinate of the site (NaN where it is not finite). Its cost is
    ``draws * probes`` Hessian-vector products whatever :math:`D`; its noise is the
    off-diagonal mass (see :data:`START_PROBES`). IVON's paper takes one per-datum
    :math:`h_0` for every weight; this is one measured value per site (a layer's weights, its
    biases), on the model's own curvature, so it follows the data's units. Probes and draws
    come from a private generator (every process draws the same).

    Example:
        >>> import torch
        >>> ell = lambda t: (t[..., :3] ** 2).sum(-1) + 5 * t[..., 3] ** 2  # diagonal 2, 2, 2, 10
        >>> from pyro_blr.core import latent_layout
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("a", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        ...     pyro.sample("b", dist.Normal(0.0, 1.0))
        >>> guide = AutoNormal(model)
        >>> _ = guide()
        >>> site_curvature_at_start(ell, latent_layout(guide.prototype_trace), torch.zeros(4),
        ...                         torch.ones(4)).tolist()
        [2.0, 2.0, 2.0, 10.0]
    """
    generator = torch.Generator(device=loc.device).manual_seed(0)
    noise = torch.randn(draws, loc.shape[-1], generator=generator, dtype=loc.dtype,
                        device=loc.device)  # fmt: skip
    points = loc + noise * precision.rsqrt()
    diagonal = derivatives(
        neg_log_joint, points, hessian="diag", probes=probes, generator=generator
    ).hess
    out = torch.full_like(loc, torch.nan)
    for site in layout.sites:
        out[site.block] = diagonal[:, site.block].mean()
    return torch.where(torch.isfinite(out), out, torch.nan)


def auto_start(
    at_mean: Tensor, expected: Tensor, data_scale: Tensor, floor: Tensor | None = None
) -> Tensor:
    r"""``hess_init="auto"``'s start from the curvatures of :func:`curvature_at_start`, the
    data's scale :math:`N_i / s_i^2` (``data_scale``) and the prior's precision
    :math:`1 / s_i^2` (``floor``, zero where unknown):
    :math:`\min(\max(\bar h_i, 1/s_i^2), \max(N_i/s_i^2, H_{ii}(m)))` where the average
    :math:`\bar h_i` is positive, else the cap (a non-finite value counts as absent).

    Example:
        >>> import torch
        >>> auto_start(torch.tensor([0.1, 5.0, 1.0, 0.1]), torch.tensor([0.2, 50.0, -1.0, 1e-5]),
        ...            data_scale=torch.tensor([8.0, 8.0, 8.0, 8.0]),
        ...            floor=torch.tensor([0.0, 0.0, 0.0, 0.5]))
        tensor([0.2000, 8.0000, 8.0000, 0.5000])
    """
    cap = torch.where(at_mean > data_scale, at_mean, data_scale)  # NaN > x is False
    if floor is not None:
        expected = torch.where(expected > 0, expected.maximum(floor), expected)
    return torch.where(expected > 0, expected.minimum(cap), cap)


def starting_precision(
    neg_log_joint: Callable[[Tensor], Tensor],
    layout: LatentLayout,
    prototype_trace: Trace,
    ess: float,
    hess_init: float | str,
    loc: Tensor,
    precision: Tensor,
    scale: Tensor | None = None,
    reduce: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> Tensor:
    r"""The diagonal precision a Gaussian rule starts from (see the module docstring).

    A number ``hess_init`` gives :math:`N_i h_0`. ``"auto"`` gives :func:`auto_start` with the
    prior's scale :math:`s_i` (``scale``, NaN where unknown: unit scale and no floor there).

    Args:
        neg_log_joint: maps particles ``(S, D)`` to :math:`\ell` per particle ``(S,)``.
        layout: the model's flat latent layout.
        prototype_trace: the guide's prototype trace (the plates each site lies in).
        ess: the effective sample size :math:`N` (each datum counted with its site's scale:
            :func:`pyro_blr.core.num_observations`).
        hess_init: ``"auto"`` or IVON's per-datum curvature :math:`h_0`.
        loc: the guide's mean.
        precision: the guide's diagonal precision (the draws' spread).
        scale: the prior's scale per coordinate (:func:`pyro_blr.blr.prior_scale.prior_scale`).
        reduce: in a distributed run, the ranks' (share-weighted) average: applied to the
            curvatures before the floor and the cap, so that every rank starts where one process
            on all the data starts (the bounds are not linear in the data).

    Raises:
        ValueError: the start, or its scale :math:`h^{-1/2}`, is not finite in ``loc``'s dtype.
    """
    auto = hess_init == "auto"
    per_datum = AUTO_HESS_INIT if auto else hess_init
    start = per_datum_start(layout, prototype_trace, ess, per_datum, like=loc)
    if auto:
        if scale is None:
            scale = torch.full_like(loc, torch.nan)
        known = torch.isfinite(scale)
        prior_precision = torch.where(known, scale, 1.0).pow(-2)
        start = start * prior_precision  # N_i in units of the prior's precision
        if loc.shape[-1] <= EXACT_START_MAX_DIM:
            curvature = curvature_at_start(neg_log_joint, loc, precision)
        else:  # no Hessian at the mean: the cap is N_i / s_i^2 alone
            expected = site_curvature_at_start(neg_log_joint, layout, loc, precision)
            curvature = (torch.full_like(loc, torch.nan), expected)
        if reduce is not None:
            curvature = reduce(list(curvature))
        floor = torch.where(known, prior_precision, 0.0)
        start = auto_start(*curvature, data_scale=start, floor=floor)
    if not (torch.isfinite(start).all() and torch.isfinite(start.rsqrt()).all()):
        raise ValueError(
            f"hess_init={hess_init!r}: the starting precision (ess * hess_init, ess = {ess:g}, "
            f"in units of the prior's precision under 'auto') is not a positive number whose "
            f"scale is finite in {loc.dtype}; pass float64 data, or hess_init=None to start "
            "from the guide's own scale"
        )
    return start
