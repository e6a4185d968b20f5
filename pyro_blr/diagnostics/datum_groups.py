r"""Groups of data in a model's data plate, and their summed log-likelihoods as a function of
the flat latent vector: what :func:`~pyro_blr.diagnostics.group_removal.removal_sensitivity`
removes.

A group is a set of elements of the data plate; its log-likelihood is
:math:`\ell_G(\theta) = \sum_{i \in G} \log p(y_i \mid \theta)`, summed over every observed site
of the plate (and over the plate's other dimensions). All groups come from one model run: the
per-datum terms :math:`(\log p(y_i \mid \theta))_i` times a ``(G, N)`` matrix of indicators.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core import LatentLayout, data_plates, full_size, is_subsampled, site_log_probs
from pyro_blr.core.log_joint import conditioned_trace

__all__ = ["DataGroups", "data_groups", "group_log_likelihood"]


class DataGroups(NamedTuple):
    """Groups of elements of one data plate.

    Attributes:
        plate: the data plate's name.
        dim: its (negative) batch dimension.
        size: its size :math:`N`.
        sites: the observed sites inside it.
        labels: each group's label.
        weights: ``(G, N)`` indicators, 1 where a datum is in the group.
    """

    plate: str
    dim: int
    size: int
    sites: tuple[str, ...]
    labels: tuple
    weights: Tensor


def _indices(label: Any, members: Any, size: int) -> Tensor:
    """A group's indices from indices or a boolean mask; raise naming the group."""
    index = torch.as_tensor(members)
    if index.numel() == 0:
        raise ValueError(f"group {label!r} is empty: give it at least one datum")
    if index.dtype == torch.bool:
        if index.shape != (size,):
            raise ValueError(
                f"group {label!r} is a boolean mask of shape {tuple(index.shape)}, the data "
                f"plate has {size} elements"
            )
        index = torch.nonzero(index).flatten()
    if index.is_floating_point() or index.dim() != 1:
        raise ValueError(
            f"group {label!r} must be a 1-D collection of integer indices or a boolean mask, "
            f"got {index.dtype} of shape {tuple(index.shape)}"
        )
    if len(index) == 0:
        raise ValueError(f"group {label!r} selects no datum: give it at least one")
    if bool(((index < -size) | (index >= size)).any()):
        raise ValueError(f"group {label!r} has an index outside the data plate's {size} elements")
    index = index % size
    if len(index.unique()) != len(index):
        raise ValueError(f"group {label!r} lists a datum twice")
    return index


def _parse(groups: Any, size: int) -> tuple[tuple, list[Tensor]]:
    if isinstance(groups, Mapping):
        labels = tuple(groups)
        return labels, [_indices(k, groups[k], size) for k in labels]
    if torch.is_tensor(groups) and groups.dim() == 1 and groups.dtype != torch.bool:
        if groups.shape[0] != size:
            raise ValueError(
                f"groups as a tensor of labels needs one label per datum ({size}), got "
                f"{groups.shape[0]}: give index collections in a list or a dict instead"
            )
        values = groups.unique()
        labels = tuple(v.item() for v in values)
        return labels, [torch.nonzero(groups == v).flatten() for v in values]
    if isinstance(groups, list | tuple) and groups:
        if all(isinstance(g, int) for g in groups):
            raise ValueError(
                "groups is a flat list of integers: give a list of groups ([[0, 1], [5]]), a "
                "dict {label: indices}, or a tensor of one label per datum"
            )
        return tuple(range(len(groups))), [_indices(k, g, size) for k, g in enumerate(groups)]
    raise ValueError(
        "groups must be a dict {label: indices}, a non-empty list of index collections, or a "
        f"tensor of one label per datum, not {type(groups).__name__}"
    )


def data_groups(
    trace: Trace, layout: LatentLayout, plate: str | None, groups: Any, like: Tensor
) -> DataGroups:
    """The data plate of a full-data ``trace`` and the ``groups`` in it.

    Raises:
        ValueError: no data plate, several and no ``plate=``, a subsampled plate, a latent site
            local to the plate (naming it), or a malformed group (naming it).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> trace = pyro.poutine.trace(model).get_trace(torch.zeros(4))
        >>> found = data_groups(trace, latent_layout(trace), None, torch.tensor([0, 1, 0, 1]),
        ...                     torch.zeros(1))
        >>> found.plate, found.labels, found.weights
        ('data', (0, 1), tensor([[1., 0., 1., 0.],
                [0., 1., 0., 1.]]))
    """
    found, _ = data_plates(trace, (site.name for site in layout.sites))
    by_name = {p.name: p for p in found}
    if plate is None:
        if not found:
            raise ValueError(
                "no observed site lies in a vectorized pyro.plate: the data must be the "
                "elements of one to be grouped"
            )
        if len(found) > 1:
            raise ValueError(
                f"the observed sites lie in several plates {list(by_name)}: say which plate "
                "holds the data with plate=..."
            )
        plate = found[0].name
    if plate not in by_name:
        raise ValueError(f"no observed site lies in plate '{plate}' (data plates: {list(by_name)})")
    data = by_name[plate]
    frame = next(
        f for s in data.sites for f in trace.nodes[s]["cond_indep_stack"] if f.name == plate
    )
    if is_subsampled(frame):
        raise ValueError(
            f"plate '{plate}' is subsampled ({frame.size} of {full_size(frame)}): removing a "
            "group needs the full data; call the model without subsample_size"
        )
    for latent in layout.sites:
        if any(f.name == plate for f in trace.nodes[latent.name]["cond_indep_stack"]):
            raise ValueError(
                f"latent site '{latent.name}' is local to the data plate '{plate}': removing a "
                "datum would also remove its latent, which the memory-perturbation equation "
                "does not cover; marginalize it out in the model"
            )
    labels, members = _parse(groups, data.size)
    weights = torch.zeros(len(members), data.size, dtype=like.dtype, device=like.device)
    for g, index in enumerate(members):
        weights[g, index.to(like.device)] = 1.0
    return DataGroups(plate, data.dim, data.size, data.sites, labels, weights)


def group_log_likelihood(
    model: Callable, layout: LatentLayout, groups: DataGroups, args: tuple, kwargs: dict
) -> Callable[[Tensor], Tensor]:
    r""":math:`\theta \mapsto (\ell_G(\theta))_G`, shape ``(G,)``, one model run for all groups."""

    def log_lik(theta: Tensor) -> Tensor:
        trace, _ = conditioned_trace(model, layout, theta, args, kwargs, {})
        terms = dict(site_log_probs(trace))
        total = 0.0
        for name in groups.sites:
            term = terms[name]
            if term.dim() < -groups.dim or term.shape[groups.dim] != groups.size:
                raise ValueError(
                    f"observed site '{name}' has log-probability shape {tuple(term.shape)}, "
                    f"without the data plate's {groups.size} elements at dim {groups.dim}"
                )
            total = total + term.movedim(groups.dim, 0).reshape(groups.size, -1).sum(-1)
        return groups.weights @ total.to(groups.weights.dtype)

    return log_lik
