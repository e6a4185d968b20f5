r"""A mixture-of-Gaussians guide over the model's unconstrained latent vector.

.. math::
    q(z) = \sum_{k=1}^K \pi_k\, \mathcal N(z \mid m_k, S_k^{-1}),

with learnable weights :math:`\pi` (softmax of logits), means and precisions (diagonal or full).
Components start apart: the means are the initial location plus ``init_spread`` times random
offsets that are centred and scaled to unit spread in every coordinate, so that on every axis
some components start on each side (with two components, exactly opposite).

Two ways to fit it:

* ``pb.BLR(model, guide, pb.MixtureRule())`` -- the natural-gradient updates of Lin, Khan & Schmidt
  (2019), with stratified expectations (every component sampled, weighted by its weight). The
  rule reads the mixture with :meth:`GaussianMixture.components` and writes it with
  :meth:`GaussianMixture.set_components`.
* ``pyro.infer.SVI`` with any ELBO, for diagonal components: draws come from Pyro's
  ``MixtureOfDiagNormals``, whose pathwise gradients are reparameterized in every parameter,
  weights included (Jankowiak & Karaletsos 2019) -- no score function of the component index.
  (Under ``Trace_ELBO`` the model runs once per draw, so a stratified estimator, which weighs
  every component's model terms, cannot be formed there; the BLR forms it.) Full-covariance
  components have no such sampler in Pyro: SVI refuses them, the BLR fits them. Pyro's
  derivative forms component densities outside log space and overflows in high dimensions
  (NaN gradients from about a hundred latent dimensions, depending on the scales); the step then
  raises ``FloatingPointError`` before the optimizer touches the guide, and the BLR is the way.

References:
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
    | Pathwise Derivatives for Multivariate Distributions (Jankowiak & Karaletsos, AISTATS 2019)
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoContinuous, init_to_median
from pyro.nn import PyroParam
from torch import Tensor, nn
from torch.distributions import biject_to, transform_to

from pyro_blr.core import (
    check_prototype,
    latent_layout,
    write_params,
)
from pyro_blr.families.gaussian import precision_from_scale_tril, scale_tril_from_precision
from pyro_blr.guides.mixture import AutoMixture, check_num_components
from pyro_blr.guides.unfitted import setup_for

__all__ = ["GaussianMixture"]


class _FiniteGradients(torch.autograd.Function):
    """Identity on the mixture's parameters whose backward refuses non-finite gradients.

    Pyro's pathwise derivative for ``MixtureOfDiagNormals`` forms component densities
    :math:`q_j(z)` and their ratios outside log space; in tens to hundreds of dimensions they
    overflow or underflow and every gradient becomes NaN. Raising here stops the step before an
    optimizer writes NaN into the guide."""

    @staticmethod
    def forward(ctx, *params):
        return tuple(p.view_as(p) for p in params)

    @staticmethod
    def backward(ctx, *grads):
        if not all(torch.isfinite(g).all() for g in grads if g is not None):
            raise FloatingPointError(
                "AutoMixture(component='diagonal') got non-finite gradients from Pyro's "
                "MixtureOfDiagNormals pathwise derivative, whose component densities overflow or "
                "underflow in high dimensions; fit this guide with "
                "pb.BLR(model, guide, pb.MixtureRule()), which needs no such derivative"
            )
        return grads


class GaussianMixture(AutoMixture, AutoContinuous):
    r"""``AutoMixture(component="diagonal" | "full")``: ``num_components`` Gaussians over the
    unconstrained latent vector (see the module docstring).

    Args:
        model: the Pyro model.
        num_components: :math:`K`.
        component: ``"diagonal"`` (SVI or BLR) or ``"full"`` (BLR; sampling under
            ``torch.no_grad``, as ``Predictive`` and :func:`pyro_blr.to_inference_data` do).
        init_loc_fn: the centre the components start around.
        init_scale: the components' initial scale.
        init_spread: the scale of the random offsets that start the components apart.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = pb.AutoMixture(model, num_components=3, component="full")
        >>> with torch.no_grad():
        ...     _ = guide()
        >>> [tuple(t.shape) for t in guide.components()]  # logits, locs, precisions
        [(3,), (3, 2), (3, 2, 2)]
    """

    def __init__(
        self,
        model: Callable,
        num_components: int = 2,
        component: str = "diagonal",
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        init_spread: float = 1.0,
    ):
        if component not in ("diagonal", "full"):
            raise ValueError(
                f"component must be 'diagonal', 'full' or 'expfamily', got {component!r}"
            )
        check_num_components(num_components)
        super().__init__(model, init_loc_fn=init_loc_fn)
        self.num_components, self.component = num_components, component
        self._init_scale, self._init_spread = init_scale, init_spread

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        latent_layout(self.prototype_trace)  # refuses discrete and subsampled local latents
        check_prototype(self.model, self.prototype_trace, args, kwargs)
        loc = self._init_loc()
        k, d = self.num_components, self.latent_dim
        offsets = torch.randn(k, d, dtype=loc.dtype, device=loc.device)
        if k > 1:  # centred and scaled per coordinate: components on both sides of every axis
            offsets = offsets - offsets.mean(0)
            offsets = offsets / offsets.std(0, unbiased=False).clamp_min(1e-6)
        self.locs = nn.Parameter(loc + self._init_spread * offsets)
        self.logits = nn.Parameter(torch.zeros(k, dtype=loc.dtype, device=loc.device))
        scales = torch.full((k, d), self._init_scale, dtype=loc.dtype, device=loc.device)
        if self.component == "diagonal":
            self.scales = PyroParam(scales, constraints.softplus_positive)
        else:
            self.scale_trils = PyroParam(torch.diag_embed(scales), constraints.lower_cholesky)

    def get_base_dist(self):
        raise NotImplementedError("a mixture is not a transformed base distribution")

    def get_posterior(self, *args, **kwargs) -> dist.Distribution:
        if self.component == "diagonal":
            params = (self.locs, self.scales, self.logits)
            if torch.is_grad_enabled():
                params = _FiniteGradients.apply(*params)
            return dist.MixtureOfDiagNormals(*params)
        if torch.is_grad_enabled():  # SVI: Pyro would fall back to a score-function gradient
            raise NotImplementedError(
                "AutoMixture(component='full') has no reparameterized sampler for SVI; fit it "
                "with pb.BLR(model, guide, pb.MixtureRule()), or use component='diagonal'"
            )
        return self.mixture()

    def mixture(self) -> dist.Distribution:
        """The mixture as a distribution over the flat latent vector (log density, sampling)."""
        if self.component == "diagonal":
            scale_trils = torch.diag_embed(self.scales)
        else:
            scale_trils = self.scale_trils
        components = dist.MultivariateNormal(self.locs, scale_tril=scale_trils)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)

    @torch.no_grad()
    def components(self) -> tuple[Tensor, Tensor, Tensor]:
        """The mixture as ``(logits (K,), locs (K, D), precisions)``, detached clones.

        The precisions are ``(K, D)`` vectors for ``component="diagonal"`` and ``(K, D, D)``
        matrices for ``"full"``.
        """
        self._check_setup("components")
        if self.component == "diagonal":
            precisions = self.scales.pow(-2)
        else:
            precisions = precision_from_scale_tril(self.scale_trils)
        return self.logits.detach().clone(), self.locs.detach().clone(), precisions.clone()

    def set_components(self, logits: Tensor, locs: Tensor, precisions: Tensor) -> None:
        """Write weights, means and precisions (as :meth:`components` returns them), in place.

        Everything is checked before anything is written: shapes, finiteness, positive
        (diagonal) or positive-definite (full) precisions whose scales are representable.

        Raises:
            ValueError: naming the guide and what is wrong; the guide is left as it was.
        """
        self._check_setup("set_components")
        who = f"{self._describe()}.set_components"
        logits = self._checked_logits(logits, "set_components")
        k, d = self.locs.shape
        full = self.component == "full"
        shapes = {"locs": (k, d), "precisions": (k, d, d) if full else (k, d)}
        for name, value in (("locs", locs), ("precisions", precisions)):
            if not isinstance(value, Tensor) or value.shape != shapes[name]:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{who}: {name} need shape {shapes[name]}, got {got}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{who}: the {name} are not finite")
        locs, precisions = locs.detach(), precisions.detach()
        if full:
            name, value = "scale_trils", self._scale_trils(precisions, who)
        else:
            if not (precisions > 0).all():
                bad = sorted({int(i) for i in (precisions <= 0).nonzero()[:, 0]})
                raise ValueError(f"{who}: the precisions of components {bad} are not positive")
            name, value = "scales", precisions.rsqrt()
        unconstrained = transform_to(self._pyro_params[name][0]).inv(value)
        if not (torch.isfinite(value).all() and torch.isfinite(unconstrained).all()):
            raise ValueError(f"{who}: the scales of these precisions overflow or underflow")
        write_params([(self, "logits", logits), (self, "locs", locs), (self, name, value)])

    @staticmethod
    def _scale_trils(precisions: Tensor, who: str) -> Tensor:
        """Cholesky factors of the covariances, refusing precisions that are not positive
        definite (checked by ``cholesky_ex``, never by an exception of the solver)."""
        scale = precisions.abs().amax((-2, -1), keepdim=True)
        tol = torch.finfo(precisions.dtype).eps ** 0.5
        asymmetric = ((precisions - precisions.mT).abs() > tol * scale).any((-2, -1))
        if asymmetric.any():
            bad = asymmetric.nonzero()[:, 0].tolist()
            raise ValueError(f"{who}: the precisions of components {bad} are not symmetric")
        chol, info = torch.linalg.cholesky_ex(precisions)
        if (info != 0).any():
            bad = (info != 0).nonzero()[:, 0].tolist()
            raise ValueError(f"{who}: the precisions of components {bad} are not positive definite")
        _, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol))
        if (info != 0).any():
            bad = (info != 0).nonzero()[:, 0].tolist()
            raise ValueError(
                f"{who}: the covariances of components {bad} (inverse precisions) are not "
                "numerically positive definite"
            )
        return scale_tril_from_precision(precisions)

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        """The mean of the heaviest component (a mixture has no closed-form median).

        Raises:
            RuntimeError: called with no arguments before any fit, on a model that needs
                some: fit the guide first, or pass the model's arguments.
        """
        setup_for(self, "median", self._setup_prototype, args, kwargs)
        latent = self.locs[self.logits.argmax()]
        return {
            site["name"]: biject_to(site["fn"].support)(value)
            for site, value in self._unpack_latent(latent)
        }
