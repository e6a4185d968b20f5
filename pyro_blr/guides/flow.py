r"""Normalizing-flow guides assembled from ``pyro.distributions.transforms``.

The guide's latent (the model's unconstrained vector) is

.. math::
    z = m + L\, f_K \circ \dots \circ f_1(\epsilon), \qquad \epsilon \sim \mathcal N(0, I),

so :math:`\log q(z) = \log \mathcal N(\epsilon) - \sum_k \log\lvert\det J_{f_k}\rvert - \log\lvert
\det L\rvert`. The flows act in the whitened coordinates of the Gaussian
:math:`\mathcal N(m, LL^\top)`; with ``base=`` a fitted Gaussian guide (e.g. after ``pb.BLR``)
supplies :math:`m, L` and every flow starts at the identity, so the guide starts exactly at that
Gaussian and only refines it.

Flows (Pyro's): ``"planar"`` :math:`f(x) = x + u\tanh(w^\top x + b)` (Rezende & Mohamed 2015),
``"radial"``, ``"sylvester"`` (van den Berg et al. 2018), ``"iaf"`` (affine autoregressive, Kingma
et al. 2016) and ``"spline"`` (elementwise rational-quadratic splines, Durkan et al. 2019).

References:
    | Variational Inference with Normalizing Flows (Rezende & Mohamed, ICML 2015)
    | https://arxiv.org/abs/1505.05770
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import (
    ComposeTransform,
    LowerCholeskyAffine,
    Planar,
    Radial,
    Spline,
    Sylvester,
    affine_autoregressive,
)
from pyro.infer.autoguide import AutoContinuous, AutoGuide, init_to_median
from pyro.nn import PyroParam
from torch import Tensor, nn
from torch.distributions import biject_to

from pyro_blr.core import GaussianGuide, check_gaussian_guide, latent_layout

__all__ = ["FLOWS", "AutoFlow"]

_LOG_E_MINUS_1 = math.log(math.e - 1)  # softplus(a) = 1 at a = log(e - 1)


def _planar_identity(flow: Planar) -> None:
    # w^T u = log(e - 1) makes Pyro's invertibility-corrected u exactly zero.
    flow.u.copy_(_LOG_E_MINUS_1 * flow.w / flow.w.square().sum())


def _radial_identity(flow: Radial) -> None:
    flow.beta_prime.copy_(flow.alpha_prime)  # beta = -softplus(alpha') + softplus(beta') = 0


def _sylvester_identity(flow: Sylvester) -> None:
    flow.R_dense.zero_()  # R = 0 makes A = QR = 0
    flow.R_diag.zero_()


def _iaf_identity(flow: nn.Module) -> None:
    flow.arn.layers[-1].weight.zero_()  # a zero output layer: mean 0, log-scale 0
    flow.arn.layers[-1].bias.zero_()


def _spline_identity(flow: Spline) -> None:
    # Equal bins and unit interior knot derivatives: the identity outside [-bound, bound] and on
    # the inner bins. Pyro pads the two boundary knots with derivative 1 - 1e-3, so the outer
    # bins bend by up to 1e-4 (measured: 7.5e-5 at 2.9 with bound 3): the start is the base
    # Gaussian to that accuracy, not to round-off.
    flow.unnormalized_widths.zero_()
    flow.unnormalized_heights.zero_()
    flow.unnormalized_derivatives.fill_(math.log(math.expm1(1 - 1e-3)))


FLOWS: dict[str, tuple[Callable[[int, Sequence[int] | None], nn.Module], Callable]] = {
    "planar": (lambda dim, hidden: Planar(dim), _planar_identity),
    "radial": (lambda dim, hidden: Radial(dim), _radial_identity),
    "sylvester": (lambda dim, hidden: Sylvester(dim, count_transforms=1), _sylvester_identity),
    "iaf": (
        lambda dim, hidden: affine_autoregressive(dim, hidden_dims=hidden or [3 * dim + 1]),
        _iaf_identity,
    ),
    "spline": (
        lambda dim, hidden: Spline(dim, count_bins=8, bound=3.0, order="quadratic"),
        _spline_identity,
    ),
}
"""Each flow's constructor ``(dim, hidden_dims) -> module`` and its identity initialization."""


