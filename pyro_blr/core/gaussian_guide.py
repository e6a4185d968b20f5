"""Read and write the Gaussian of Pyro's own autoguides as a flat mean and precision.

``AutoNormal`` and ``AutoDiagonalNormal`` hold a diagonal Gaussian, ``AutoMultivariateNormal`` a
full one, all over the same flat unconstrained latent vector (Pyro's prototype-trace order, which
:func:`pyro_blr.core.layout.latent_layout` follows). Writing goes through each parameter's
constraint into the live unconstrained tensor, in place, so ``Predictive``, ``median()``,
``quantiles()`` and the param store all see the new posterior at once.
"""

from __future__ import annotations

from operator import attrgetter

import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import (
    AutoDiagonalNormal,
    AutoGuide,
    AutoMultivariateNormal,
    AutoNormal,
)
from pyro.nn import PyroModule
from torch import Tensor
from torch.distributions import transform_to

from pyro_blr.core.layout import LatentLayout
from pyro_blr.families.gaussian import precision_from_scale_tril, scale_tril_from_precision

__all__ = [
    "GAUSSIAN_GUIDES",
    "GaussianGuide",
    "check_gaussian_guide",
    "initialize_guide",
    "write_param",
    "write_params",
]

GAUSSIAN_GUIDES = (AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal)


def write_param(module: PyroModule, name: str, value: Tensor) -> None:
    """Set a parameter of ``module`` (a PyroParam or a plain one) to ``value``, in place."""
    with torch.no_grad():
        if name in module._pyro_params:
            constraint, _ = module._pyro_params[name]
            getattr(module, name + "_unconstrained").copy_(transform_to(constraint).inv(value))
        else:
            getattr(module, name).copy_(value)


def write_params(writes: list[tuple[PyroModule, str, Tensor]]) -> None:
    """Apply several :func:`write_param` as one: if anything interrupts them (an error, or a
    ``KeyboardInterrupt`` between two writes), every parameter is restored to what it was, so a
    guide is never left half-updated.

    Example:
        >>> import torch
        >>> from pyro.nn import PyroModule, PyroParam
        >>> module = PyroModule()
        >>> module.scale = PyroParam(torch.ones(2), torch.distributions.constraints.positive)
        >>> write_params([(module, "scale", torch.tensor([2.0, 3.0]))])
        >>> module.scale.detach()
        tensor([2., 3.])
    """

    def target(module: PyroModule, name: str) -> Tensor:
        if name in module._pyro_params:
            return getattr(module, name + "_unconstrained")
        return getattr(module, name)

    with torch.no_grad():
        saved = [target(module, name).clone() for module, name, _ in writes]
        try:
            for module, name, value in writes:
                write_param(module, name, value)
        except BaseException:
            for (module, name, _), old in zip(writes, saved, strict=True):
                target(module, name).copy_(old)
            raise


