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

``families={"site": "lognormal"}`` (or ``"normal"``, ``"gamma"``, ...) overrides the choice for a
site. Samples are reparameterized everywhere (implicit reparameterization for Gamma, Beta,
Dirichlet and von Mises), so the guide works with ``pyro.infer.SVI`` and every ELBO.

References:
    | Implicit Reparameterization Gradients (Figurnov, Mohamed & Mnih, NeurIPS 2018)
    | https://arxiv.org/abs/1805.08498
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoGuide, init_to_median
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints as torch_constraints

from pyro_blr.distributions import VonMises

__all__ = ["AutoExpFamily"]

POSITIVE = constraints.positive  # log-parameterized: Adam moves concentrations by ratios

# family -> (distribution class, [(parameter, constraint)])
_PARAMETERS = {
    "normal": (dist.Normal, [("loc", constraints.real), ("scale", POSITIVE)]),
    "lognormal": (dist.LogNormal, [("loc", constraints.real), ("scale", POSITIVE)]),
    "gamma": (dist.Gamma, [("concentration", POSITIVE), ("rate", POSITIVE)]),
    "beta": (dist.Beta, [("concentration1", POSITIVE), ("concentration0", POSITIVE)]),
    "dirichlet": (dist.Dirichlet, [("concentration", POSITIVE)]),
    "von_mises": (VonMises, [("loc", constraints.real), ("concentration", POSITIVE)]),
}


def _family_for(site: dict) -> str:
    fn = site["fn"]
    base = fn.base_dist if isinstance(fn, dist.Independent) else fn
    if isinstance(base, dist.VonMises):
        return "von_mises"
    support = fn.support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is constraints.real:
        return "normal"
    if isinstance(support, torch_constraints._GreaterThan | torch_constraints._GreaterThanEq):
        if support.lower_bound == 0:
            return "gamma"
    if isinstance(support, torch_constraints._Interval | torch_constraints._HalfOpenInterval):
        if (support.lower_bound, support.upper_bound) == (0, 1):
            return "beta"
    if isinstance(support, torch_constraints._Simplex):
        return "dirichlet"
    raise ValueError(
        f"AutoExpFamily has no family for site '{site['name']}' with support {support}; "
        "choose one with families={'" + site["name"] + "': 'normal'|'lognormal'|'gamma'|"
        "'beta'|'dirichlet'|'von_mises'}, enumerate a discrete site, or use AutoNormal"
    )


def _initial_params(family: str, value: Tensor, init_scale: float) -> dict[str, Tensor]:
    """Parameters whose distribution is centred on ``value`` with relative spread init_scale."""
    concentration = torch.full_like(value, 1 / init_scale**2)
    if family == "normal":
        return {"loc": value, "scale": torch.full_like(value, init_scale)}
    if family == "lognormal":
        return {"loc": value.log(), "scale": torch.full_like(value, init_scale)}
    if family == "gamma":  # mean value, coefficient of variation init_scale
        return {"concentration": concentration, "rate": concentration / value}
    if family == "beta":
        return {
            "concentration1": value * concentration,
            "concentration0": (1 - value) * concentration,
        }
    if family == "dirichlet":
        return {"concentration": value * concentration}
    return {"loc": value, "concentration": concentration}


class AutoExpFamily(AutoGuide):
    r"""Mean-field guide with a support-matched exponential family for each latent site.

    See the module docstring for the families. Each site is a product over its plate elements
    (like ``AutoNormal``); ``median()`` returns each family's posterior mean, except for
    Normal sites (their median); ``quantiles()`` are estimated from draws.

    Args:
        model: the Pyro model.
        families: optional ``{site name: family}`` overrides.
        init_loc_fn: where each site's distribution starts (its mean).
        init_scale: the starting relative spread (the coefficient of variation for Gamma, the
            scale for Normal, :math:`1/\sqrt{\alpha_0}` for Beta and Dirichlet).

    Raises:
        ValueError: (at the first call) a discrete or unsupported site, an unknown family name,
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
    """

    def __init__(
        self,
        model: Callable,
        families: dict[str, str] | None = None,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
    ):
        for name, family in (families or {}).items():
            if family not in _PARAMETERS:
                raise ValueError(
                    f"unknown family {family!r} for site '{name}'; "
                    f"choose one of {sorted(_PARAMETERS)}"
                )
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        super().__init__(InitMessenger(init_loc_fn)(model))
        self._overrides = dict(families or {})
        self._init_scale = init_scale

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        self.family = {}
        self.params = PyroModule()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"latent site '{name}' is discrete; AutoExpFamily needs continuous sites: "
                    "enumerate it out (infer={'enumerate': 'parallel'}) or observe it"
                )
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.full_size not in (None, frame.size):
                    raise ValueError(
                        f"latent site '{name}' is local to the subsampled plate '{frame.name}'"
                    )
            family = self._overrides.get(name) or _family_for(site)
            self.family[name] = family
            module = PyroModule()
            initial = self._initial(family, site)
            for param, constraint in _PARAMETERS[family][1]:
                event_dim = self._param_event_dim(family, initial[param])
                setattr(module, param, PyroParam(initial[param].clone(), constraint, event_dim))
            setattr(self.params, name, module)

    def _param_event_dim(self, family: str, value: Tensor) -> int:
        """How many rightmost dimensions of a parameter are not plate dimensions."""
        return 1 if family == "dirichlet" else 0

    def _initial(self, family: str, site: dict) -> dict[str, Tensor]:
        """Initial parameters of a site's distribution (centred on its initial value)."""
        return _initial_params(family, site["value"].detach(), self._init_scale)

    def _distribution(self, name: str) -> dist.Distribution:
        family_class, parameters = _PARAMETERS[self.family[name]]
        module = getattr(self.params, name)
        return family_class(*(getattr(module, p) for p, _ in parameters))

    def distributions(self, *args, **kwargs) -> dict[str, dist.Distribution]:
        """Each site's current distribution (constrained space), initializing if needed."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return {name: self._distribution(name) for name in self.family}

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
        """Normal sites: the median; other families: the posterior mean."""
        return {name: d.mean for name, d in self.distributions(*args, **kwargs).items()}

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples: int = 1000, **kwargs) -> dict[str, Tensor]:
        """Quantiles of each site, estimated from ``num_samples`` draws."""
        out = {}
        for name, d in self.distributions(*args, **kwargs).items():
            draws = d.sample((num_samples,))
            q = torch.as_tensor(quantiles, dtype=draws.dtype, device=draws.device)
            out[name] = torch.quantile(draws, q, dim=0)
        return out