class AutoFlow(AutoContinuous):
    r"""A normalizing-flow guide over the model's unconstrained latent vector.

    See the module docstring for the density. Works with ``SVI`` and any ELBO, ``Predictive``,
    :func:`pyro_blr.to_inference_data` and :func:`pyro_blr.psis_diagnostic`. ``median()`` is the
    flow applied to the base median, :math:`m + L f(0)` (the median of the flow's output only
    when the flows are elementwise and monotone); ``quantiles()`` are estimated from 1000 draws.

    Args:
        model: the Pyro model.
        flow: ``"planar"``, ``"radial"``, ``"sylvester"``, ``"iaf"`` or ``"spline"``.
        num_flows: the number :math:`K` of stacked flows.
        base: an initialized ``AutoNormal``, ``AutoDiagonalNormal`` or ``AutoMultivariateNormal``
            of the same model, usually fitted (warm start): the guide starts as that Gaussian.
        hidden_dims: hidden layer sizes of the ``"iaf"`` networks (default ``[3 D + 1]``).
        init_loc_fn: initial mean of the cold-started Gaussian.
        init_scale: initial scale of the cold-started Gaussian.

    Raises:
        ValueError: an unknown flow, or (at the first call) a latent site local to a subsampled
            plate, whose size changes with the minibatch.
        TypeError: a ``base`` that is not a Gaussian autoguide.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     pyro.sample("y", dist.Normal(x[0] * x[1], 0.5), obs=torch.tensor(1.0))
        >>> guide = pb.AutoFlow(model, flow="iaf", num_flows=2)
        >>> elbo = pyro.infer.Trace_ELBO()
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        >>> loss = svi.step()
        >>> guide.median()["x"].shape
        torch.Size([2])
    """

    def __init__(
        self,
        model: Callable,
        flow: str = "iaf",
        num_flows: int = 2,
        base: AutoGuide | None = None,
        hidden_dims: Sequence[int] | None = None,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
    ):
        if flow not in FLOWS:
            raise ValueError(f"unknown flow {flow!r}; choose one of {sorted(FLOWS)}")
        if not isinstance(num_flows, int) or num_flows < 0:
            raise ValueError(f"num_flows must be a non-negative integer, got {num_flows!r}")
        if base is not None:
            check_gaussian_guide(base, "AutoFlow(base=...)")
            if base.prototype_trace is None:
                raise ValueError("base guide is not initialized: fit it (or call it) first")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self.flow, self.num_flows, self.hidden_dims = flow, num_flows, hidden_dims
        self._init_scale = init_scale
        self._base = [base]  # kept out of this module's parameters

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        latent_layout(self.prototype_trace)  # refuses discrete and subsampled local latents by name
        dim = self.latent_dim
        base = self._base[0]
        if base is not None:
            loc, precision = GaussianGuide(base, latent_layout(base.prototype_trace)).read()
            if loc.shape != (dim,):
                raise ValueError(f"base guide has {loc.numel()} coordinates, the model {dim}")
            precision = precision if precision.dim() == 2 else torch.diag(precision)
            covariance = torch.cholesky_inverse(torch.linalg.cholesky(precision))
            scale_tril = torch.linalg.cholesky(covariance)
        else:
            loc = self._init_loc()
            scale_tril = self._init_scale * torch.eye(dim, dtype=loc.dtype, device=loc.device)
        self.loc = nn.Parameter(loc.detach().clone())
        self.scale_tril = PyroParam(scale_tril.detach().clone(), constraints.lower_cholesky)
        build, identity = FLOWS[self.flow]
        flows = nn.ModuleList([build(dim, self.hidden_dims) for _ in range(self.num_flows)])
        flows = flows.to(dtype=loc.dtype, device=loc.device)
        if base is not None:  # start at the identity, in the flows' final dtype
            with torch.no_grad():
                for flow in flows:
                    identity(flow)
        self.flows = flows

    def get_base_dist(self) -> dist.Distribution:
        zeros = torch.zeros(self.latent_dim, dtype=self.loc.dtype, device=self.loc.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args, **kwargs) -> ComposeTransform:
        # cache_size=1: scoring a fresh draw inverts nothing (Pyro's autoregressive inverse
        # allocates in the default dtype, and planar/Sylvester flows have no inverse at all).
        affine = LowerCholeskyAffine(self.loc, self.scale_tril, cache_size=1)
        return ComposeTransform([*self.flows, affine])

    def get_posterior(self, *args, **kwargs) -> dist.Distribution:
        return dist.TransformedDistribution(self.get_base_dist(), list(self.get_transform().parts))

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        """The flow applied to the base median: :math:`m + L f(0)`, in constrained space."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        latent = self.get_transform()(torch.zeros_like(self.loc))
        return {
            site["name"]: biject_to(site["fn"].support)(value)
            for site, value in self._unpack_latent(latent)
        }

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples: int = 1000, **kwargs) -> dict[str, Tensor]:
        """Quantiles of each constrained site, estimated from ``num_samples`` draws."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        q = torch.as_tensor(quantiles, dtype=self.loc.dtype, device=self.loc.device)
        latent = self.get_posterior().sample((num_samples,))
        out = {}
        for site, unconstrained in self._unpack_latent(latent):
            value = biject_to(site["fn"].support)(unconstrained)
            out[site["name"]] = torch.quantile(value, q, dim=0)
        return out