class GaussianGuide:
    """A view of a Pyro Gaussian autoguide as ``(loc, precision)`` over the flat latent vector.

    Args:
        guide: an initialized ``AutoNormal``, ``AutoDiagonalNormal`` or ``AutoMultivariateNormal``.
        layout: the model's latent layout.
    """

    def __init__(self, guide: AutoGuide, layout: LatentLayout):
        self.guide = guide
        self.layout = layout
        self.diagonal = not isinstance(guide, AutoMultivariateNormal)
        self._modules: dict[str, tuple] = {}

    def _site_params(self, name: str) -> tuple[PyroModule, PyroModule, str]:
        """A site's ``(locs module, scales module, leaf name)`` in ``AutoNormal``, found once
        (the modules are fixed once the guide is set up; the tensors are looked up each time)."""
        locs, scales = self.guide.locs, self.guide.scales
        found = self._modules.get(name)
        if found is None or found[0] is not locs or found[1] is not scales:  # set up again
            found = self._modules[name] = (locs, scales, self._find_site_params(name))
        return found[2]

    def _find_site_params(self, name: str) -> tuple[PyroModule, PyroModule, str]:
        *path, leaf = name.split(".")
        locs = attrgetter(".".join(path))(self.guide.locs) if path else self.guide.locs
        scales = attrgetter(".".join(path))(self.guide.scales) if path else self.guide.scales
        return locs, scales, leaf

    @torch.no_grad()
    def read(self, subsample: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """The guide's mean and precision (a vector if diagonal, else a matrix).

        Args:
            subsample: plate name -> minibatch indices; the blocks of sites local to those
                plates then hold those rows of the guide's per-datum parameters
                (``AutoNormal`` only).
        """
        guide = self.guide
        if isinstance(guide, AutoNormal):
            locs, scales = [], []
            for site in self.layout.sites:
                loc_module, scale_module, leaf = self._site_params(site.name)
                loc, scale = getattr(loc_module, leaf), getattr(scale_module, leaf)
                if site.plate is not None:
                    index = self._rows(site, subsample)
                    loc, scale = (
                        loc.index_select(site.axis, index),
                        scale.index_select(site.axis, index),
                    )
                locs.append(loc.reshape(-1))
                scales.append(scale.reshape(-1))
            return torch.cat(locs).clone(), torch.cat(scales).pow(-2)
        if isinstance(guide, AutoDiagonalNormal):
            return guide.loc.clone(), guide.scale.pow(-2)
        scale_tril = guide.scale[..., None] * guide.scale_tril
        return guide.loc.clone(), precision_from_scale_tril(scale_tril)

    @staticmethod
    def _rows(site, subsample: dict[str, Tensor] | None) -> Tensor:
        if not subsample or site.plate not in subsample:
            raise ValueError(
                f"site '{site.name}' is local to the subsampled plate '{site.plate}': pass that "
                "plate's minibatch indices"
            )
        return subsample[site.plate]

    def write(
        self, loc: Tensor, precision: Tensor, subsample: dict[str, Tensor] | None = None
    ) -> None:
        """Set the guide's Gaussian to mean ``loc`` and precision ``precision`` (all parameters
        or none, see :func:`write_params`); with ``subsample``, the local sites' minibatch rows
        (see :meth:`read`)."""
        guide = self.guide
        writes = []
        if isinstance(guide, AutoNormal):
            scale = precision.rsqrt()
            for site in self.layout.sites:
                loc_module, scale_module, leaf = self._site_params(site.name)
                new_loc = loc[site.block].reshape(site.shape)
                new_scale = scale[site.block].reshape(site.shape)
                if site.plate is not None:
                    index = self._rows(site, subsample)
                    full_loc = getattr(loc_module, leaf).detach().clone()
                    full_scale = getattr(scale_module, leaf).detach().clone()
                    new_loc = full_loc.index_copy_(site.axis, index, new_loc)
                    new_scale = full_scale.index_copy_(site.axis, index, new_scale)
                writes.append((loc_module, leaf, new_loc))
                writes.append((scale_module, leaf, new_scale))
        elif isinstance(guide, AutoDiagonalNormal):
            writes = [(guide, "loc", loc), (guide, "scale", precision.rsqrt())]
        else:
            scale_tril = scale_tril_from_precision(precision)
            scale = scale_tril.diagonal(dim1=-2, dim2=-1)
            writes = [
                (guide, "loc", loc),
                (guide, "scale", scale),
                (guide, "scale_tril", scale_tril / scale[..., None]),
            ]
        write_params(writes)


def initialize_guide(guide: AutoGuide, args: tuple, kwargs: dict) -> Tensor:
    """Run an autoguide once (quietly, without gradients, leaving the RNG where it was) if it has
    not built its parameters yet; returns one of its parameters, which names the device and
    dtype of the fit. Leaving the RNG alone makes a resumed run draw what the original drew,
    whether or not the guide was called before loading a checkpoint."""
    if guide.prototype_trace is None:
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        devices = [torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices), poutine.block(), torch.no_grad():
            guide(*args, **kwargs)
    return next(iter(guide.parameters()))


def check_gaussian_guide(guide: object, who: str) -> None:
    """Raise ``TypeError`` naming the guide if it is not one of Pyro's Gaussian autoguides.

    Args:
        guide: the guide to check.
        who: what needs the Gaussian, for the message (e.g. ``"BLR rule 'von'"``).
    """
    if not isinstance(guide, GAUSSIAN_GUIDES):
        raise TypeError(
            f"{who} needs a Gaussian guide, pyro.infer.autoguide.AutoNormal, AutoDiagonalNormal "
            f"or AutoMultivariateNormal, not {type(guide).__name__}"
        )
