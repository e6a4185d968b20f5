r"""A mean-field guide whose family matches each site's support.

Every Pyro autoguide is a Gaussian in unconstrained space. ``AutoExpFamily`` gives each latent site
the exponential family that lives on its support, in constrained space:

| support | family | parameters |
|---|---|---|
| real | Normal | loc, scale |
| positive | Gamma | concentration, rate |
| unit interval | Beta | concentration1, concentration0 |
| simplex | Dirichlet | concentration |
| circular (a von Mises prior) | von Mises | loc, concentration |
| binary (a latent Bernoulli) | Bernoulli | logits |
| one-hot (a latent OneHotCategorical) | OneHotCategorical | logits |

``families={"site": "lognormal"}`` (or ``"normal"``, ``"gamma"``, ...) overrides the choice for a
site; the family must live on the site's support. The families themselves -- their distributions,
parameters, constraints, supports and starting points -- are described in
:mod:`pyro_blr.families`; the guide holds each site's parameters as Pyro params (positive ones
log-parameterized) and exposes them in natural coordinates (:meth:`AutoExpFamily.natural_params`,
:meth:`AutoExpFamily.set_natural_params`) for the Bayesian learning rule. Samples are
reparameterized everywhere (implicit reparameterization for Gamma, Beta, Dirichlet and von
Mises), so the guide works with ``pyro.infer.SVI`` and every ELBO.

A latent ``Bernoulli`` site that is not marked for enumeration gets a Bernoulli factor: its draws
(``Predictive``, ``median()``, ``quantiles()``) are binary, and the BLR estimates its gradient on
the Gumbel-softmax relaxation (:class:`pyro_blr.blr.rules.ExpFamilyRule`'s ``temperature``;
BayesBiNN, Meng, Bachmann & Khan 2020), so the model must be defined for values in
:math:`[0, 1]` there (``z * w``, not ``w[z]``), which the BLR checks, naming the site. The guide's
prototype trace holds such a site as a
:class:`~pyro_blr.families.relaxation.BinarySite` at its prior probability.

A latent ``OneHotCategorical`` site is kept the same way, with a categorical factor
(:class:`pyro_blr.families.OneHotCategorical`): one-hot draws, ``median()`` the mode's one-hot
vector, ``quantiles()`` each indicator's exact marginal quantiles; the BLR relaxes it to the
simplex (Gumbel-softmax; Jang et al. 2017, Maddison et al. 2017), so the model must use the value
as a vector (``z @ locs``, not ``locs[z.argmax(-1)]``). A ``Categorical`` site, whose value is an
integer index with no relaxed counterpart, is refused naming the fix: write it
``OneHotCategorical`` (``pyro.sample("z", dist.OneHotCategorical(probs))`` and ``z @ locs``
where ``locs[k]`` was), or enumerate it.

References:
    | Implicit Reparameterization Gradients (Figurnov, Mohamed & Mnih, NeurIPS 2018)
    | https://arxiv.org/abs/1805.08498
    | Training Binary Neural Networks using the Bayesian Learning Rule (Meng, Bachmann & Khan,
      ICML 2020) https://arxiv.org/abs/2002.10778
    | Categorical Reparameterization with Gumbel-Softmax (Jang, Gu & Poole, ICLR 2017)
      https://arxiv.org/abs/1611.01144
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from operator import attrgetter

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoGuide, init_to_median
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import transform_to

from pyro_blr.core import check_prototype, is_subsampled, write_params
from pyro_blr.families import FAMILIES, ExpFamily, family_for_site
from pyro_blr.guides.mixture import AutoMixture
from pyro_blr.guides.relaxed_sites import keep_relaxed, one_hot_mode_first
from pyro_blr.guides.unfitted import setup_for

__all__ = ["AutoExpFamily"]


class AutoExpFamily(AutoGuide):
    r"""Mean-field guide with a support-matched exponential family for each latent site.

    See the module docstring for the families. Each site is a product over its plate elements
    (like ``AutoNormal``); ``median()`` returns each family's posterior mean, except for
    Normal sites (their median); ``quantiles()`` are estimated from draws.

    Args:
        model: the Pyro model.
        families: optional ``{site name: family}`` overrides.
        init_loc_fn: where each site's distribution starts (its mean); a value outside the
            family's sane range (a median that underflowed) is clamped into it, see
            :meth:`pyro_blr.families.ExpFamily.initial_params`.
        init_scale: the starting relative spread (the coefficient of variation for Gamma, the
            scale for Normal, :math:`1/\sqrt{\alpha_0}` for Beta and Dirichlet).

    Raises:
        ValueError: an unknown family name; (at the first call) a discrete site other than a
            latent Bernoulli or OneHotCategorical (a ``Categorical`` index: the message says
            to write it ``OneHotCategorical`` or enumerate it), an unsupported site,
            a family that does not fit its site's support, an override naming no latent site,
            or a latent site local to a subsampled plate.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> def model(k):
        ...     p = pyro.sample("p", dist.Beta(1.0, 1.0))
        ...     rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        ...     pyro.sample("k", dist.Binomial(10, p), obs=k)
        ...     pyro.sample("n", dist.Poisson(rate), obs=k)
        >>> guide = pb.AutoExpFamily(model)
        >>> sorted(type(d).__name__ for d in guide.distributions(torch.tensor(3.0)).values())
        ['Beta', 'Gamma']
        >>> {name: eta.shape for name, eta in guide.natural_params().items()}
        {'p': torch.Size([2]), 'rate': torch.Size([2])}
    """

    def __init__(
        self,
        model: Callable,
        families: dict[str, str] | None = None,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
    ):
        for name, family in (families or {}).items():
            if family not in FAMILIES:
                raise ValueError(
                    f"unknown family {family!r} for site '{name}'; choose one of {sorted(FAMILIES)}"
                )
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        super().__init__(InitMessenger(one_hot_mode_first(init_loc_fn))(model))
        self._overrides = dict(families or {})
        self._init_scale = init_scale

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        check_prototype(self.model, self.prototype_trace, args, kwargs)
        self._families: dict[str, ExpFamily] = {}
        self.params = PyroModule()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if site["fn"].support.is_discrete:
                keep_relaxed(type(self).__name__, name, site, isinstance(self, AutoMixture))
            for frame in site["cond_indep_stack"]:
                if is_subsampled(frame):
                    raise ValueError(
                        f"latent site '{name}' is local to the subsampled plate '{frame.name}'"
                    )
            family = family_for_site(site, self._overrides.get(name))
            module = PyroModule()
            for param, value in self._initial(family, site).items():
                constraint = family.param_constraints[param]
                event_dim = self._event_dim(family, param, value, site)
                setattr(module, param, PyroParam(value.detach().clone(), constraint, event_dim))
            deep_setattr(self.params, name, module)  # PyroModule sites are dotted
            self._families[name] = family
        unknown = sorted(set(self._overrides) - set(self._families))
        if unknown:
            raise ValueError(
                f"families={self._overrides} names {unknown}, which are not latent sites of the "
                f"model (its latent sites: {list(self._families)})"
            )

    def _event_dim(self, family: ExpFamily, param: str, value: Tensor, site: dict) -> int:
        """How many rightmost dimensions of a parameter are not plate dimensions: the family's
        own (a Dirichlet's concentration) and the site's event dimensions (``w`` drawn from
        ``Normal(...).to_event(1)`` holds one location per coordinate, all of one draw), so that
        the parameter is not taken for a batch under an outer plate of particles."""
        return max(family.event_dim(param), value.dim() - len(site["fn"].batch_shape))

    def _initial(self, family: ExpFamily, site: dict) -> dict[str, Tensor]:
        """Initial parameters of a site's distribution (centred on its initial value)."""
        return family.initial_params(site["value"].detach(), self._init_scale)

    def _check_setup(self, method: str) -> None:
        if self.prototype_trace is None:
            raise RuntimeError(
                f"{type(self).__name__}.{method}() needs the guide set up: call the guide once "
                "(or pyro_blr.core.initialize_guide) with the model's arguments first"
            )

    def _params(self, name: str) -> dict[str, Tensor]:
        module = attrgetter(name)(self.params)
        return {p: getattr(module, p) for p in self._families[name].param_names}

    def _distribution(self, name: str) -> dist.Distribution:
        return self._families[name].distribution_class(**self._params(name))

    def site_families(self) -> dict[str, ExpFamily]:
        """Each latent site's family, in prototype-trace order (the guide must be set up)."""
        self._check_setup("site_families")
        return dict(self._families)

    @torch.no_grad()
    def natural_params(self) -> dict[str, Tensor]:
        r"""Each site's natural parameters :math:`\lambda`, detached: shape
        ``(*site batch, P)`` (a Dirichlet's ``P`` is its categories)."""
        self._check_setup("natural_params")
        return {
            name: family.natural_params(*self._params(name).values()).detach()
            for name, family in self._families.items()
        }

    def set_natural_params(self, etas: dict[str, Tensor]) -> None:
        """Write every site's parameters from natural parameters, in place, through their
        constraints.

        Every site is checked first -- all sites present, the shape of :meth:`natural_params`,
        finite, in the family's domain, a finite log normalizer, and parameters whose
        unconstrained values are finite -- so a refused write leaves the guide as it was.

        Raises:
            ValueError: naming the first site that fails a check.
        """
        self._check_setup("set_natural_params")
        who = f"{type(self).__name__}.set_natural_params"
        if set(etas) != set(self._families):
            raise ValueError(f"{who} needs every site {list(self._families)}, got {list(etas)}")
        current = self.natural_params()
        writes = {}
        for name, family in self._families.items():
            eta = etas[name]
            if not isinstance(eta, Tensor) or eta.shape != current[name].shape:
                shape = getattr(eta, "shape", type(eta).__name__)
                raise ValueError(
                    f"{who}: site '{name}' needs natural parameters of shape "
                    f"{tuple(current[name].shape)}, got {shape}"
                )
            if not torch.isfinite(eta).all():
                raise ValueError(f"{who}: the natural parameters of site '{name}' are not finite")
            if not family.in_domain(eta).all():
                raise ValueError(
                    f"{who}: the natural parameters of site '{name}' are outside the domain of "
                    f"the {family.name} family"
                )
            if not torch.isfinite(family.log_normalizer(eta)).all():
                raise ValueError(
                    f"{who}: the {family.name} distribution of site '{name}' is not "
                    "representable (its log normalizer overflows)"
                )
            params = {p: v.detach() for p, v in family.params(eta).items()}
            for param, value in params.items():
                unconstrained = transform_to(family.param_constraints[param]).inv(value)
                if not torch.isfinite(unconstrained).all():
                    raise ValueError(
                        f"{who}: site '{name}': the {family.name} parameter '{param}' is not "
                        "representable (it overflows or underflows)"
                    )
            writes[name] = params
        write_params(
            [
                (attrgetter(name)(self.params), param, value)
                for name, params in writes.items()
                for param, value in params.items()
            ]
        )

    def distributions(self, *args, **kwargs) -> dict[str, dist.Distribution]:
        """Each site's current distribution (constrained space), initializing if needed."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return {name: self._distribution(name) for name in self._families}

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                d = self._distribution(name)
                event_dim = site["fn"].event_dim - len(d.event_shape)
                result[name] = pyro.sample(name, d.to_event(event_dim) if event_dim else d)
        return result

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        r"""Normal sites: the median; Bernoulli sites: the median :math:`\mathbb 1[p > \tfrac12]`
        (binary); OneHotCategorical sites: the mode's one-hot vector; other families: the
        posterior mean.

        Raises:
            RuntimeError: called with no arguments before any fit, on a model that needs
                some: fit the guide first, or pass the model's arguments.
        """
        setup_for(self, "median", self._setup_prototype, args, kwargs)
        out = {}
        for name, d in self.distributions(*args, **kwargs).items():
            family = self._families[name]
            out[name] = family.median(family.natural_from(d)) if family.discrete else d.mean
        return out

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples: int = 1000, **kwargs) -> dict[str, Tensor]:
        """Quantiles of each site, estimated from ``num_samples`` draws (exact, and binary, for
        Bernoulli sites and for each indicator of a OneHotCategorical site)."""
        out = {}
        for name, d in self.distributions(*args, **kwargs).items():
            family = self._families[name]
            if family.discrete:
                eta = family.natural_from(d)
                q = torch.as_tensor(quantiles, dtype=eta.dtype, device=eta.device)
                out[name] = family.quantile(eta, q)
                continue
            draws = d.sample((num_samples,))
            q = torch.as_tensor(quantiles, dtype=draws.dtype, device=draws.device)
            out[name] = torch.quantile(draws, q, dim=0)
        return out
