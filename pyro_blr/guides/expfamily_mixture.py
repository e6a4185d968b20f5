r"""A mixture of support-matched exponential-family components (``AutoMixture(component=
"expfamily")``).

.. math::
    q(x) = \sum_{k=1}^K \pi_k \prod_{\text{sites } s} q_{k,s}(x_s),

each :math:`q_{k,s}` the family of site :math:`s`'s support, as in
:class:`pyro_blr.AutoExpFamily`. Components start apart: component :math:`k`'s distributions are
centred on the initial values moved by ``init_spread`` times centred, unit-spread offsets in each
site's unconstrained coordinates. It is an :class:`~pyro_blr.guides.mixture.AutoMixture` and an
:class:`~pyro_blr.AutoExpFamily`: each site's parameters carry a leading component dimension
:math:`K`, and so do its natural parameters (:meth:`~pyro_blr.AutoExpFamily.natural_params`,
:meth:`~pyro_blr.AutoExpFamily.set_natural_params`); the weights are written by
:meth:`~pyro_blr.guides.mixture.AutoMixture.set_logits`.

Non-Gaussian mixtures have no reparameterized sampler for SVI; they are fitted by
``pb.BLR(model, guide, pb.MixtureRule())``. Drawing from
the guide (``Predictive``, :func:`pyro_blr.to_inference_data`, :func:`pyro_blr.log_evidence`, all
under ``torch.no_grad``) is ancestral: a component per draw, then every site from it; the guide
trace carries the exact mixture log density :math:`\log q(x)` (on an auxiliary site), so
importance weights and ELBO estimates are those of the mixture.

References:
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import init_to_median
from torch import Tensor, nn
from torch.distributions import biject_to

from pyro_blr.families import ExpFamily
from pyro_blr.guides.expfamily import AutoExpFamily
from pyro_blr.guides.mixture import AutoMixture, check_num_components
from pyro_blr.guides.unfitted import setup_for

__all__ = ["ExpFamilyMixture"]


def _spread_offsets(num: int, like: Tensor) -> Tensor:
    offsets = torch.randn((num, *like.shape), dtype=like.dtype, device=like.device)
    if num > 1:  # centred and scaled: components on both sides of every coordinate
        offsets = offsets - offsets.mean(0)
        offsets = offsets / offsets.std(0, unbiased=False).clamp_min(1e-6)
    return offsets


class ExpFamilyMixture(AutoMixture, AutoExpFamily):
    """``AutoMixture(component="expfamily")``: see the module docstring.

    Args:
        model: the Pyro model.
        num_components: :math:`K`.
        component: ``"expfamily"``.
        families: optional ``{site: family}`` overrides, as for ``AutoExpFamily``.
        init_loc_fn: the centre the components start around.
        init_scale: the components' initial relative spread.
        init_spread: the scale of the offsets that start the components apart.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> def model():
        ...     pyro.sample("p", dist.Beta(2.0, 2.0))
        >>> guide = pb.AutoMixture(model, num_components=3, component="expfamily")
        >>> with torch.no_grad():
        ...     _ = guide()
        >>> guide.natural_params()["p"].shape  # (K, P)
        torch.Size([3, 2])
    """

    component = "expfamily"

    def __init__(
        self,
        model: Callable,
        num_components: int = 2,
        component: str = "expfamily",
        families: dict[str, str] | None = None,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        init_spread: float = 1.0,
    ):
        if component != "expfamily":
            raise ValueError(f"ExpFamilyMixture needs component='expfamily', got {component!r}")
        check_num_components(num_components)
        super().__init__(model, families=families, init_loc_fn=init_loc_fn, init_scale=init_scale)
        self.num_components = num_components
        self._init_spread = init_spread

    def _event_dim(self, family: ExpFamily, param: str, value: Tensor, site: dict) -> int:
        return value.dim()  # the leading component dimension is no plate

    def _initial(self, family: ExpFamily, site: dict) -> dict[str, Tensor]:
        value = site["value"].detach()
        transform = biject_to(site["fn"].support)
        unconstrained = transform.inv(value)
        offsets = _spread_offsets(self.num_components, unconstrained)
        shifted = unconstrained + self._init_spread * offsets
        per_component = [
            family.initial_params(transform(shifted[k]), self._init_scale)
            for k in range(self.num_components)
        ]
        return {p: torch.stack([c[p] for c in per_component]) for p in per_component[0]}

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        like = next(iter(self.params.parameters()))
        zeros = torch.zeros(self.num_components, dtype=like.dtype, device=like.device)
        self.logits = nn.Parameter(zeros)

    def _component(self, name: str, index: Tensor) -> dist.Distribution:
        """Site ``name``'s distribution in component(s) ``index`` (a tensor of indices)."""
        params = self._params(name)
        return self._families[name].distribution_class(**{p: v[index] for p, v in params.items()})

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if torch.is_grad_enabled():
            raise NotImplementedError(
                "AutoMixture(component='expfamily') has no reparameterized sampler for SVI; fit "
                "it with pb.BLR(model, guide, pb.MixtureRule())"
            )
        # One component per draw; the site is masked out of log q, which carries the mixture
        # density on the auxiliary site below instead.
        with poutine.mask(mask=False):
            index = pyro.sample(
                "_AutoMixture_component",
                dist.Categorical(logits=self.logits),
                infer={"is_auxiliary": True},
            )
        draws_shape = index.shape  # (S, 1, ..., 1) under a particle plate, () otherwise
        flat = index.reshape(-1)
        plates = self._create_plates(*args, **kwargs)
        result, log_q = {}, 0.0
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = site["value"].shape
            batch_ndim = len(shape) - site["fn"].event_dim
            value = self._component(name, flat).sample()  # (S, *shape)
            # log q_j(x_s) for every component j, summed over the site: (S, K)
            components = torch.arange(self.num_components, device=flat.device)
            per_component = self._component(name, components).log_prob(value.unsqueeze(1))
            log_q = log_q + per_component.reshape(*per_component.shape[:2], -1).sum(-1)
            pad = (1,) * max(0, len(draws_shape) - 1 - batch_ndim)
            value = value.reshape((*draws_shape[:1], *pad, *shape)) if draws_shape else value[0]
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(name, dist.Delta(value, event_dim=site["fn"].event_dim))
        log_mixture = torch.logsumexp(torch.log_softmax(self.logits, -1) + log_q, -1)
        pyro.sample(
            "_AutoMixture_log_density",
            dist.Delta(torch.zeros(draws_shape, dtype=log_mixture.dtype, device=log_mixture.device),
                       log_density=log_mixture.reshape(draws_shape)),
            infer={"is_auxiliary": True},
        )  # fmt: skip
        return result

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        """The mean of the heaviest component.

        Raises:
            RuntimeError: called with no arguments before any fit, on a model that needs
                some: fit the guide first, or pass the model's arguments.
        """
        setup_for(self, "median", self._setup_prototype, args, kwargs)
        index = self.logits.argmax()
        return {name: self._component(name, index).mean for name in self._families}

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples: int = 1000, **kwargs) -> dict[str, Tensor]:
        """Quantiles of each site under the mixture, from ``num_samples`` draws."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        index = dist.Categorical(logits=self.logits).sample((num_samples,))
        out = {}
        for name in self._families:
            draws = self._component(name, index).sample()
            q = torch.as_tensor(quantiles, dtype=draws.dtype, device=draws.device)
            out[name] = torch.quantile(draws, q, dim=0)
        return out
