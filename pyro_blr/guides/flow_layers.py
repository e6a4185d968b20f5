r"""The layers :class:`~pyro_blr.AutoFlow` stacks: Pyro's transforms, each with its identity start.

Every entry of :data:`FLOWS` builds one layer :math:`f_k` on :math:`\mathbb R^D` from
``pyro.distributions.transforms`` and, where the layer has one, sets it to the identity
(``AutoFlow`` does so under ``base=``, the warm start):

- ``"neural_autoregressive"``: :math:`y_d = \sigma^{-1}\big(\sum_j w_j\, \sigma(a_j x_d +
  b_j)\big)` with :math:`a, b, w` computed from :math:`x_{<d}` by a masked network, 16 sigmoid
  units (Huang et al. 2018). No identity: its units would stay equal forever.
- ``"spline_autoregressive"``: rational-quadratic splines whose knots a masked network computes
  from :math:`x_{<d}` (neural spline flow, Durkan et al. 2019). Identity [*].
- ``"spline_coupling"``: the second half's splines computed from the first half, an
  elementwise spline on the first half (Durkan et al. 2019); one dimension: an elementwise
  spline. Identity [*].
- ``"block_autoregressive"``: block neural autoregressive flow, two tanh layers of 8 units per
  coordinate (De Cao et al. 2019). No identity (its blocks' diagonals are positive).
- ``"iaf"``: affine autoregressive, :math:`y_d = \mu_d(x_{<d}) + \sigma_d(x_{<d}) x_d` (Kingma
  et al. 2016). Exact identity.
- ``"spline"``: elementwise rational-quadratic splines (no coupling). Identity [*].
- ``"planar"``, ``"radial"`` (Rezende & Mohamed 2015), ``"sylvester"`` (van den Berg et al.
  2018; Pyro's layer with its map corrected to the one its log-determinant belongs to, see
  :class:`_Sylvester`). Exact identity.

[*] Pyro pads a spline's two boundary knots with derivative :math:`1 - 10^{-3}`, so its outer
bins bend by up to :math:`10^{-4}` (measured :math:`7.5\cdot 10^{-5}` at 2.9 with bound 3): the
identity holds to that accuracy, not to round-off.

Autoregressive layers condition coordinate :math:`d` on those before it in the model's order
(the order of its sample sites, not Pyro's random permutation), coupling layers the second half
on the first; ``AutoFlow`` reverses the coordinates around every other layer of the kinds with
``alternate`` set. Splines act on :math:`[-3, 3]` with 8 bins: the whitened coordinates the
layers see put the posterior's bulk there. Hidden sizes are Pyro's defaults: :math:`[10D, 10D]`
for the spline networks, :math:`[3D + 1]` for IAF and the neural autoregressive flow.

References:
    | Neural Spline Flows (Durkan, Bekasov, Murray & Papamakarios, NeurIPS 2019)
    | https://arxiv.org/abs/1906.04032
    | Block Neural Autoregressive Flow (De Cao, Aziz & Titov, UAI 2019)
    | https://arxiv.org/abs/1904.04676

Example:
    >>> from pyro_blr.guides.flow_layers import FLOWS
    >>> build, identity, alternate = FLOWS["spline_autoregressive"]
    >>> layer = build(3, None)
    >>> with torch.no_grad():
    ...     identity(layer)
    >>> x = torch.randn(3)
    >>> bool((layer(x) - x).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from pyro.distributions.transforms import (
    AffineAutoregressive,
    BlockAutoregressive,
    NeuralAutoregressive,
    Planar,
    Radial,
    Spline,
    SplineAutoregressive,
    SplineCoupling,
    Sylvester,
)
from pyro.nn import AutoRegressiveNN, DenseNN
from torch import nn

__all__ = ["FLOWS", "Flow"]

BINS, BOUND = 8, 3.0  # spline bins on [-BOUND, BOUND], in whitened units
_LOG_E_MINUS_1 = math.log(math.e - 1)  # softplus(a) = 1 at a = log(e - 1)
# Pyro adds 1e-3 to softplus(d) for a knot derivative: this d gives derivative exactly 1.
_UNIT_DERIVATIVE = math.log(math.expm1(1 - 1e-3))


class Flow(NamedTuple):
    """One kind of layer: ``build(dim, hidden_dims) -> module``, ``identity(module)`` (in place,
    or ``None`` where the layer has no identity) and whether AutoFlow reverses the coordinates
    around every other layer (autoregressive and coupling layers; IAF layers all follow the
    model's order, measured better on the banana and the funnel)."""

    build: Callable[[int, Sequence[int] | None], nn.Module]
    identity: Callable[[nn.Module], None] | None
    alternate: bool


def _order(dim: int) -> torch.Tensor:
    return torch.arange(dim)  # the model's order; AutoFlow reverses every other layer


def _zero_output(layer: nn.Linear, unit_derivatives: slice | None = None) -> None:
    """Zero a network's last layer (its outputs become constants), with the knot derivatives'
    outputs set to give derivative 1: equal bins and unit slopes, the identity spline."""
    layer.weight.zero_()
    layer.bias.zero_()
    if unit_derivatives is not None:
        layer.bias[unit_derivatives] = _UNIT_DERIVATIVE


def _planar_identity(flow: Planar) -> None:
    # w^T u = log(e - 1) makes Pyro's invertibility-corrected u exactly zero.
    flow.u.copy_(_LOG_E_MINUS_1 * flow.w / flow.w.square().sum())


def _radial_identity(flow: Radial) -> None:
    flow.beta_prime.copy_(flow.alpha_prime)  # beta = -softplus(alpha') + softplus(beta') = 0


class _Sylvester(Sylvester):
    r"""Pyro's Sylvester layer with the map its log-determinant belongs to.

    Pyro computes :math:`y = x + h(x S Q^\top + b)\, Q R` (row vectors) but reports
    :math:`\sum_i \log(1 + h'_i r_{ii} s_{ii})`, the log-determinant of the Sylvester flow
    (van den Berg et al. 2018, eq. 13) only when :math:`Q = I`: its Jacobian is
    :math:`I + S Q^\top \operatorname{diag}(h') Q R`, and :math:`\operatorname{diag}(h')` does
    not commute with :math:`Q` (measured: 0.09 nat off per layer at unit-scale parameters, 2.2
    nat in a fitted guide's log evidence). Here the map is the paper's,

    .. math::
        y = x + h(x Q S^\top + b)\, R^\top Q^\top, \qquad
        \frac{\partial y}{\partial x} = I + Q S^\top \operatorname{diag}(h') R^\top Q^\top,

    whose determinant is :math:`\det(I + \operatorname{diag}(h') R^\top S^\top) = \prod_i (1 +
    h'_i r_{ii} s_{ii})` (:math:`R^\top S^\top` is lower triangular), positive since
    :math:`r_{ii} s_{ii} \in (-1, 1)` and :math:`h' \in (0, 1]`: a bijection. Pyro's parameters
    and identity start are kept. Hand-written: no maintained library has a correct one.
    """

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        Q, R, S = self.Q(x), self.R(), self.S()
        preactivation = x @ Q @ S.T + self.b
        y = x + self.tanh(preactivation) @ R.T @ Q.T
        slopes = 1.0 - self.tanh(preactivation).square()
        self._cached_logDetJ = torch.log1p(slopes * R.diagonal() * S.diagonal()).sum(-1)
        return y


def _sylvester_identity(flow: Sylvester) -> None:
    flow.R_dense.zero_()  # R = 0 makes A = QR = 0
    flow.R_diag.zero_()


def _iaf_identity(flow: AffineAutoregressive) -> None:
    _zero_output(flow.arn.layers[-1])  # mean 0, log-scale 0


def _spline_identity(flow: Spline) -> None:
    flow.unnormalized_widths.zero_()
    flow.unnormalized_heights.zero_()
    flow.unnormalized_derivatives.fill_(_UNIT_DERIVATIVE)


def _iaf(dim: int, hidden: Sequence[int] | None) -> AffineAutoregressive:
    return AffineAutoregressive(
        AutoRegressiveNN(dim, hidden or [3 * dim + 1], permutation=_order(dim))
    )


def _spline_autoregressive(dim: int, hidden: Sequence[int] | None) -> SplineAutoregressive:
    arn = AutoRegressiveNN(
        dim,
        hidden or [10 * dim, 10 * dim],
        param_dims=[BINS, BINS, BINS - 1],
        permutation=_order(dim),
    )
    return SplineAutoregressive(dim, arn, count_bins=BINS, bound=BOUND, order="quadratic")


def _spline_autoregressive_identity(flow: SplineAutoregressive) -> None:
    # The network's outputs are laid out (parameter, coordinate): widths, heights, derivatives.
    dim = flow.arn.input_dim
    _zero_output(flow.arn.layers[-1], slice(2 * BINS * dim, (3 * BINS - 1) * dim))


def _spline_coupling(dim: int, hidden: Sequence[int] | None) -> nn.Module:
    if dim == 1:  # nothing to couple to: an elementwise spline
        return Spline(1, count_bins=BINS, bound=BOUND, order="quadratic")
    split = dim // 2
    upper = dim - split
    net = DenseNN(
        split,
        hidden or [10 * dim, 10 * dim],
        param_dims=[upper * BINS, upper * BINS, upper * (BINS - 1)],
    )
    return SplineCoupling(dim, split, net, count_bins=BINS, bound=BOUND, order="quadratic")


def _spline_coupling_identity(flow: nn.Module) -> None:
    if isinstance(flow, Spline):
        return _spline_identity(flow)
    _spline_identity(flow.lower_spline)
    # The network's outputs are laid out (parameter, coordinate, bin).
    upper = flow.upper_spline.input_dim
    _zero_output(flow.upper_spline.nn.layers[-1], slice(2 * upper * BINS, upper * (3 * BINS - 1)))


def _block_autoregressive(dim: int, hidden: Sequence[int] | None) -> BlockAutoregressive:
    return BlockAutoregressive(dim, hidden_factors=list(hidden or [8, 8]), residual=None)


def _neural_autoregressive(dim: int, hidden: Sequence[int] | None) -> NeuralAutoregressive:
    arn = AutoRegressiveNN(
        dim, hidden or [3 * dim + 1], param_dims=[16] * 3, permutation=_order(dim)
    )
    return NeuralAutoregressive(arn, hidden_units=16)


FLOWS: dict[str, Flow] = {
    "spline_autoregressive": Flow(_spline_autoregressive, _spline_autoregressive_identity, True),
    "spline_coupling": Flow(_spline_coupling, _spline_coupling_identity, True),
    "block_autoregressive": Flow(_block_autoregressive, None, True),
    "neural_autoregressive": Flow(_neural_autoregressive, None, True),
    "iaf": Flow(_iaf, _iaf_identity, False),
    "spline": Flow(
        lambda dim, hidden: Spline(dim, count_bins=BINS, bound=BOUND, order="quadratic"),
        _spline_identity,
        False,
    ),
    "planar": Flow(lambda dim, hidden: Planar(dim), _planar_identity, False),
    "radial": Flow(lambda dim, hidden: Radial(dim), _radial_identity, False),
    "sylvester": Flow(
        lambda dim, hidden: _Sylvester(dim, count_transforms=1), _sylvester_identity, False
    ),
}
"""Each named layer: its constructor ``(dim, hidden_dims) -> module``, its identity
initialization (``None``: none exists) and whether AutoFlow alternates its order."""
