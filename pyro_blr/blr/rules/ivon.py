r"""``IVON``: improved variational online Newton for diagonal Gaussians (Shen et al. 2024).

The gradient-only (reparameterization) estimate of the Hessian diagonal, momentum on the
gradient and a curvature average that stays positive by construction; see :func:`ivon_update`.

References:
    | Variational Learning is Effective for Large Deep Networks (Shen et al., ICML 2024)
      https://arxiv.org/abs/2402.17641
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_blr.blr.rules.base import Estimates, GaussianRule, GaussianState

__all__ = ["IVON", "IVONState", "ivon_update"]


class IVONState(NamedTuple):
    """IVON's mean, Hessian estimate :math:`h` (which is the precision) and gradient momentum."""

    loc: Tensor
    precision: Tensor
    momentum: Tensor


def ivon_update(
    state: IVONState,
    grad: Tensor,
    hess: Tensor,
    lr: float,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    clip_radius: float | Tensor | None = None,
) -> IVONState:
    r"""One improved variational online Newton (IVON) step on a diagonal Gaussian.

    .. math::
        g &\leftarrow \beta_1 g + (1-\beta_1)\hat g, \\
        h &\leftarrow \beta_2 h + (1-\beta_2)\hat h
            + \tfrac12 (1-\beta_2)^2 (h-\hat h)^2 / h, \\
        m &\leftarrow m - \alpha\, \frac{g / (1-\beta_1^t)}{h},

    and the new precision is :math:`h`. Writing :math:`a = (1-\beta_2)(\hat h - h)/h`, the new
    :math:`h` is :math:`h\,((1+a)^2 + 1)/2 > 0`: positivity is kept by the update itself.

    Units: here :math:`\ell` is the whole negative log joint (prior included, plates scaled to
    the full data), so :math:`g` and :math:`h` are the paper's per-datum averages times its
    effective sample size :math:`N`, its weight decay :math:`\delta` is the prior's curvature,
    and the paper's :math:`h_0` (``hess_init``) is a per-datum curvature: the driver starts
    :math:`h = N h_0` (see :class:`pyro_blr.BLR`). The step :math:`g/h` is the paper's
    :math:`(\bar g + \delta m)/(\bar h + \delta)` with both scaled by :math:`N`, unchanged.

    Args:
        state: mean, Hessian estimate and momentum.
        grad: the gradient estimate :math:`\hat g`, shape ``(D,)``.
        hess: the Hessian-diagonal estimate :math:`\hat h`, shape ``(D,)``.
        lr: the step size :math:`\alpha`.
        step: the 1-based step number :math:`t` for the bias correction.
        beta1: momentum of the gradient.
        beta2: momentum of the Hessian estimate.
        clip_radius: if given, clip each coordinate of the mean's update (before ``lr``) to
            this radius: a number, or one per coordinate (the driver passes ``clip_radius``
            times the prior's scale of each coordinate, so that the clip does not depend on the
            data's units; see :mod:`pyro_blr.blr.prior_scale`).

    References:
        | Variational Learning is Effective for Large Deep Networks (Shen et al., ICML 2024)
        | https://arxiv.org/abs/2402.17641 (Algorithm 1)

    Example:
        >>> import torch
        >>> state = IVONState(torch.zeros(1), torch.ones(1), torch.zeros(1))
        >>> state = ivon_update(state, torch.tensor([-1.0]), torch.tensor([3.0]), 0.1, step=1,
        ...                     beta1=0.9, beta2=0.5)
        >>> state.precision  # 0.5 + 1.5 + 0.125 * 4
        tensor([2.5000])
    """
    momentum = beta1 * state.momentum + (1 - beta1) * grad
    h = state.precision
    gap = h - hess
    h = beta2 * h + (1 - beta2) * hess + 0.5 * (1 - beta2) ** 2 * gap * (gap / h)
    direction = momentum / (1 - beta1**step) / h
    if clip_radius is not None:
        direction = direction.clamp(-clip_radius, clip_radius)
    return IVONState(state.loc - lr * direction, h, momentum)


