r"""The log joint of a model with its enumerated discrete sites summed out exactly.

A Pyro model may mark a discrete latent site ``infer={"enumerate": "parallel"}`` (or be wrapped
in ``pyro.infer.config_enumerate``) and leave it out of the guide. ``TraceEnum_ELBO`` then never
samples it: it sums it out. Given values :math:`\theta` of the continuous latents, the density
every entry point must weigh is the marginal

.. math::
    \log p(\mathcal D, \theta) = \log \sum_{z} p(\mathcal D, \theta, z),

computed here as Pyro computes it: the model runs once under ``poutine.enum`` (each enumerated
site gets a batch dimension left of the model's ``max_plate_nesting`` plate dimensions, and
``pyro.markov`` recycles them along a chain), and the factors that depend on an enumerated site
are contracted by ``pyro.ops.contract.contract_to_tensor`` -- a sum-product over the enumerated
dimensions, a product over plates (tensor variable elimination, Obermeyer et al. 2019). As in
``TraceEnum_ELBO``, a factor's mask is applied inside the sum (an enumerated site's own
distribution is never masked: it sums to one) and the minibatch scale :math:`N/B` outside it,
so every factor that touches an enumerated site must share one scale.
The result is a differentiable function of the continuous values: gradients and Hessians follow
by autograd through the log-sum-exp.

References:
    | Tensor Variable Elimination for Plated Factor Graphs (Obermeyer et al., ICML 2019)
    | https://arxiv.org/abs/1902.03210
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.trace_struct import Trace
from pyro.util import check_site_shape
from torch import Tensor

from pyro_blr.core.traces import sample_sites, trace_without_rng

__all__ = [
    "enumerated_log_joint",
    "enumerated_log_joint_plate",
    "enumerated_log_joints",
    "enumerated_sites",
    "enumerated_trace",
    "model_enumerated_sites",
    "trace_log_joint",
]


def _enumerated(site: dict) -> bool:
    return site["infer"].get("_enumerate_dim") is not None


def enumerated_sites(trace: Trace, given: Container[str] = ()) -> tuple[str, ...]:
    """The latent sites of ``trace`` marked for parallel enumeration and not ``given`` (names,
    or a mapping keyed by name).

    Raises:
        ValueError: a site marked ``"sequential"`` (this package sums sites out in one tensor
            contraction), or one that asks for Monte Carlo enumeration (``num_samples``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     pyro.sample("k", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
        >>> enumerated_sites(pyro.poutine.trace(model).get_trace())
        ('k',)
    """
    names = []
    for name, site in sample_sites(trace, deterministic=False):
        how = site["infer"].get("enumerate")
        if site["is_observed"] or name in given or not how:
            continue
        if how != "parallel":
            # Pyro's TraceEnum_ELBO refuses it too ("model-side sequential enumeration is not
            # implemented"); a sequential site in a plate would give every element one value.
            raise ValueError(
                f"latent site '{name}' is marked infer={{'enumerate': {how!r}}}: a model site is "
                "summed out only by parallel enumeration (as in Pyro's TraceEnum_ELBO); mark it "
                "infer={'enumerate': 'parallel'} (or use pyro.infer.config_enumerate(model, "
                "'parallel')), index tensors with its value through pyro.ops.indexing.Vindex, "
                "and where the model branches in Python on its value, write the branches as "
                "tensor operations (torch.where) first"
            )
        if site["infer"].get("num_samples") is not None:
            raise ValueError(
                f"latent site '{name}' asks for Monte Carlo enumeration (num_samples="
                f"{site['infer']['num_samples']}), which is not an exact sum: drop num_samples "
                "to enumerate its whole support"
            )
        names.append(name)
    return tuple(names)


def model_enumerated_sites(
    model: Callable, args: tuple, kwargs: dict, values: Mapping[str, Tensor]
) -> tuple[str, ...]:
    """The sites of ``model`` left to parallel enumeration when the latents in ``values`` are
    given: one prior run conditioned on ``values`` that leaves the random generators where they
    were (the draws of the run it precedes do not change).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        ...     pyro.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        >>> model_enumerated_sites(model, (), {}, {"loc": torch.tensor(0.0)})
        ('k',)
    """
    like = next((v for v in values.values() if torch.is_tensor(v)), torch.zeros(()))
    conditioned = poutine.condition(model, data=dict(values))
    return enumerated_sites(trace_without_rng(conditioned, args, kwargs, like), values)


def enumerated_trace(
    model: Callable,
    args: tuple,
    kwargs: dict,
    max_plate_nesting: int,
    values: Mapping[str, Tensor],
    particles: tuple[str, int] | None = None,
) -> Trace:
    """One run of ``model`` conditioned on ``values`` with its enumerated sites enumerated in
    parallel left of ``max_plate_nesting`` plate dimensions, its log densities computed and
    packed (as ``TraceEnum_ELBO`` packs them), and every site's shape checked.

    ``particles``: ``(name, size)`` of a plate put around the model at dimension
    ``-max_plate_nesting - 1`` (inside the enumeration, as ``TraceEnum_ELBO`` places its
    vectorized particles), the enumerated sites left of it.

    Raises:
        ValueError: naming a latent site that is neither given nor enumerated (an unmarked
            discrete site, or a continuous site the values miss), a site marked for sequential
            or Monte Carlo enumeration, or a site whose shape does not fit
            ``max_plate_nesting``. An error the model raises at ``values`` without enumeration
            too (a parameter out of its support) propagates as it is.
    """
    conditioned = poutine.condition(model, data=dict(values))
    nesting = max_plate_nesting
    if particles is not None:
        conditioned = _in_plate(conditioned, *particles, dim=-nesting - 1)
        nesting += 1
    enumerated = poutine.enum(conditioned, first_available_dim=-nesting - 1)
    try:
        trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
    except (ValueError, RuntimeError, IndexError) as error:
        if _fails_without_enumeration(conditioned, args, kwargs, values):
            raise  # the model's own error at these values (e.g. a scale of 0), not the dims'
        raise ValueError(
            f"the model raised when run with its enumerated sites in the batch dimensions left "
            f"of max_plate_nesting={max_plate_nesting} plate dimensions ({error}): give "
            "max_plate_nesting= the number of plate dimensions the model really uses, and "
            "index with pyro.ops.indexing.Vindex where an enumerated value indexes a tensor"
        ) from error
    enumerated_sites(trace, values)  # refuses sequential and Monte Carlo enumeration
    for name, site in sample_sites(trace, deterministic=False):
        if site["is_observed"] or _enumerated(site):
            continue
        discrete = bool(getattr(site["fn"], "has_enumerate_support", False))
        raise ValueError(
            f"latent site '{name}' ({type(site['fn']).__name__}) was not given a value and is "
            "not enumerated: "
            + (
                "mark it infer={'enumerate': 'parallel'} (or wrap the model in "
                "pyro.infer.config_enumerate) to sum it out, or give the guide that site"
                if discrete
                else "give the guide that site (it samples every continuous latent)"
            )
        )
    trace.compute_log_prob()
    for name, site in sample_sites(trace, deterministic=False):
        try:
            check_site_shape(site, nesting)
        except ValueError as error:
            raise ValueError(
                f"site '{name}' does not fit max_plate_nesting={max_plate_nesting} with its "
                f"enumerated sites left of the plates: {error}; give the model's true plate "
                "nesting (max_plate_nesting=)"
            ) from error
    trace.pack_tensors()
    return trace


def _fails_without_enumeration(
    conditioned: Callable, args: tuple, kwargs: dict, values: Mapping[str, Tensor]
) -> bool:
    """Whether the model raises at ``values`` run plainly, its enumerated sites drawn from their
    priors (the random generators left where they were): then an error under enumeration is
    the model's own, and no advice on the enumeration's dimensions fits it."""
    like = next((v for v in values.values() if torch.is_tensor(v)), torch.zeros(()))
    try:
        trace_without_rng(conditioned, args, kwargs, like)
    except Exception:
        return True
    return False


def _in_plate(fn: Callable, name: str, size: int, dim: int) -> Callable:
    def in_plate(*args, **kwargs):
        with pyro.plate(name, size, dim=dim):
            return fn(*args, **kwargs)

    return in_plate


def _common_scale(scales: list[tuple[str, object]]) -> float:
    """The one minibatch scale shared by every factor touching an enumerated site."""
    found = {}
    for name, scale in scales:
        if torch.is_tensor(scale) and scale.dim():
            raise ValueError(
                f"site '{name}' depends on an enumerated site and has a tensor poutine.scale: "
                "enumeration sums out only under a scalar scale"
            )
        found.setdefault(float(scale), name)
    if len(found) > 1:
        (a, sa), (b, sb) = list(found.items())[:2]
        raise ValueError(
            f"sites '{sa}' (scale {a:g}) and '{sb}' (scale {b:g}) both depend on an enumerated "
            "site but are scaled differently (a subsampled plate, or poutine.scale): the sum "
            "over the enumerated values has no unbiased minibatch estimate. Use the full data, "
            "or put the enumerated site inside the subsampled plate with the data it explains"
        )
    return next(iter(found), 1.0)


def _enum_dims(trace: Trace) -> set[str]:
    """The packed symbols of the enumerated dimensions of a packed trace."""
    dims: set[str] = set()
    for _, site in sample_sites(trace, deterministic=False):
        if _enumerated(site) and not site["is_observed"]:
            dims.update(site["packed"]["log_prob"]._pyro_dims)
    return dims - set(trace.plate_to_symbol.values())


def _inside(site: dict) -> Tensor:
    """A factor as it enters the sum over enumerated values: unscaled (the scale is applied
    outside); masked, except an enumerated site's own distribution, which stays normalized so
    that a masked-out element sums to one (as in ``TraceEnum_ELBO``: the padding steps of
    Pyro's HMM example add nothing)."""
    if _enumerated(site) and not site["is_observed"]:
        return site["packed"]["unscaled_log_prob"]
    return packed.scale_and_mask(site["packed"]["unscaled_log_prob"], mask=site["packed"]["mask"])


def _sum_except(term: Tensor, symbol: str | None) -> Tensor:
    """A packed term summed over every dimension but ``symbol``'s (a 0-d tensor without it)."""
    dims = getattr(term, "_pyro_dims", "")
    if symbol is None or symbol not in dims:
        return term.sum()
    keep = dims.index(symbol)
    return term.sum([d for d in range(term.dim()) if d != keep]) if term.dim() > 1 else term


def trace_log_joint(trace: Trace, particle_plate: str | None = None) -> Tensor:
    """The log joint of a packed :func:`enumerated_trace`, enumerated sites summed out.

    Factors that touch no enumerated dimension are summed as they are (scaled, masked); the
    others are contracted over the enumerated dimensions and the plates with
    ``contract_to_tensor``, their mask inside and their common scale outside, as in
    ``TraceEnum_ELBO``. With ``particle_plate`` (the name of a plate around the whole model
    run), that plate is kept: one value per particle, shape ``(K,)`` (or ``(1,)`` when no term
    depends on it); otherwise a 0-d tensor.
    """
    ordinal = {
        name: frozenset(
            trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized
        )
        for name, site in sample_sites(trace, deterministic=False)
    }
    keep = trace.plate_to_symbol.get(particle_plate) if particle_plate else None
    enum_dims = _enum_dims(trace)
    total = 0.0
    factors: OrderedDict = OrderedDict()
    scales = []
    for name, site in sample_sites(trace, deterministic=False):
        log_prob = site["packed"]["log_prob"]
        if enum_dims.isdisjoint(log_prob._pyro_dims):
            total = total + _sum_except(log_prob, keep)
            continue
        factors.setdefault(ordinal[name], []).append(_inside(site))
        scales.append((name, site["scale"]))
    if factors:
        scale = _common_scale(scales)
        target = frozenset([keep]) if keep is not None else None
        marginal = contract_to_tensor(factors, enum_dims, target_ordinal=target)
        total = total + scale * _sum_except(marginal, keep)
    total = torch.as_tensor(total)
    return total.reshape(-1) if keep is not None else total


def enumerated_log_joint(
    model: Callable,
    args: tuple,
    kwargs: dict,
    max_plate_nesting: int,
    values: Mapping[str, Tensor],
) -> Tensor:
    r"""The log joint :math:`\log \sum_z p(\mathcal D, \theta, z)` of ``model`` at the
    continuous values ``values``, every site marked ``infer={"enumerate": "parallel"}`` summed
    out exactly as ``TraceEnum_ELBO`` sums it (plates as products, ``pyro.markov`` chains as
    sum-products), minibatch terms scaled as Pyro scales them.

    Differentiable in ``values`` (and in the model's parameters): gradients and Hessians follow
    by autograd. The log-Jacobian of a change to unconstrained coordinates is not included.

    Args:
        model: the Pyro model, unchanged.
        args: its positional arguments.
        kwargs: its keyword arguments.
        max_plate_nesting: the number of plate dimensions the model uses; enumerated sites get
            the dimensions left of them.
        values: the constrained value of every latent site that is not enumerated, for one
            particle (the shapes the model samples).

    Returns:
        A 0-d tensor.

    Raises:
        ValueError: naming the site: a latent site neither given nor marked for parallel
            enumeration, sequential or Monte Carlo enumeration, a shape that does not fit
            ``max_plate_nesting``, or factors of an enumerated site scaled differently.

    References:
        | Tensor Variable Elimination for Plated Factor Graphs (Obermeyer et al., ICML 2019)
        | https://arxiv.org/abs/1902.03210

    Example:
        >>> import math, pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        ...     k = pyro.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...     pyro.sample("x", dist.Normal(loc * k, 1.0), obs=torch.tensor(0.0))
        >>> value = enumerated_log_joint(model, (), {}, 0, {"loc": torch.tensor(0.0)})
        >>> math.isclose(float(value), 2 * dist.Normal(0.0, 1.0).log_prob(torch.tensor(0.0)))
        True
    """
    trace = enumerated_trace(model, args, kwargs, max_plate_nesting, values)
    return trace_log_joint(trace)


def enumerated_log_joint_plate(
    model: Callable,
    args: tuple,
    kwargs: dict,
    max_plate_nesting: int,
    values: Mapping[str, Tensor],
    num_particles: int,
    particle_plate: str,
) -> Tensor:
    """:func:`enumerated_log_joint` of ``num_particles`` particles in one model run inside the
    plate ``particle_plate`` at dimension ``-max_plate_nesting - 1`` (the enumerated sites left
    of it), shape ``(num_particles,)``. ``values`` hold every particle, particles first and
    padded to ``max_plate_nesting`` (as a guide run inside that plate draws them). The model
    must broadcast over the particles (``Vindex`` indexing); a caller that cannot tell compares
    a few particles with :func:`enumerated_log_joint`.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        ...     k = pyro.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...     pyro.sample("x", dist.Normal(loc * k, 1.0), obs=torch.tensor(0.0))
        >>> locs = torch.tensor([0.0, 1.0])
        >>> plate = enumerated_log_joint_plate(model, (), {}, 0, {"loc": locs}, 2, "particles")
        >>> loop = [enumerated_log_joint(model, (), {}, 0, {"loc": v}) for v in locs]
        >>> torch.allclose(plate, torch.stack(loop))
        True
    """
    particles = (particle_plate, num_particles)
    trace = enumerated_trace(model, args, kwargs, max_plate_nesting, values, particles)
    return trace_log_joint(trace, particle_plate).expand(num_particles)


def enumerated_log_joints(
    model: Callable,
    args: tuple,
    kwargs: dict,
    max_plate_nesting: int,
    particles: list[Mapping[str, Tensor]],
) -> Tensor:
    """:func:`enumerated_log_joint` of each particle's values, one model run per particle:
    shape ``(len(particles),)``. Models written ``X @ w`` or with ``nn.Linear`` need no
    broadcasting over particles.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     pyro.sample("loc", dist.Normal(0.0, 1.0))
        >>> enumerated_log_joints(model, (), {}, 0, [{"loc": torch.tensor(0.0)}] * 3).shape
        torch.Size([3])
    """
    return torch.stack(
        [
            enumerated_log_joint(model, args, kwargs, max_plate_nesting, values)
            for values in particles
        ]
    )
