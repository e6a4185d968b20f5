r"""What the ranks of a distributed BLR run must agree on, and each rank's share of the data.

Averaging the ranks' estimates is right only if every rank runs the same model over the same
latent vector: the same latent dimension :math:`D`, dtype, sites and shapes, and the same full
size of every plate. :func:`run_signature` writes that down for one rank (a small dict of
numbers and strings), :func:`disagreements` names what differs between ranks.

The minibatch sizes may differ. Rank :math:`k` passes :math:`B_k` of a plate's :math:`N` data,
so Pyro scales its terms by :math:`N/B_k`; the plain average of the ranks' estimates then
weighs a rank with few data as much as one with many (4 and 12 of 16 data: the first rank's
data count three times as much as the second's), which biases the posterior. Weighting rank
:math:`k` by its share :math:`w_k = B_k / \sum_j B_j` instead gives

.. math::
    \sum_k w_k \ell_k(\theta) = \ell_{\text{prior}}(\theta)
        + \frac{N}{\sum_j B_j} \sum_k \sum_{i \in \text{idx}_k} \ell_i(\theta),

the full log joint when the shards partition the data (:math:`\sum_j B_j = N`), and an unbiased
estimate of it otherwise. :func:`data_shares` finds the :math:`w_k`; where several subsampled
plates give a rank different shares, no one weight is right and it raises.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from fractions import Fraction
from typing import Any

import pyro.poutine as poutine
from pyro.poutine.util import site_is_subsample

from pyro_blr.core import LatentLayout, full_size, trace_without_rng

__all__ = ["MINIBATCH", "data_shares", "disagreements", "run_signature"]

MINIBATCH = " minibatch size"
_SIZE = " full size"
FIX = (
    "every rank must run the same model and pass its shard of the data to the full-size "
    "plate, pyro.plate('data', N, subsample=idx); pyro_blr.blr.distributed.shard_indices gives "
    "equal, disjoint shards"
)


def run_signature(
    model: Callable, guide: Any, layout: LatentLayout, args: tuple, kwargs: dict
) -> dict[str, Any]:
    """This rank's run: :math:`D`, dtype, each latent site's shape and each plate's full size
    and minibatch size, from one run of ``model`` (replayed on the guide's prototype, so that no
    prior is sampled) on this rank's arguments, drawing nothing from the global RNG.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> from pyro_blr.core import initialize_guide, latent_layout
        >>> def model(y, idx):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", 8, subsample=idx):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> args = (torch.zeros(8), torch.arange(3))
        >>> guide = AutoNormal(model)
        >>> like = initialize_guide(guide, args, {})
        >>> trace = pyro.poutine.trace(model).get_trace(*args)
        >>> layout = latent_layout(guide.prototype_trace, trace)
        >>> run_signature(model, guide, layout, args, {})  # doctest: +NORMALIZE_WHITESPACE
        {'latent dimension D': 1, 'dtype': 'torch.float32', "site 'mu' shape": (),
         "plate 'data' full size": 8, "plate 'data' minibatch size": 3}
    """
    like = next(iter(guide.parameters()))
    replayed = poutine.replay(model, trace=guide.prototype_trace)
    trace = trace_without_rng(replayed, args, kwargs, like)
    out: dict[str, Any] = {"latent dimension D": layout.dim, "dtype": str(like.dtype)}
    for site in layout.sites:
        shape = list(site.shape)
        if site.plate is not None:  # a local site: its plate's full size, not the minibatch's
            shape[site.axis] = round(site.scale * shape[site.axis])
        out[f"site {site.name!r} shape"] = tuple(shape)
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and site_is_subsample(site):  # vectorized or sequential
            out[f"plate {name!r}{_SIZE}"] = full_size(site)
            out[f"plate {name!r}{MINIBATCH}"] = int(site["value"].numel())
    return out


def _by_rank(values: Sequence[Any]) -> str:
    groups: dict[str, list[int]] = {}
    for rank, value in enumerate(values):
        groups.setdefault("absent" if value is _ABSENT else repr(value), []).append(rank)
    return ", ".join(
        f"{value} on rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
        for value, ranks in groups.items()
    )


_ABSENT = object()


def disagreements(
    signatures: Sequence[dict[str, Any]], may_differ: Collection[str] = ()
) -> list[str]:
    """Each entry on which the ranks differ, with each rank's value (``may_differ``: entries
    allowed to differ, and those ending in :data:`MINIBATCH`).

    Example:
        >>> disagreements([{"D": 3, "dtype": "f"}, {"D": 4, "dtype": "f"}, {"D": 3}])
        ['D: 3 on ranks 0, 2, 4 on rank 1', "dtype: 'f' on ranks 0, 1, absent on rank 2"]
    """
    keys = list(dict.fromkeys(k for signature in signatures for k in signature))
    found = []
    for key in keys:
        if key in may_differ or key.endswith(MINIBATCH):
            continue
        values = [signature.get(key, _ABSENT) for signature in signatures]
        if any(v is _ABSENT or v != values[0] for v in values):
            found.append(f"{key}: {_by_rank(values)}")
    return found


def data_shares(signatures: Sequence[dict[str, Any]]) -> list[Fraction] | None:
    r"""Each rank's share :math:`w_k = B_k / \sum_j B_j` of the data of the subsampled plates
    (those some rank subsamples), or ``None`` where every rank has the same minibatch sizes
    (the plain average, :math:`w_k = 1/K`, is then right). The signatures must agree otherwise
    (see :func:`disagreements`).

    Raises:
        ValueError: two subsampled plates give a rank different shares (no one weight makes
            the average right), or a plate's minibatches hold no data on every rank.

    Example:
        >>> sig = lambda b: {"plate 'data' full size": 16, "plate 'data' minibatch size": b}
        >>> data_shares([sig(4), sig(12)])
        [Fraction(1, 4), Fraction(3, 4)]
        >>> data_shares([sig(8), sig(8)]) is None
        True
    """
    first = signatures[0]
    plates = [key[: -len(MINIBATCH)] for key in first if key.endswith(MINIBATCH)]
    shares: dict[str, list[Fraction]] = {}
    for plate in plates:
        sizes = [signature[plate + MINIBATCH] for signature in signatures]
        if all(b == first[plate + _SIZE] for b in sizes):
            continue  # not subsampled: every rank passes all of the plate
        total = sum(sizes)
        if total == 0:
            raise ValueError(f"{plate}: no rank passes any of its data; {FIX}")
        shares[plate] = [Fraction(b, total) for b in sizes]
    if not shares:
        return None
    (plate, share), *others = shares.items()
    for other, other_share in others:
        if other_share != share:
            raise ValueError(
                f"the ranks' shares of the data differ between {plate} (minibatch sizes "
                f"{[s[plate + MINIBATCH] for s in signatures]}) and {other} (minibatch sizes "
                f"{[s[other + MINIBATCH] for s in signatures]}): no one weight per rank "
                f"averages their estimates right; {FIX}"
            )
    if all(s == share[0] for s in share):
        return None
    return share
