r"""A mixture-of-Gaussians guide over the model's unconstrained latent vector.

.. math::
    q(z) = \sum_{k=1}^K \pi_k\, \mathcal N(z \mid m_k, S_k^{-1}),

with learnable weights :math:`\pi` (softmax of logits), means and precisions (diagonal or full).
Components start apart: the means are the initial location plus ``init_spread`` times random
offsets that are centred and scaled to unit spread in every coordinate, so that on every axis
some components start on each side (with two components, exactly opposite).

Two ways to fit it:

* ``pb.BLR(model, guide, rule="mixture")`` -- the natural-gradient updates of Lin, Khan & Schmidt
  (2019), with stratified expectations (every component sampled, weighted by its weight); see
  :mod:`pyro_blr.blr.mixture`.
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

from pyro_blr.core import latent_layout

__all__ = ["AutoMixture"]


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
                "pb.BLR(model, guide, rule='mixture'), which needs no such derivative"
            )
        return grads


class AutoMixture(AutoContinuous):
    r"""A mixture of ``num_components`` Gaussians over the unconstrained latent vector.

    Args:
        model: the Pyro model.
        num_components: :math:`K`.
        component: ``"diagonal"`` (SVI or BLR), ``"full"`` (BLR; sampling under
            ``torch.no_grad``, as ``Predictive`` and :func:`pyro_blr.to_inference_data` do) or
            ``"expfamily"`` (support-matched families per site, BLR; see
            :mod:`pyro_blr.guides.expfamily_mixture`).
        init_loc_fn: the centre the components start around.
        init_scale: the components' initial scale.
        init_spread: the scale of the random offsets that start the components apart.

    Raises:
        ValueError: an unknown ``component`` or ``num_components < 1``; (at the first call) a
            discrete or subsampled local latent site.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = pb.AutoMixture(model, num_components=3)
        >>> guide()["x"].shape, guide.weights.shape
        (torch.Size([2]), torch.Size([3]))
    """

    def __new__(cls, model: Callable, num_components: int = 2, component: str = "diagonal", **kw):
        if component == "expfamily":  # a mixture of support-matched families, in its own class
            from pyro_blr.guides.expfamily_mixture import ExpFamilyMixture

            if not isinstance(num_components, int) or num_components < 1:
                raise ValueError(
                    f"num_components must be a positive integer, got {num_components!r}"
                )
            return ExpFamilyMixture(model, num_components, **kw)
        return super().__new__(cls)

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
        if not isinstance(num_components, int) or num_components < 1:
            raise ValueError(f"num_components must be a positive integer, got {num_components!r}")
        super().__init__(model, init_loc_fn=init_loc_fn)
        self.num_components, self.component = num_components, component
        self._init_scale, self._init_spread = init_scale, init_spread

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        latent_layout(self.prototype_trace)  # refuses discrete and subsampled local latents
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

    @property
    def weights(self) -> Tensor:
        """The mixture weights :math:`\\pi`."""
        return torch.softmax(self.logits, -1)

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
                "with pb.BLR(model, guide, rule='mixture'), or use component='diagonal'"
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
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        """The mean of the heaviest component (a mixture has no closed-form median)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        latent = self.locs[self.logits.argmax()]
        return {
            site["name"]: torch.distributions.biject_to(site["fn"].support)(value)
            for site, value in self._unpack_latent(latent)
        }