class IVON(GaussianRule):
    r"""Improved variational online Newton on a diagonal Gaussian guide (:func:`ivon_update`).

    Args:
        lr: the step size :math:`\alpha`, a float or a schedule ``step -> float``.
        mc_samples: draws per step.
        antithetic: draw them in antithetic pairs (needs an even ``mc_samples``).
        ess: the effective sample size :math:`N` of the start of the precision (see
            ``hess_init``): the number of observed data, found from the model's plates (a
            subsampled plate counts its full size) when ``None``; a coordinate sees
            :math:`N_i`, ``ess`` divided by the size of the plates its site lies in.
        hess_init: where the precision starts at the driver's first step (see
            :mod:`pyro_blr.blr.ivon_start`), with :math:`s_i` the prior's robust scale of
            coordinate :math:`i` (:mod:`pyro_blr.blr.prior_scale`). ``"auto"`` (the default):
            the expected Hessian diagonal at draws from the guide as it is, bounded below by
            the prior's precision :math:`1/s_i^2` and capped by
            :math:`\max(N_i/s_i^2, H_{ii}(m))`, up to 2048 coordinates; above that, each
            site's mean expected curvature (Hutchinson's estimate at the same draws) within
            the same floor and the cap :math:`N_i/s_i^2`. A number: the per-datum curvature
            :math:`h_0` in the data's units, the precision starting at :math:`N_i h_0`.
            ``None`` keeps the guide's own precision (to continue an earlier fit).
        beta1: the gradient's momentum.
        beta2: the Hessian estimate's momentum.
        clip_radius: the per-coordinate clip of the mean's update before the step size, in
            units of the prior's robust scale :math:`s_i` (unit scale where the prior gives
            none): no coordinate moves by more than ``lr * clip_radius *`` :math:`s_i` a step;
            ``None``: no clip.
        weight_decay: an optional extra penalty :math:`\tfrac\delta2\lVert\theta\rVert^2`
            (the model's prior is already in :math:`\ell`).

    Note:
        ``lr`` here is the step size :math:`\alpha` of the update as written above. The
        reference implementation (``ivon-opt``'s ``IVON(rescale_lr=True)``, its default)
        multiplies its ``lr`` by ``hess_init + weight_decay`` first, so its ``lr`` matches
        ``pb.IVON(lr=lr * (hess_init + weight_decay))``; taking its value as it is here gives
        steps :math:`1/(h_0 + \delta)` times larger (8x on the 1e4-weight MLP of
        ``benchmarks/engine_cost.py``, which diverged).

    Example:
        >>> import pyro_blr as pb
        >>> rule = pb.IVON(lr=0.05, ess=1000)
        >>> rule.lr, rule.ess, rule.beta2
        (0.05, 1000.0, 0.999)
    """

    name = "ivon"
    curvature = "reparam"
    full_covariance = False
    State = IVONState

    def __init__(
        self,
        lr: float | Callable[[int], float] = 0.1,
        *,
        mc_samples: int = 2,
        antithetic: bool = True,
        ess: float | None = None,
        hess_init: float | str | None = "auto",
        beta1: float = 0.9,
        beta2: float = 0.999,
        clip_radius: float | None = 0.1,
        weight_decay: float = 0.0,
    ):
        self._set(
            lr,
            mc_samples=mc_samples,
            antithetic=antithetic,
            ess=ess,
            hess_init=hess_init,
            beta1=beta1,
            beta2=beta2,
            clip_radius=clip_radius,
            weight_decay=weight_decay,
        )

    def init(self, params: GaussianState) -> IVONState:
        """The mean and precision, with zero momentum."""
        loc, precision = params
        return IVONState(loc, precision, torch.zeros_like(loc))

    def gaussian_update(self, state: IVONState, estimates: Estimates, lr: float) -> IVONState:
        """:func:`ivon_update`, the clip measured in ``estimates.units`` where given."""
        radius = self.clip_radius
        if radius is not None and estimates.units is not None:
            radius = radius * estimates.units.nan_to_num(nan=1.0)
        return ivon_update(
            state, estimates.grad, estimates.hess, lr, estimates.step, self.beta1, self.beta2,
            radius,
        )  # fmt: skip
