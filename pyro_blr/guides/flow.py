r"""Normalizing-flow guides assembled from ``pyro.distributions.transforms``.

The guide's latent (the model's unconstrained vector) is

.. math::
    z = m + L\, f_K \circ \dots \circ f_1(\epsilon), \qquad \epsilon \sim \mathcal N(0, I),

so :math:`\log q(z) = \log \mathcal N(\epsilon) - \sum_k \log\lvert\det J_{f_k}\rvert - \log\lvert
\det L\rvert`. The layers act in the whitened coordinates of the Gaussian
:math:`\mathcal N(m, LL^\top)`, where a spline's :math:`[-3, 3]` holds the posterior's bulk
whatever its scale; with ``base=`` a fitted Gaussian guide (e.g. after ``pb.BLR``) supplies
:math:`m, L` and every layer starts at the identity, so the guide starts at that Gaussian and
only refines it.

The layers (:data:`FLOWS`, from :mod:`pyro_blr.guides.flow_layers`): neural spline flows,
autoregressive and coupling (Durkan et al. 2019), the neural and the block neural autoregressive
flow (Huang et al. 2018; De Cao et al. 2019), IAF, elementwise splines, planar, radial and
Sylvester flows; or any ``Transform`` a factory ``flow(dim)`` builds, including a module that
builds one when called (zuko's flows: ``flow=lambda dim: zuko.flows.NSF(dim).transform``, see
:mod:`pyro_blr.guides.lazy_layer`). Autoregressive and
coupling layers condition in the model's order in the last layer and in reverse in every other
one (Pyro's helpers draw a random order per layer instead; on two dimensions that coin flip
decided which of AutoFlow and ``AutoIAFNormal`` fitted a banana better, see
``docs/guides/flows.md``). IAF layers all follow the model's order, which fitted the banana
and the funnel better when the two were compared (a comparison ``benchmarks/flows.py`` does not
repeat; its table compares the flows as built).

References:
    | Variational Inference with Normalizing Flows (Rezende & Mohamed, ICML 2015)
    | https://arxiv.org/abs/1505.05770
    | Neural Autoregressive Flows (Huang, Krueger, Lacoste & Courville, ICML 2018)
    | https://arxiv.org/abs/1804.00779
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import ComposeTransform, LowerCholeskyAffine, Permute
from pyro.infer.autoguide import AutoContinuous, AutoGuide, init_to_median
from pyro.nn import PyroParam
from torch import Tensor, nn
from torch.distributions import Transform, biject_to

from pyro_blr.core import (
    GaussianGuide,
    check_gaussian_guide,
    check_prototype,
    latent_layout,
)
from pyro_blr.guides.flow_factory import as_layer
from pyro_blr.guides.flow_layers import FLOWS, Flow
from pyro_blr.guides.unfitted import setup_for

__all__ = ["DEFAULT_FLOW", "DEFAULT_WARM_FLOW", "FLOWS", "AutoFlow"]

DEFAULT_FLOW = "neural_autoregressive"
"""The flow ``AutoFlow(model)`` builds: the best of ``benchmarks/flows.py``."""
DEFAULT_WARM_FLOW = "iaf"
"""The flow ``AutoFlow(model, base=...)`` builds: the default flow has no identity to start at."""


class AutoFlow(AutoContinuous):
    r"""A normalizing-flow guide over the model's unconstrained latent vector.

    See the module docstring for the density. Works with ``SVI`` and any ELBO, ``Predictive``,
    :func:`pyro_blr.to_inference_data` and :func:`pyro_blr.psis_diagnostic`. ``median()`` is the
    flow applied to the base median, :math:`m + L f(0)` (the median of the flow's output only
    when the flows are elementwise and monotone); ``quantiles()`` are estimated from 1000 draws.

    Args:
        model: the Pyro model.
        flow: a name in :data:`FLOWS` (``"neural_autoregressive"``, ``"spline_autoregressive"``,
            ``"spline_coupling"``, ``"block_autoregressive"``, ``"iaf"``, ``"spline"``,
            ``"planar"``, ``"radial"``, ``"sylvester"``), or a factory ``dim -> Transform``
            called once per layer (e.g. ``lambda d: pyro.distributions.transforms
            .affine_coupling(d)``). Default: :data:`DEFAULT_FLOW`, the best of
            ``benchmarks/flows.py``, or :data:`DEFAULT_WARM_FLOW` with ``base=``.
        num_flows: the number :math:`K` of stacked layers.
        base: an initialized ``AutoNormal``, ``AutoDiagonalNormal`` or ``AutoMultivariateNormal``
            of the same model, usually fitted (warm start): :math:`m, L` are its mean and
            Cholesky factor and every named layer starts at its identity, so the guide starts as
            that Gaussian. A factory's layers start as the factory builds them.
        hidden_dims: hidden layer sizes of the layers' networks (default: Pyro's, see
            :mod:`~pyro_blr.guides.flow_layers`; hidden factors for the block flow).
        init_loc_fn: initial mean of the cold-started Gaussian.
        init_scale: initial scale of the cold-started Gaussian (1: the unit scale Pyro's flow
            guides start at; a start at 0.1 starved the layers of range when it was tried, a
            run that ``benchmarks/flows.py`` does not repeat).

    Raises:
        ValueError: an unknown flow; ``base=`` with a flow that has no identity
            (``"neural_autoregressive"``, ``"block_autoregressive"``); or (at the first call) a
            latent site local to a subsampled plate, whose size changes with the minibatch.
            At the first call too, a factory's layer that is not a bijection of
            :math:`\mathbb R^D` onto itself (a positive or bounded codomain such as
            ``ExpTransform``'s, a layer built for another dimension, a log-determinant that
            disagrees with autograd's): see :mod:`~pyro_blr.guides.flow_factory`.
        TypeError: a ``flow`` neither a name nor callable, or a ``base`` that is not a Gaussian
            autoguide; at the first call, a factory returning neither a transform nor a module
            that builds one (e.g. an ``nn.Linear``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> def model():
        ...     x = pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     pyro.sample("y", dist.Normal(x[0] * x[1], 0.5), obs=torch.tensor(1.0))
        >>> guide = pb.AutoFlow(model)  # two neural autoregressive layers
        >>> elbo = pyro.infer.Trace_ELBO()
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        >>> loss = svi.step()
        >>> guide.median()["x"].shape
        torch.Size([2])
        >>> splines = pb.AutoFlow(model, flow="spline_coupling", num_flows=4)
    """

    def __init__(
        self,
        model: Callable,
        flow: str | Callable[[int], Transform] | None = None,
        num_flows: int = 2,
        base: AutoGuide | None = None,
        hidden_dims: Sequence[int] | None = None,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 1.0,
    ):
        if flow is None:
            flow = DEFAULT_FLOW if base is None else DEFAULT_WARM_FLOW
        if isinstance(flow, str):
            if flow not in FLOWS:
                raise ValueError(
                    f"unknown flow {flow!r}; choose one of {sorted(FLOWS)} or a callable"
                )
            if base is not None and FLOWS[flow].identity is None:
                have = sorted(name for name, kind in FLOWS.items() if kind.identity)
                raise ValueError(
                    f"flow {flow!r} has no identity to start from base=; use one of {have}"
                )
        elif not callable(flow):
            raise TypeError(f"flow must be a name or a callable dim -> Transform, got {flow!r}")
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
        try:
            self._setup_flow(args, kwargs)
        except Exception:
            self.prototype_trace = None  # nothing half set up: the next call refuses again
            raise

    def _setup_flow(self, args: tuple, kwargs: dict) -> None:
        latent_layout(self.prototype_trace)  # refuses discrete and subsampled local latents by name
        check_prototype(self.model, self.prototype_trace, args, kwargs)
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
        if isinstance(self.flow, str):
            kind = FLOWS[self.flow]
        else:  # a user's factory: alternated (harmless on an elementwise layer)
            kind = Flow(lambda dim, hidden: self.flow(dim), None, True)
        # each layer checked a bijection of R^dim (a factory's codomain, dimension, Jacobian)
        flows = nn.ModuleList(
            as_layer(kind.build(dim, self.hidden_dims), dim, loc) for _ in range(self.num_flows)
        )
        if base is not None and kind.identity is not None:  # in the layers' final dtype
            with torch.no_grad():
                for layer in flows:
                    kind.identity(layer)
        self.loc = nn.Parameter(loc.detach().clone())
        self.scale_tril = PyroParam(scale_tril.detach().clone(), constraints.lower_cholesky)
        self.flows = flows
        # Layer k conditions in the model's order when K - 1 - k is even, in reverse otherwise:
        # the last layer (next to the affine map) follows the model's order.
        reverse = torch.arange(dim - 1, -1, -1, device=loc.device)
        self._reversals = [
            (Permute(reverse), Permute(reverse))
            if kind.alternate and (self.num_flows - 1 - k) % 2 and dim > 1
            else None
            for k in range(self.num_flows)
        ]

    def get_base_dist(self) -> dist.Distribution:
        zeros = torch.zeros(self.latent_dim, dtype=self.loc.dtype, device=self.loc.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args, **kwargs) -> ComposeTransform:
        # cache_size=1: scoring a fresh draw inverts nothing (Pyro's autoregressive inverse
        # allocates in the default dtype, and planar/Sylvester flows have no inverse at all).
        parts = []
        for layer, reversal in zip(self.flows, self._reversals, strict=True):  # registers them
            parts += [reversal[0], layer, reversal[1]] if reversal else [layer]
        affine = LowerCholeskyAffine(self.loc, self.scale_tril, cache_size=1)
        return ComposeTransform([*parts, affine])

    def get_posterior(self, *args, **kwargs) -> dist.Distribution:
        return dist.TransformedDistribution(self.get_base_dist(), list(self.get_transform().parts))

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        """The flow applied to the base median: :math:`m + L f(0)`, in constrained space.

        Raises:
            RuntimeError: called with no arguments before any fit, on a model that needs
                some: fit the guide first, or pass the model's arguments.
        """
        fit = "SVI(model, guide, optim, Trace_ELBO()).step(*args, **kwargs)"
        setup_for(self, "median", self._setup_prototype, args, kwargs, fit)
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
