r"""Per-site terms of a log joint whose enumerated sites are summed out: each datum's likelihood
(for ``az.loo``), and which site makes the sum not finite.

Both read a packed trace from :func:`pyro_blr.core.enumeration.enumerated_trace`. A datum's
likelihood with its local enumerated sites summed out is a contraction of the factors connected
to it, kept in the datum's plates (``contract_to_tensor`` with a target ordinal, as Pyro's
``TraceEnum_ELBO.compute_marginals`` does for the enumerated sites themselves).

References:
    | Tensor Variable Elimination for Plated Factor Graphs (Obermeyer et al., ICML 2019)
    | https://arxiv.org/abs/1902.03210
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core.enumeration import (
    _enum_dims,
    _enumerated,
    _inside,
    trace_log_joint,
)
from pyro_blr.core.traces import sample_sites

__all__ = ["nonfinite_reason", "pointwise_log_likelihood"]


def nonfinite_reason(trace: Trace) -> str | None:
    r"""Why :func:`~pyro_blr.core.enumeration.trace_log_joint` of a packed
    :func:`~pyro_blr.core.enumeration.enumerated_trace` is not finite, naming
    the site, or ``None`` when it is finite. A site that touches no enumerated dimension is
    blamed first; a :math:`-\infty` in one enumerated value is no fault (that value is
    impossible), so otherwise the sum over every value is."""
    total = trace_log_joint(trace).detach()
    if torch.isfinite(total):
        return None
    enum_dims = _enum_dims(trace)
    for name, site in sample_sites(trace, deterministic=False):
        log_prob = site["packed"]["log_prob"]
        if not enum_dims.isdisjoint(log_prob._pyro_dims):
            continue
        bad = ~torch.isfinite(log_prob.detach())
        if bad.any():
            value = float(log_prob.detach()[bad].flatten()[0])
            kind = "observed" if site["is_observed"] else "latent"
            return f"the log density of model site '{name}' ({kind}) is {value} for some draws"
    names = [n for n, site in sample_sites(trace) if _enumerated(site) and not site["is_observed"]]
    return (
        f"the model's log density summed over the enumerated site(s) {names} is {float(total)} "
        "for some draws: the data are impossible under every value of them (check the "
        "likelihood's support)"
    )


def pointwise_log_likelihood(trace: Trace, name: str) -> Tensor:
    r"""The log likelihood of each element of observed site ``name`` of a packed
    :func:`~pyro_blr.core.enumeration.enumerated_trace`, the enumerated sites it depends on
    summed out:
    :math:`\log p(x_i \mid 	heta) = \log \sum_{z_i} p(z_i \mid 	heta)\, p(x_i \mid z_i, 	heta)`
    (unscaled, for ``az.loo``), in the site's plate shape (its batch shape right of the
    enumerated dimensions).

    Raises:
        ValueError: the elements do not separate: an enumerated site it depends on lies outside
            one of its plates (a global site shared by every element), or another observed site
            depends on the same enumerated sites (their likelihoods do not factor per site).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core.enumeration import enumerated_trace
        >>> def model(x):
        ...     with pyro.plate("data", 2):
        ...         k = pyro.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ...         pyro.sample("x", dist.Normal(2.0 * k, 1.0), obs=x)
        >>> x = torch.tensor([0.0, 2.0])
        >>> trace = enumerated_trace(model, (x,), {}, 1, {})
        >>> mix = dist.MixtureSameFamily(
        ...     dist.Categorical(torch.ones(2)), dist.Normal(torch.tensor([0.0, 2.0]), 1.0))
        >>> torch.allclose(pointwise_log_likelihood(trace, "x"), mix.log_prob(x))
        True
    """
    site = trace.nodes[name]
    own = site["packed"]["unscaled_log_prob"]
    enum_dims = _enum_dims(trace)
    if enum_dims.isdisjoint(own._pyro_dims):
        return packed.unpack(own, trace.symbol_to_dim)
    target = frozenset(
        trace.plate_to_symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized
    )
    # the factors connected to this site through enumerated dimensions
    factors = {
        n: s
        for n, s in sample_sites(trace, deterministic=False)
        if not enum_dims.isdisjoint(s["packed"]["log_prob"]._pyro_dims)
    }
    reached, component, grown = set(own._pyro_dims) & enum_dims, {name}, True
    while grown:
        grown = False
        for n, s in factors.items():
            dims = set(s["packed"]["log_prob"]._pyro_dims) & enum_dims
            if n not in component and dims & reached:
                component.add(n)
                reached |= dims
                grown = True
    for n in [n for n in factors if n in component and n != name]:  # in trace order
        other = factors[n]
        if not _enumerated(other) or other["is_observed"]:
            raise ValueError(
                f"observed sites '{name}' and '{n}' depend on the same enumerated sites: "
                f"their likelihoods do not factor per site, so '{name}' has no pointwise log "
                "likelihood of its own; compare models on the joint (pb.log_evidence) instead"
            )
        plates = {f.name for f in other["cond_indep_stack"] if f.vectorized}
        mine = {f.name for f in site["cond_indep_stack"] if f.vectorized}
        if not mine <= plates:
            raise ValueError(
                f"observed site '{name}' depends on enumerated site '{n}', which lies outside "
                f"plate(s) {sorted(mine - plates)}: every element of '{name}' shares it, so "
                "its elements have no separate log likelihoods; compare models on the joint "
                "(pb.log_evidence) instead"
            )

    def contracted(names: set[str]) -> Tensor:
        tree: OrderedDict = OrderedDict()
        for n in names:
            s = factors[n]
            ordinal = frozenset(
                trace.plate_to_symbol[f.name] for f in s["cond_indep_stack"] if f.vectorized
            )
            tree.setdefault(ordinal, []).append(_inside(s))
        return contract_to_tensor(tree, enum_dims & reached, target_ordinal=target)

    joint = packed.unpack(contracted(component), trace.symbol_to_dim)
    priors = packed.unpack(contracted(component - {name}), trace.symbol_to_dim)
    return joint - priors
