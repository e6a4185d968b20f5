r"""Posterior draws of a model's enumerated discrete sites, given draws of its continuous ones.

The entry points sum a site marked ``infer={"enumerate": "parallel"}`` out of the log joint (see
:mod:`pyro_blr.core.enumeration`); users still want its posterior. Given a continuous draw
:math:`\theta_s` from the guide, the enumerated sites are drawn from their exact conditional

.. math::
    z_s \sim p(z \mid \mathcal D, \theta_s) \propto p(\mathcal D, \theta_s, z),

by Pyro's ``infer_discrete`` (forward filtering, backward sampling over the same tensor
contraction ``TraceEnum_ELBO`` uses). The pairs :math:`(\theta_s, z_s)` are then draws from
:math:`q(\theta)\, p(z \mid \mathcal D, \theta)`: the guide's posterior, completed exactly.
``temperature=0`` gives each :math:`\theta_s`'s most probable configuration (Viterbi-like MAP)
instead.

References:
    | Tensor Variable Elimination for Plated Factor Graphs (Obermeyer et al., ICML 2019)
    | https://arxiv.org/abs/1902.03210
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pyro.poutine as poutine
import torch
from pyro.infer import infer_discrete
from torch import Tensor

from pyro_blr.core.enumeration import model_enumerated_sites

__all__ = ["discrete_draws"]


def discrete_draws(
    model: Callable,
    args: tuple,
    kwargs: dict,
    max_plate_nesting: int,
    particles: Sequence[Mapping[str, Tensor]],
    temperature: int = 1,
    return_sites: Sequence[str] = (),
) -> dict[str, Tensor]:
    r"""One draw of every enumerated site of ``model`` per continuous draw in ``particles``.

    Args:
        model: the Pyro model, unchanged (its discrete sites marked for parallel enumeration).
        args: its positional arguments.
        kwargs: its keyword arguments.
        max_plate_nesting: the number of plate dimensions the model uses.
        particles: the continuous draws, one mapping ``site -> constrained value`` per draw,
            in the shapes the model samples (as :func:`pyro_blr.core.enumeration.
            enumerated_log_joint` takes them).
        temperature: 1 draws :math:`z_s \sim p(z \mid \mathcal D, \theta_s)`; 0 takes its
            mode.
        return_sites: other sites (e.g. ``pyro.deterministic`` ones) whose values to return
            from the same run, computed with the drawn :math:`z_s`.

    Returns:
        ``{site: values}`` with values of shape ``(S, *site_shape)``, in the order the model
        samples the sites, then ``return_sites``; without enumerated sites only these.

    Raises:
        ValueError: ``particles`` is empty, ``temperature`` is not 0 or 1, or a site that
            cannot be summed out (see :func:`pyro_blr.core.enumeration.enumerated_sites`).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        ...     k = pyro.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...     pyro.sample("x", dist.Normal(10.0 * k, 0.1), obs=torch.tensor(10.0))
        >>> draws = discrete_draws(model, (), {}, 0, [{"loc": torch.tensor(0.0)}] * 3)
        >>> draws["k"]
        tensor([1., 1., 1.])
    """
    if not particles:
        raise ValueError("particles is empty: give at least one continuous draw")
    if temperature not in (0, 1):
        raise ValueError(f"temperature must be 0 (the mode) or 1 (a draw), got {temperature!r}")
    names = (*model_enumerated_sites(model, args, kwargs, particles[0]), *return_sites)
    if not names:
        return {}
    found: dict[str, list[Tensor]] = {name: [] for name in names}
    for values in particles:
        conditioned = poutine.condition(model, data=dict(values))
        sampler = infer_discrete(
            conditioned, first_available_dim=-max_plate_nesting - 1, temperature=temperature
        )
        with poutine.block():
            trace = poutine.trace(sampler).get_trace(*args, **kwargs)
        for name in names:
            found[name].append(trace.nodes[name]["value"].detach())
    return {name: torch.stack(values) for name, values in found.items()}
