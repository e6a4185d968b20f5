r"""The flat latent vector of a Pyro model: which coordinates belong to which site.

A guide's prototype trace fixes the order, shapes and supports of the model's latent sites. A flat
vector :math:`\theta \in \mathbb R^D` of unconstrained values maps to constrained values
:math:`x = T(\theta)` site by site with ``biject_to(site.support)`` -- the bijections Pyro's
autoguides use, in the same order, so a flat index means the same coordinate to both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.transforms import Transform

from pyro_blr.core.data_signature import DataSignature
from pyro_blr.core.enumeration import enumerated_sites
from pyro_blr.core.plates import full_size, is_subsampled
from pyro_blr.core.traces import max_plate_nesting

__all__ = ["LatentLayout", "LatentSite", "latent_layout"]


@dataclass(frozen=True)
class LatentSite:
    """One latent site's block of the flat unconstrained vector.

    Attributes:
        name: the sample site's name.
        transform: the bijection from unconstrained to constrained values.
        shape: the unconstrained value's shape in the prototype trace (plate dimensions included).
        event_dim: how many rightmost dimensions of ``shape`` belong to the event.
        offset: the first index of this site in the flat vector.
        size: the number of coordinates of this site.
        plate: for a latent local to a subsampled plate, that plate's name (its block then
            holds the minibatch's rows only); ``None`` for a global site.
        axis: the plate's (negative) axis in ``shape``, for a local site.
        scale: :math:`N/B` for a local site (the factor Pyro scales its terms by), else 1.
    """

    name: str
    transform: Transform
    shape: torch.Size
    event_dim: int
    offset: int
    size: int
    plate: str | None = None
    axis: int | None = None
    scale: float = 1.0

    @property
    def block(self) -> slice:
        """This site's coordinates in the flat vector."""
        return slice(self.offset, self.offset + self.size)


@dataclass(frozen=True)
class LatentLayout:
    """The flat unconstrained latent vector of a model, site by site.

    Attributes:
        sites: the latent sites in the guide's order.
        dim: the total number of coordinates :math:`D`.
        max_plate_nesting: the number of batch dimensions the model's plates use.
        data: the arrays among the model's arguments when the layout was built for a fit (see
            :class:`pyro_blr.core.data_signature.DataSignature`): the log joint then refuses
            later data of another dtype or device, and names an argument whose shape changed
            when the model fails on it. ``None``: nothing is checked.
        enumerated: the model's discrete sites marked ``infer={"enumerate": "parallel"}`` and
            left out of the guide: they have no coordinates; the log joint sums them out (see
            :func:`pyro_blr.core.enumeration.enumerated_log_joint`).
    """

    sites: tuple[LatentSite, ...]
    dim: int
    max_plate_nesting: int
    data: DataSignature | None = None
    enumerated: tuple[str, ...] = ()

    def unpack(self, theta: Tensor) -> dict[str, Tensor]:
        """Split particles ``theta`` of shape ``(S, D)`` into unconstrained site values.

        Each value gets shape ``(S, 1, ..., 1) + site.shape`` so that the particle dimension sits
        left of every plate dimension.
        """
        num_particles = theta.shape[0]
        values = {}
        for site in self.sites:
            batch_dim = len(site.shape) - site.event_dim
            pad = (1,) * (self.max_plate_nesting - batch_dim)
            values[site.name] = theta[:, site.block].reshape((num_particles, *pad, *site.shape))
        return values

    def site_at(self, index: int) -> str:
        """The name of the site that owns flat coordinate ``index``."""
        for site in self.sites:
            if site.offset <= index < site.offset + site.size:
                return site.name
        raise IndexError(f"coordinate {index} is outside the latent vector of size {self.dim}")

    @property
    def local_plates(self) -> tuple[str, ...]:
        """The subsampled plates that hold local latent sites."""
        return tuple(sorted({s.plate for s in self.sites if s.plate is not None}))

    def coordinate_scale(self, like: Tensor) -> Tensor:
        """Each coordinate's minibatch scale (:math:`N/B` for local sites, 1 for global ones)."""
        scale = like.new_ones(self.dim)
        for site in self.sites:
            scale[site.block] = site.scale
        return scale

    def plate_groups(self, device: torch.device | None = None) -> Tensor:
        """Each coordinate's group for :func:`pyro_blr.core.hessian_diagonal_from_grad`: a global
        coordinate alone; a local site's coordinates grouped by their place within a row of its
        subsampled plate, so that one group holds one coordinate of every row. Rows of a
        subsampled plate are conditionally independent, so a group's coordinates interact only
        if the model ties rows together, which the caller checks.

        Example:
            >>> import torch
            >>> from torch.distributions.transforms import identity_transform as t
            >>> layout = LatentLayout(
            ...     (LatentSite("mu", t, torch.Size([]), 0, 0, 1),
            ...      LatentSite("b", t, torch.Size([3, 2]), 1, 1, 6, "groups", -2, 10.0)), 7, 1)
            >>> layout.plate_groups()  # b's 3 rows of 2: two groups of 3
            tensor([0, 1, 2, 1, 2, 1, 2])
        """
        groups = torch.empty(self.dim, dtype=torch.long, device=device)
        count = 0
        for site in self.sites:
            if site.plate is None:
                groups[site.block] = torch.arange(count, count + site.size, device=device)
                count += site.size
                continue
            row_shape = list(site.shape)
            row_shape[site.axis] = 1
            per_row = math.prod(row_shape)
            within = torch.arange(per_row, device=device).reshape(row_shape).expand(site.shape)
            groups[site.block] = count + within.reshape(-1)
            count += per_row
        return groups

    def with_plate_nesting(self, nesting: int) -> LatentLayout:
        """The same layout for a model said to use ``nesting`` plate dimensions."""
        return replace(self, max_plate_nesting=nesting)

    def with_data(self, data: DataSignature | None) -> LatentLayout:
        """The same layout, checking later data against ``data`` (see :attr:`data`)."""
        return replace(self, data=data)


def latent_layout(
    prototype_trace: Trace, model_trace: Trace | None = None, allow_local: bool = False
) -> LatentLayout:
    """Build the flat latent layout from a guide's prototype trace.

    Args:
        prototype_trace: a trace of the model (e.g. ``guide.prototype_trace``); its unobserved
            sample sites, in order, are the latent sites.
        model_trace: a full trace of the model, observed sites included, used to find how many
            plate dimensions the model uses and which of its sites are left to parallel
            enumeration (:attr:`LatentLayout.enumerated`). Defaults to ``prototype_trace``.
        allow_local: give a latent site local to one subsampled plate a block for the
            minibatch's rows (see :class:`LatentSite`); otherwise such a site is refused.

    Raises:
        ValueError: for a discrete latent site of the prototype (a site the model enumerates
            must be hidden from the guide, e.g. ``AutoNormal(poutine.block(model,
            hide=["k"]))``), a site of the model marked for sequential or Monte Carlo
            enumeration, or a latent site inside a subsampled plate
            (unless ``allow_local``; and always inside two, or inside a sequential one, ``for i
            in pyro.plate(..., subsample_size=B)``), whose value changes with the minibatch.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     pyro.sample("b", dist.Gamma(torch.ones(3), 1.0).to_event(1))
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace())
        >>> [(s.name, s.offset, s.size) for s in layout.sites], layout.dim
        ([('a', 0, 1), ('b', 1, 3)], 4)
    """
    sites = []
    offset = 0
    for name, site in prototype_trace.iter_stochastic_nodes():
        if site_is_subsample(site):
            continue
        fn = site["fn"]
        if getattr(fn, "has_enumerate_support", False) or fn.support.is_discrete:
            fix = (
                "it is marked for enumeration: build the guide on the model with it hidden, "
                f"e.g. AutoNormal(poutine.block(model, hide=['{name}'])), and it is summed out"
                if site["infer"].get("enumerate")
                else "mark it infer={'enumerate': 'parallel'} and hide it from the guide, "
                "marginalize it out in the model, or observe it"
            )
            raise ValueError(
                f"latent site '{name}' is discrete ({type(fn).__name__}); the guide needs "
                f"continuous latents: {fix}"
            )
        local = [f for f in site["cond_indep_stack"] if is_subsampled(f)]
        sequential = next((f for f in local if not f.vectorized or f.dim is None), None)
        if sequential is not None:
            raise ValueError(
                f"latent site '{name}' is local to the sequential subsampled plate "
                f"'{sequential.name}' (for i in pyro.plate(...), size {full_size(sequential)}, "
                f"subsample {sequential.size}): the minibatch changes which sites exist, so they "
                "have no fixed place in a flat latent vector; write the plate as a vectorized "
                "`with pyro.plate(...)` and use a guide that keeps local latents per datum "
                "(AutoNormal), or use the full data"
            )
        if local and (not allow_local or len(local) > 1):
            frame = local[0]
            raise ValueError(
                f"latent site '{name}' is local to the subsampled plate '{frame.name}' "
                f"(size {full_size(frame)}, subsample {frame.size}): its value changes with the "
                "minibatch, so it has no fixed place in a flat latent vector; "
                + (
                    "a site local to two subsampled plates is not supported"
                    if local[1:]
                    else "use a full-data plate for local latents, or a guide that keeps them "
                    "per datum (AutoNormal) with the BLR"
                )
            )
        transform = biject_to(fn.support)
        unconstrained = transform.inv(site["value"].detach())
        event_dim = fn.event_dim + unconstrained.dim() - site["value"].dim()
        size = unconstrained.numel()
        extra = {}
        if local:
            frame = local[0]
            extra = {
                "plate": frame.name,
                "axis": frame.dim - event_dim,
                "scale": full_size(frame) / frame.size,
            }
        sites.append(
            LatentSite(name, transform, unconstrained.shape, event_dim, offset, size, **extra)
        )
        offset += size
    if not sites:
        raise ValueError("the model has no latent sites to infer")
    full = model_trace if model_trace is not None else prototype_trace
    nesting = max_plate_nesting(full)
    given = {site.name: site for site in sites}
    return LatentLayout(tuple(sites), offset, nesting, enumerated=enumerated_sites(full, given))
